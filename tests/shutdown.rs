//! Graceful shutdown: stop accepting, let in-flight streams finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use sophgate::mock::MockOptions;

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
