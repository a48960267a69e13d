//! Routes across upstreams: fallback before the first byte on 429, 5xx and refused
//! connections; never a retry after it; model renaming; merged and filtered `/v1/models`.

use std::sync::atomic::Ordering;

use crate::common::*;
use sophgate::tools::mock::{self, MockHandle, MockOptions};

async fn two_upstreams(a_base: &str, extra: &str) -> (Env, MockHandle) {
    let b = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let a = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let a_url = a_base.replace("{a}", &a.addr.to_string());
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         credentials:\n  up: {{ type: static, key: upstream-secret }}\n\
         upstreams:\n  a: {{ base_url: \"{a_url}\", credential: up }}\n  b: {{ base_url: \"http://{}/v1\", credential: up }}\n\
         routes:\n  - models: [\"mock-*\", \"alias-*\"]\n    upstreams: [a, b]\n    backoff: 0.01\n{extra}\
         api_keys:\n  \"{CLIENT_KEY}\": \"{UPSTREAM_KEY}\"\n",
        b.addr
    );
    (
        start_gateway(a, &yaml, "127.0.0.1:0".parse().unwrap()).await,
        b,
    )
}

#[tokio::test]
async fn falls_back_on_429_and_5xx_before_the_first_byte() {
    for status in [429u16, 500, 503] {
        let (env, b) = two_upstreams("http://{a}/v1", "").await;
        env.mock.stats.force_status.store(status, Ordering::SeqCst);
        let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
        assert_eq!(resp.status(), 200, "after {status}");
        assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 1);
        assert_eq!(b.stats.get(&b.stats.requests), 1);
        // The upstream credential is used, never the client key or the seed key.
        let seen = b.stats.last_request().unwrap();
        assert_eq!(
            seen.headers.get("authorization").unwrap(),
            "Bearer upstream-secret"
        );
    }
}

#[tokio::test]
async fn falls_back_when_the_first_upstream_refuses_connections() {
    let port = testkit::refused_port();
    let (env, b) = two_upstreams(&format!("http://127.0.0.1:{port}/v1"), "").await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(b.stats.get(&b.stats.requests), 1);
}

#[tokio::test]
async fn last_upstream_error_passes_through_when_all_fail() {
    let (env, b) = two_upstreams("http://{a}/v1", "").await;
    env.mock.stats.force_status.store(500, Ordering::SeqCst);
    b.stats.force_status.store(429, Ordering::SeqCst);
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
}

#[tokio::test]
async fn never_retries_after_the_first_byte() {
    let (env, b) = two_upstreams("http://{a}/v1", "").await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-drop", true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("upstream_stream_broken"), "{text}");
    assert_eq!(
        b.stats.get(&b.stats.requests),
        0,
        "no retry once the client got bytes"
    );
}

#[tokio::test]
async fn route_renames_the_model_and_unmatched_models_use_the_default_upstream() {
    let (env, b) = two_upstreams("http://{a}/v1", "    rename: { alias-fast: mock-model }\n").await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("alias-fast", false)).await;
    assert_eq!(resp.status(), 200);
    let seen: serde_json::Value =
        serde_json::from_slice(&env.mock.stats.last_request().unwrap().body).unwrap();
    assert_eq!(seen["model"], "mock-model");
    // No route matches: the default upstream (flat keys; here the same mock as `a`) with the
    // seed key mapping.
    let before_b = b.stats.get(&b.stats.requests);
    let resp = post_chat(&env, CLIENT_KEY, chat_body("gpt-other", false)).await;
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(b.stats.get(&b.stats.requests), before_b);
}

#[tokio::test]
async fn models_are_merged_across_upstreams_and_filtered_per_key() {
    let b = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let a = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         upstreams:\n  b: {{ base_url: \"http://{}/v1\" }}\n\
         routes:\n  - models: [\"mock-*\"]\n    upstreams: [b]\n\
         api_keys:\n  \"{CLIENT_KEY}\": \"{UPSTREAM_KEY}\"\n  \"sk-narrow\": {{ name: narrow, models: [\"mock-4*\", \"mock-5*\"] }}\n",
        b.addr
    );
    let env = start_gateway(a, &yaml, "127.0.0.1:0".parse().unwrap()).await;
    let list = |key: &'static str| {
        let url = env.url("/v1/models");
        async move {
            let v: serde_json::Value = client()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut ids: Vec<String> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    let all = list(CLIENT_KEY).await;
    assert_eq!(
        all.len(),
        sophgate::tools::mock::MOCK_MODELS.len(),
        "merged without duplicates: {all:?}"
    );
    assert_eq!(b.stats.get(&b.stats.requests), 1);
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 1);
    assert_eq!(
        list("sk-narrow").await,
        vec![
            "mock-401".to_string(),
            "mock-429".to_string(),
            "mock-500".to_string()
        ]
    );
}
