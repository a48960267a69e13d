//! SSE relay: events reach the client as they are produced, unchanged, `[DONE]` included.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use serde_json::json;
use sophgate::tools::mock::MockOptions;

#[tokio::test]
async fn first_event_arrives_before_upstream_finishes() {
    let opts = MockOptions {
        itl: Duration::from_millis(250),
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
    // The upstream needs 8 × 250 ms for the whole answer; the first event must not wait for it
    // (the bound leaves room for a loaded machine and is still below those 2 s).
    assert_eq!(env.mock.stats.streams_completed.load(Ordering::SeqCst), 0);
    assert!(
        first_at < Duration::from_millis(1200),
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
async fn a_stream_the_client_reads_late_arrives_whole() {
    // 1,000 bursts of 100 events (~5.5 MB, more than the kernel's largest send buffer) with
    // short pauses, against a client with a 4 KB receive buffer that reads nothing for 1.5 s:
    // the gateway's writes block while events keep coming, and the upstream finishes
    // meanwhile. Every event must still arrive, and the stream must not wait for a wake-up
    // that was already spent (skipping the body's poll after a write that waited stalls it).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (bursts, events) = (1000, 100);
    let up = upstream(Mode::Bursts(bursts, events, 1)).await;
    let env = gateway_for(&up, "").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(env.gateway.addr).await.unwrap();
    let body = chat_body("mock-model", true);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut answer))
        .await
        .expect("the stream stalled")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..200.min(text.len())]
    );
    // Chunks carry whole events, so chunk-size lines never split one.
    for (b, e) in [(0, 0), (bursts / 2, events / 2), (bursts - 1, events - 1)] {
        assert!(
            text.contains(&format!("\"content\":\"{b}.{e}\"")),
            "event {b}.{e}"
        );
    }
    assert_eq!(text.matches("data: {").count(), bursts * events);
    // The last event, then the last chunk.
    assert!(
        text.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
}

#[tokio::test]
async fn a_stream_longer_than_the_idle_timeout_with_shorter_gaps_completes() {
    // 8 gaps of 100 ms: the stream outlasts the 0.3 s idle timeout several times over, but no
    // gap comes near it.
    let opts = MockOptions {
        itl: Duration::from_millis(100),
        tokens: 8,
        ..MockOptions::default()
    };
    let env = start("limits:\n  stream_idle_timeout: 0.3\n", opts).await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .unwrap()
        .unwrap();
    assert!(!text.contains("upstream_idle_timeout"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
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
