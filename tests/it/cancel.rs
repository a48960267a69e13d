//! A client that goes away cancels the upstream request at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use sophgate::tools::mock::MockOptions;

#[tokio::test]
async fn disconnect_mid_stream_cancels_upstream() {
    let opts = MockOptions {
        itl: Duration::from_millis(100),
        tokens: 100,
        ..MockOptions::default()
    };
    let env = start("", opts).await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let stats = env.mock.stats.clone();
    assert!(
        eventually(3.0, || stats.streams_cancelled.load(Ordering::SeqCst) == 1).await,
        "the mock never saw the stream cancelled"
    );
    assert_eq!(stats.streams_completed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn disconnect_while_waiting_for_upstream_cancels_it() {
    let env = start("", MockOptions::default()).await;
    let c = client();
    // Non-streamed: the gateway is still waiting for the upstream's answer when the client
    // gives up.
    let req = c
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .body(chat_body("mock-hang", false))
        .timeout(Duration::from_millis(300))
        .send();
    assert!(req.await.is_err(), "the hang model never answers");
    let stats = env.mock.stats.clone();
    assert!(
        eventually(3.0, || stats.answers_abandoned.load(Ordering::SeqCst) == 1).await,
        "the upstream request outlived the client"
    );
}

#[tokio::test]
async fn disconnect_before_first_event_cancels_upstream() {
    let env = start("", MockOptions::default()).await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-hang", true)).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let waited = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(waited.is_err(), "no event was expected yet");
    drop(stream);
    let stats = env.mock.stats.clone();
    assert!(
        eventually(3.0, || stats.streams_cancelled.load(Ordering::SeqCst) == 1).await,
        "the mock never saw the waiting stream cancelled"
    );
}
