//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one port, told apart by reading the
//! first bytes (handed on to the protocol; a stalled preface costs no CPU); silent or stalled
//! connections are closed after `header_read_timeout`, idle h2c connections after
//! `keep_alive_timeout`.

use std::time::{Duration, Instant};

use crate::common::*;
use sophgate::tools::mock::MockOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that speaks HTTP/2 without TLS from the first byte (prior knowledge).
fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

async fn h2c_chat(h2: &reqwest::Client, env: &Env, stream: bool) -> reqwest::Response {
    h2.post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(chat_body("mock-model", stream))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn http1_and_h2c_are_served_on_the_same_port() {
    let env = start("", MockOptions::default()).await;
    let h1 = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);

    let h2 = h2c_client();
    for stream in [false, true] {
        let resp = h2c_chat(&h2, &env, stream).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        let text = resp.text().await.unwrap();
        assert!(text.contains("chat.completion"), "{text}");
    }
}

/// Connects, sends `first`, and returns how long the gateway took to close the connection.
async fn closed_after(env: &Env, first: &[u8]) -> Duration {
    let mut s = tokio::net::TcpStream::connect(env.gateway.addr)
        .await
        .unwrap();
    let t0 = Instant::now();
    s.write_all(first).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the gateway kept a silent connection open")
        .ok();
    t0.elapsed()
}

#[tokio::test]
async fn silent_and_stalled_connections_are_closed_after_the_header_timeout() {
    let env = start(
        "limits:\n  header_read_timeout: 0.3\n",
        MockOptions::default(),
    )
    .await;
    // Nothing at all; part of an HTTP/2 preface; part of an HTTP/1.1 head.
    for first in [
        &b""[..],
        b"PRI * HTTP/2.0\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\n",
    ] {
        let took = closed_after(&env, first).await;
        assert!(
            took >= Duration::from_millis(250),
            "closed too early ({took:?}) for {first:?}"
        );
    }
    let ok = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(ok.status(), 200);
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: an h2c client that then sends
/// nothing more.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn an_idle_h2c_connection_is_closed_after_the_keep_alive_timeout() {
    let env = start(
        "limits:\n  keep_alive_timeout: 0.3\n",
        MockOptions::default(),
    )
    .await;
    let took = closed_after(&env, H2_PREFACE_AND_SETTINGS).await;
    assert!(
        took >= Duration::from_millis(250),
        "closed too early ({took:?})"
    );
}

#[tokio::test]
async fn an_h2c_stream_longer_than_the_keep_alive_timeout_is_not_cut() {
    // The stream (8 events 350 ms apart) outlasts the idle limit and the 2 s the gateway gives
    // an idle connection to answer its GOAWAY: cut, it would end without `[DONE]`.
    let env = start(
        "limits:\n  keep_alive_timeout: 0.3\n",
        MockOptions {
            itl: Duration::from_millis(350),
            tokens: 8,
            ..MockOptions::default()
        },
    )
    .await;
    let h2 = h2c_client();
    let t0 = Instant::now();
    let resp = h2c_chat(&h2, &env, true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    // Idle past the timeout: the gateway closes the connection; the client opens another.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = h2c_chat(&h2, &env, false).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_http1_head_sent_byte_by_byte_is_still_served() {
    let env = start("", MockOptions::default()).await;
    let body = chat_body("mock-model", false);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(env.gateway.addr)
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    for b in req.as_bytes().iter().take(40) {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    s.write_all(&req.as_bytes()[40..]).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// CPU time the calling thread has used (user + system), from `/proc/thread-self/stat` in
/// clock ticks of 10 ms (`CLK_TCK` is 100 on Linux).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name (which may hold spaces): state is the 1st, utime the 12th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// How many connections this test may hold open: each takes two descriptors (both ends are in
/// this process), other tests run beside it, and the soft limit may be low.
fn stalled_connection_count() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    (soft.saturating_sub(1000) / 3).clamp(100, 2000)
}

/// Issue 17 item 2: connections that sent a proper prefix of the h2c preface and stopped cost
/// no CPU while they wait (the sniff polled with 1 ms sleeps before: 3,000 of them kept 1.84
/// of 2 cores busy). The test's runtime is single-threaded, so the gateway's tasks run on this
/// thread and its CPU time is theirs.
#[tokio::test]
async fn stalled_h2c_prefaces_cost_no_cpu_and_both_protocols_still_work() {
    let env = start("", MockOptions::default()).await;
    let n = stalled_connection_count();
    let prefixes: [&[u8]; 3] = [b"P", b"PRI * HTTP/2.0\r\n", &H2_PREFACE_AND_SETTINGS[..23]];
    let mut stalled = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(env.gateway.addr)
            .await
            .unwrap();
        s.write_all(prefixes[i % prefixes.len()]).await.unwrap();
        stalled.push(s);
    }
    // Let the gateway accept them all and start waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed());
    eprintln!("{n} stalled prefaces: {cpu:?} CPU in {wall:?}");
    // Waiting costs nothing (0 ticks measured); the old 1 ms polling cost 0.4 s per second
    // for 2,000 connections on a 2-core machine shared with other builds (a whole core when
    // it had one), so the bound is 10 % of the wall time (10 ms ticks).
    assert!(
        cpu.as_secs_f64() < 0.1 * wall.as_secs_f64(),
        "{n} stalled prefaces used {cpu:?} of CPU in {wall:?}"
    );

    // Both protocols are served meanwhile.
    let h1 = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    let h2 = h2c_chat(&h2c_client(), &env, true).await;
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert!(h2.text().await.unwrap().contains("[DONE]"));
    drop(stalled);
}

/// A preface that arrives in pieces reaches hyper whole: the bytes the sniff read are handed
/// on, and the connection speaks HTTP/2 (a PING is answered).
#[tokio::test]
async fn an_h2c_preface_sent_in_pieces_is_handed_to_hyper_whole() {
    let env = start("", MockOptions::default()).await;
    let mut s = tokio::net::TcpStream::connect(env.gateway.addr)
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    for piece in [&b"PR"[..], b"I * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An empty SETTINGS frame, then a PING with 8 bytes of data.
    s.write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    s.write_all(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingpong")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // Frames: 3 bytes length, type, flags, 4 bytes stream id, payload.
            while buf.len() >= 9 {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                if kind == 6 && flags & 1 == 1 {
                    return payload;
                }
            }
            let mut chunk = [0u8; 4096];
            let got = s.read(&mut chunk).await.unwrap();
            assert!(got > 0, "the gateway closed the connection");
            buf.extend_from_slice(&chunk[..got]);
        }
    })
    .await
    .expect("the PING was answered");
    assert_eq!(acked, b"pingpong");
}
