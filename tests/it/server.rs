//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one port, told apart by peeking at the
//! first bytes; silent or stalled connections are closed after `header_read_timeout`, idle h2c
//! connections after `keep_alive_timeout`.

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
