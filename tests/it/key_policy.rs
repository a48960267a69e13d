//! Extended `api_keys` entries: model globs, rpm / tpm / concurrency limits with Retry-After,
//! expiry, hashed keys, and usage counted on streams without leaking the injected event.

use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use sophgate::tools::mock::MockOptions;

fn keys(policy: &str) -> String {
    format!("api_keys:\n  \"{CLIENT_KEY}\": {{ name: alice, {policy} }}\n")
}

async fn start_keys(policy: &str, opts: MockOptions) -> Env {
    let mock = sophgate::tools::mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n{}",
        keys(policy)
    );
    start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn model_globs_limit_what_a_key_may_use() {
    let env = start_keys("models: [\"mock-*\"]", MockOptions::default()).await;
    assert_eq!(
        post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
    let resp = post_chat(&env, CLIENT_KEY, chat_body("gpt-4o", false)).await;
    assert_eq!(error_code(resp, 403).await, "model_not_allowed");
}

#[tokio::test]
async fn rpm_limit_answers_429_with_retry_after() {
    let env = start_keys("rpm: 2", MockOptions::default()).await;
    for _ in 0..2 {
        assert_eq!(
            post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
                .await
                .status(),
            200
        );
    }
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 429);
    let wait = retry_after(&resp);
    assert!((1..=30).contains(&wait), "{wait}");
    assert_eq!(error_code(resp, 429).await, "rate_limit_exceeded");
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 2);
}

#[tokio::test]
async fn tpm_counts_real_usage_including_streams_and_strips_the_injected_usage_event() {
    // The mock reports (body bytes / 4) prompt + 8 completion tokens: ~30 per request.
    let env = start_keys("tpm: 40", MockOptions::default()).await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("\"usage\""),
        "usage event leaked to a client that did not ask: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    let sent: serde_json::Value =
        serde_json::from_slice(&env.mock.stats.last_request().unwrap().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // ~30 of 40 used: one more fits, then the bucket is empty.
    assert_eq!(
        post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 429);
    let wait = retry_after(&resp);
    assert!((1..=60).contains(&wait), "{wait}");
}

#[tokio::test]
async fn client_requested_usage_is_kept() {
    let env = start_keys("tpm: 100000", MockOptions::default()).await;
    let body = serde_json::json!({
        "model": "mock-model", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]
    });
    let text = post_chat(&env, CLIENT_KEY, body.to_string())
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"usage\""), "{text}");
}

#[tokio::test]
async fn concurrency_limit_answers_429_while_a_stream_is_open() {
    let opts = MockOptions {
        itl: Duration::from_millis(100),
        tokens: 5,
        ..MockOptions::default()
    };
    let env = start_keys("max_concurrent: 1", opts).await;
    let first = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    let mut stream = first.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(retry_after(&resp), 1);
    while stream.next().await.is_some() {}
    drop(stream);
    let ok = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(ok.status(), 200, "slot released when the stream ended");
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let env = start_keys(
        "expires_at: \"2001-01-01T00:00:00Z\"",
        MockOptions::default(),
    )
    .await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 401).await, "api_key_expired");
}

#[tokio::test]
async fn hashed_keys_authenticate() {
    let hashed = sophgate::config::validate::hash_key("sk-hashed-only");
    let mock = sophgate::tools::mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         api_keys:\n  \"{hashed}\": \"{UPSTREAM_KEY}\"\n"
    );
    let env = start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await;
    assert_eq!(
        post_chat(&env, "sk-hashed-only", chat_body("mock-model", false))
            .await
            .status(),
        200
    );
    assert_eq!(
        post_chat(&env, &hashed, chat_body("mock-model", false))
            .await
            .status(),
        401
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sophgate"))
        .args(["hash-key", "sk-hashed-only"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), hashed);
}

#[tokio::test]
async fn model_globs_apply_to_other_endpoints_too() {
    let env = start_keys("models: [\"mock-*\"]", MockOptions::default()).await;
    let embed = |model: &str| {
        let body = serde_json::json!({"model": model, "input": "hi"}).to_string();
        client()
            .post(env.url("/v1/embeddings"))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = embed("text-embedding-3").await.unwrap();
    assert_eq!(error_code(resp, 403).await, "model_not_allowed");
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
    // An allowed model is forwarded.
    let resp = embed("mock-embed").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        env.mock.stats.last_request().unwrap().path,
        "/v1/embeddings"
    );
}

#[tokio::test]
async fn model_rules_cannot_be_sidestepped_with_unreadable_bodies() {
    let env = start_keys("models: [\"mock-*\"]", MockOptions::default()).await;
    for body in [
        r#"  {"model": "gpt-4o", "input": "x"}"#,
        r#"{"model": "mock-a", "model": "gpt-4o"}"#,
        r#"{"model": "gpt-4o", "input": "#,
    ] {
        let resp = client()
            .post(env.url("/v1/embeddings"))
            .bearer_auth(CLIENT_KEY)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(status == 403 || status == 400, "{body}: {status}");
    }
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
}
