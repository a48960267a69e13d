//! The mock upstream's `/embeddings`, `/completions` and `/moderations` through the gateway's
//! `/v1/*` passthrough (answered byte for byte as the mock gives them), and the README's demo
//! lines against `sophgate demo`.

use crate::common::*;
use sophgate::tools::mock::MockOptions;

async fn post(url: String, key: &str, body: serde_json::Value) -> reqwest::Response {
    client()
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// The same request straight to the mock and through the gateway: the same answer.
async fn same_both_ways(env: &Env, path: &str, body: serde_json::Value) -> serde_json::Value {
    let direct = post(
        format!("{}{path}", env.mock.base_url()),
        UPSTREAM_KEY,
        body.clone(),
    )
    .await;
    assert_eq!(direct.status(), 200, "{path} direct");
    let direct = direct.bytes().await.unwrap();
    let via = post(env.url(path), CLIENT_KEY, body).await;
    assert_eq!(via.status(), 200, "{path} via the gateway");
    let via = via.bytes().await.unwrap();
    assert_eq!(direct, via, "{path}: the gateway changed the answer");
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(seen.path, path);
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {UPSTREAM_KEY}")
    );
    serde_json::from_slice(&via).unwrap()
}

#[tokio::test]
async fn embeddings_pass_through() {
    let env = start("", MockOptions::default()).await;
    let v = same_both_ways(
        &env,
        "/v1/embeddings",
        serde_json::json!({"model": "mock-embedding", "input": ["hello", "world"], "dimensions": 4}),
    )
    .await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // base64, as the Python SDK asks by default.
    let b = same_both_ways(
        &env,
        "/v1/embeddings",
        serde_json::json!({"model": "mock-embedding", "input": "hello", "encoding_format": "base64"}),
    )
    .await;
    assert!(b["data"][0]["embedding"].is_string());
}

#[tokio::test]
async fn legacy_completions_pass_through_plain_and_streamed() {
    let env = start("", MockOptions::default()).await;
    let v = same_both_ways(
        &env,
        "/v1/completions",
        serde_json::json!({"model": "mock-model", "prompt": "Say", "max_tokens": 4}),
    )
    .await;
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "Once upon a time");
    let resp = post(
        env.url("/v1/completions"),
        CLIENT_KEY,
        serde_json::json!({"model": "mock-model", "prompt": "Say", "max_tokens": 2, "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[2], "[DONE]");
    let first: serde_json::Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], "Once");
}

#[tokio::test]
async fn moderations_pass_through() {
    let env = start("", MockOptions::default()).await;
    let v = same_both_ways(
        &env,
        "/v1/moderations",
        serde_json::json!({"input": ["hello", "please flag-me"]}),
    )
    .await;
    assert_eq!(v["results"][0]["flagged"], false);
    assert_eq!(v["results"][1]["flagged"], true);
    assert!(v["results"][0]["category_scores"]["violence"].is_number());
}

#[tokio::test]
async fn the_readme_demo_lines_work() {
    let demo = sophgate::tools::demo::start(
        "127.0.0.1:0".parse().unwrap(),
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    let base = format!("http://{}", demo.gateway.addr);
    let models = client()
        .get(format!("{base}/v1/models"))
        .header("authorization", "Bearer sk-demo")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let v: serde_json::Value = models.json().await.unwrap();
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "mock-model"));
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    // The README's embeddings line, sent as written.
    let lines: Vec<&str> = readme.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("curl") && l.contains("/v1/embeddings"))
        .expect("README shows an embeddings request");
    assert!(lines[at].contains("Bearer sk-demo"), "{}", lines[at]);
    let line = lines[at..]
        .iter()
        .find(|l| l.contains("-d '"))
        .expect("with a body");
    let body = line.split("-d '").nth(1).unwrap().trim_end_matches('\'');
    let embed = client()
        .post(format!("{base}/v1/embeddings"))
        .header("authorization", "Bearer sk-demo")
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(embed.status(), 200);
    let v: serde_json::Value = embed.json().await.unwrap();
    assert_eq!(v["object"], "list");
}
