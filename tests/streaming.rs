//! SSE relay: events reach the client as they are produced, unchanged, `[DONE]` included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use sophgate::mock::MockOptions;

#[tokio::test]
async fn first_event_arrives_before_upstream_finishes() {
    let opts = MockOptions {
        itl: Duration::from_millis(150),
        tokens: 6,
        ..MockOptions::default()
    };
    let env = start("", opts).await;
    let started = Instant::now();
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(resp.headers().get("x-accel-buffering").unwrap(), "no");
    assert!(resp.headers().get("content-encoding").is_none());
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(first.starts_with(b"data: "), "{first:?}");
    // The upstream needs 8 × 150 ms for the whole answer; the first event must not wait for it.
    assert_eq!(env.mock.stats.streams_completed.load(Ordering::SeqCst), 0);
    assert!(
        first_at < Duration::from_millis(600),
        "first event after {first_at:?}"
    );
    let mut rest = Vec::new();
    let mut chunks = 1;
    while let Some(c) = stream.next().await {
        rest.extend_from_slice(&c.unwrap());
        chunks += 1;
    }
    assert!(chunks >= 8, "events were coalesced: {chunks} chunks");
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
}

async fn raw_stream(url: &str, key: &str, body: &str) -> Vec<u8> {
    let resp = client()
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn tool_call_deltas_arrive_byte_identical() {
    let env = start(
        "",
        MockOptions {
            tokens: 5,
            ..MockOptions::default()
        },
    )
    .await;
    let body = json!({
        "model": "mock-model",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
    })
    .to_string();
    let direct = raw_stream(
        &format!("{}/v1/chat/completions", env.mock.base_url()),
        UPSTREAM_KEY,
        &body,
    )
    .await;
    let via_gateway = raw_stream(&env.url("/v1/chat/completions"), CLIENT_KEY, &body).await;
    assert_eq!(
        String::from_utf8_lossy(&via_gateway),
        String::from_utf8_lossy(&direct)
    );
    let text = String::from_utf8(via_gateway).unwrap();
    assert!(
        text.matches("\"tool_calls\"").count() >= 3,
        "tool call split over deltas"
    );
    assert!(text.contains("\"usage\""));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn non_streaming_answer_passes_through_unchanged() {
    let env = start("", MockOptions::default()).await;
    let body = chat_body("mock-model", false);
    let direct = client()
        .post(format!("{}/v1/chat/completions", env.mock.base_url()))
        .bearer_auth(UPSTREAM_KEY)
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let resp = post_chat(&env, CLIENT_KEY, body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.bytes().await.unwrap(), direct);
}

#[tokio::test]
async fn stream_broken_midway_ends_with_error_event() {
    let env = start(
        "",
        MockOptions {
            tokens: 8,
            ..MockOptions::default()
        },
    )
    .await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-drop", true)).await;
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .expect("stream ended instead of hanging")
        .unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("data: {\"error\""), "last event: {last}");
    let v: serde_json::Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap();
    assert_eq!(v["error"]["code"], "upstream_stream_broken");
    assert!(!text.contains("[DONE]"));
    // Every event before it is whole.
    for ev in text.trim_end().split("\n\n") {
        assert!(ev.starts_with("data: "), "partial event: {ev:?}");
    }
}

#[tokio::test]
async fn stream_idle_timeout_ends_with_error_event() {
    let opts = MockOptions {
        itl: Duration::from_millis(1500),
        tokens: 3,
        ..MockOptions::default()
    };
    let env = start("limits:\n  stream_idle_timeout: 0.3\n", opts).await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .unwrap()
        .unwrap();
    assert!(text.contains("upstream_idle_timeout"), "{text}");
}
