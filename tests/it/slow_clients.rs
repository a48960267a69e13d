//! Slow readers (issue 17 item 3): a client that stops reading its answer (HTTP/1.1, or an h2c
//! client that stops granting flow-control window) is cut off after `limits.send_timeout`, so
//! it cannot hold a `connection_limit` slot for ever; and the wait for such a slot counts
//! toward `first_byte_timeout` (504 when it runs out).

use std::time::{Duration, Instant};

use crate::common::*;
use sophgate::tools::mock::MockOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An event stream of about 16 MB (more than the socket buffers between the gateway and a
/// client that reads nothing hold), then `[DONE]`, then the upstream closes.
fn large_stream() -> &'static [u8] {
    let mut answer =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n".to_vec();
    let event = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
        "x".repeat(1000)
    );
    for _ in 0..16_000 {
        answer.extend_from_slice(event.as_bytes());
    }
    answer.extend_from_slice(b"data: [DONE]\n\n");
    Box::leak(answer.into_boxed_slice())
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_and_frees_its_slot() {
    let up = upstream(Mode::Raw(large_stream(), true)).await;
    let env = gateway_for(
        &up,
        "connection_limit: 1\nlimits:\n  send_timeout: 0.5\n  first_byte_timeout: 20\n",
    )
    .await;

    // The slow reader: a small receive buffer, a streamed chat request, then nothing read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(env.gateway.addr).await.unwrap();
    let body = chat_body("m", true);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    slow.write_all(req.as_bytes()).await.unwrap();
    assert!(
        eventually(5.0, || up
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await,
        "the slow reader's request reached the upstream"
    );

    // The victim needs the one upstream slot the slow reader holds.
    let t0 = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        post_chat(&env, CLIENT_KEY, chat_body("m", true)),
    )
    .await
    .expect("the victim was served once the slow reader was cut off");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the victim's stream is whole"
    );
    assert!(t0.elapsed() < Duration::from_secs(15));

    // The slow reader's connection was ended: what it reads now runs out.
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut sink)).await;
    assert!(ended.is_ok(), "the slow reader's connection is closed");
    assert!(
        sink.len() < large_stream().len(),
        "the slow reader did not get the whole answer"
    );
}

#[tokio::test]
async fn waiting_for_a_connection_limit_slot_counts_toward_the_first_byte_timeout() {
    // A stream of 10 tokens 300 ms apart holds the one slot for about 3 s.
    let env = start(
        "connection_limit: 1\nlimits:\n  first_byte_timeout: 0.5\n",
        MockOptions {
            itl: Duration::from_millis(300),
            tokens: 10,
            ..MockOptions::default()
        },
    )
    .await;
    let holder = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    assert_eq!(holder.status(), 200);

    let t0 = Instant::now();
    let waiting = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    let took = t0.elapsed();
    assert_eq!(error_code(waiting, 504).await, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "504 after the first-byte timeout, not after the holder's stream: {took:?}"
    );

    // The holder's stream is unaffected, and the slot serves again once it is free.
    let text = holder.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let again = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(again.status(), 200);
}

/// An h2c client that stops reading does not block the socket (flow control stops the
/// gateway first): the connection is ended once hyper has waited `send_timeout` for window.
#[tokio::test]
async fn an_h2c_client_that_stops_reading_is_cut_off_and_frees_its_slot() {
    let up = upstream(Mode::Raw(large_stream(), true)).await;
    let env = gateway_for(
        &up,
        "connection_limit: 1\nlimits:\n  send_timeout: 0.5\n  first_byte_timeout: 20\n",
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(env.gateway.addr)
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/v1/chat/completions", env.gateway.addr))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (answer, mut send) = h2.send_request(req, false).unwrap();
    send.send_data(chat_body("m", true).into(), true).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("the answer's head")
        .unwrap();
    assert_eq!(answer.status(), 200);
    // The body is never read and its window never released: the gateway can send 64 KiB.
    let _unread = answer.into_body();

    let t0 = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        post_chat(&env, CLIENT_KEY, chat_body("m", true)),
    )
    .await
    .expect("the victim was served once the h2c reader was cut off");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the victim's stream is whole"
    );
    assert!(t0.elapsed() < Duration::from_secs(15));
    // The gateway closed the h2c connection.
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "the h2c connection is closed");
}
