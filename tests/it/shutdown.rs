//! Graceful shutdown: stop accepting, let in-flight streams finish.

use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use sophgate::tools::mock::MockOptions;

#[tokio::test]
async fn in_flight_stream_finishes_and_new_connections_are_refused() {
    let opts = MockOptions {
        itl: Duration::from_millis(100),
        tokens: 6,
        ..MockOptions::default()
    };
    let env = start("", opts).await;
    let addr = env.gateway.addr;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    let mut stream = resp.bytes_stream();
    let mut text = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();

    let Env { gateway, mock, .. } = env;
    let shutdown = tokio::spawn(gateway.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown began"
    );
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream cut short: {text}"
    );
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
    drop(mock);
}

/// Reads until `done` says the bytes so far are enough, or EOF; at most 5 s.
async fn read_until(sock: &mut tokio::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done(&text) {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => panic!("nothing more within 5 s; so far: {text:?}"),
        }
    }
    text
}

/// HTTP/1.1 keep-alive connections: an idle one is closed as soon as the drain begins (it
/// does not hold the drain for the grace period), and a request still running when it began
/// is answered with `connection: close`, then its connection closes.
#[tokio::test]
async fn idle_connections_close_at_once_and_running_requests_answer_with_close() {
    use tokio::io::AsyncWriteExt;
    let opts = MockOptions {
        ttft: Duration::from_millis(400),
        ..MockOptions::default()
    };
    let env = start("", opts).await;
    let addr = env.gateway.addr;

    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut idle, |t| t.contains("\r\n\r\n")).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    assert!(!first.to_ascii_lowercase().contains("connection: close"));

    let body = chat_body("mock-model", false);
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    busy.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The mock holds its answer for 400 ms: the drain begins while the request runs.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let Env { gateway, mock, .. } = env;
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(gateway.shutdown());

    let rest = read_until(&mut idle, |_| false).await;
    assert_eq!(rest, "", "the idle connection got bytes instead of a close");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "idle connection closed only after {:?}",
        started.elapsed()
    );

    let answer = read_until(&mut busy, |_| false).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("chat.completion"), "{answer:?}");

    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the drain took {:?}",
        started.elapsed()
    );
    drop(mock);
}
