//! `GET /admin/usage`: per key and model since start (requests, tokens from the upstream's
//! real usage, streams included, errors, rate-limited), its admin-key guard, and the ledger
//! surviving a reload.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use sophgate::config::Config;
use sophgate::gateway::server;
use sophgate::reload::Runtime;
use sophgate::tools::mock::{self, MockOptions};

pub const ADMIN_KEY: &str = "admin-usage-0123456789abcdef";

/// A gateway in front of a fresh mock, its config read from a file (so it can be reloaded);
/// `keys` is the body of `api_keys:`, `extra` more top-level YAML.
pub async fn start_file(tag: &str, keys: &str, extra: &str, opts: MockOptions) -> (Env, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sophgate-usage-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{}\"\nforward_chat_path: /v1/chat/completions\nadmin:\n  key: \"{ADMIN_KEY}\"\napi_keys:\n{keys}\n{extra}\n",
        mock.addr
    );
    let path = dir.join("config.yml");
    std::fs::write(&path, yaml).unwrap();
    let runtime = Runtime::new(Config::from_file(&path).unwrap()).unwrap();
    let gateway = server::spawn(runtime.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (
        Env {
            mock,
            gateway,
            runtime,
        },
        path,
    )
}

/// `GET /admin/usage` with `query`, as the admin.
pub async fn admin_usage(env: &Env, query: &str) -> Value {
    let resp = client()
        .get(env.url(&format!("/admin/usage{query}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Polls `/admin/usage{query}` until `cond` holds (the end of a body is recorded when the
/// server has written it, a moment after the client read it); the last answer.
pub async fn usage_until(env: &Env, query: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = admin_usage(env, query).await;
        if cond(&v) || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (prompt, completion) tokens the mock reported for the last request it saw.
pub fn mock_usage_of_last(env: &Env, completion: u64) -> (u64, u64) {
    let sent = env.mock.stats.last_request().unwrap().body;
    (((sent.len() / 4).max(1)) as u64, completion)
}

#[tokio::test]
async fn counts_chat_streams_errors_and_rate_limits_per_key_and_model() {
    let opts = MockOptions {
        tokens: 5,
        ..MockOptions::default()
    };
    let keys = "  \"sk-usage-counts\": { name: usage-counts, rpm: 3 }\n  \"sk-usage-other\": { name: usage-other }\n";
    let (env, _) = start_file("counts", keys, "", opts).await;
    let key = "sk-usage-counts";

    // 1. A plain answer: the client sees the usage the ledger counts.
    let resp = post_chat(&env, key, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let plain_in = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 5);

    // 2. A stream whose client did not ask for usage: the gateway asks, counts, strips.
    let resp = post_chat(&env, key, chat_body("mock-model", true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("\"usage\""), "usage leaked: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let (stream_in, stream_out) = mock_usage_of_last(&env, 5);
    let sent: Value = serde_json::from_slice(&env.mock.stats.last_request().unwrap().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // 3. The upstream refuses (401): an error of this key and model.
    let resp = post_chat(&env, key, chat_body("mock-401", false)).await;
    assert_eq!(resp.status(), 401);

    // 4. The key's rpm (3) is used up: 429 from the key's own limits.
    let resp = post_chat(&env, key, chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 429).await, "rate_limit_exceeded");

    // 5. An unknown key is nobody's usage.
    let resp = post_chat(&env, "sk-not-a-key", chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 401);

    let v = usage_until(&env, "", |v| {
        v["keys"]["usage-counts"]["total"]["requests"] == 4
            && v["keys"]["usage-counts"]["total"]["errors"] == 2
    })
    .await;
    assert!(v["since"].as_str().unwrap().ends_with('Z'), "{v}");
    let k = &v["keys"]["usage-counts"];
    let m = &k["models"]["mock-model"];
    assert_eq!(m["requests"], 3, "{v}");
    assert_eq!(m["input_tokens"], plain_in + stream_in, "{v}");
    assert_eq!(m["output_tokens"], 5 + stream_out, "{v}");
    assert_eq!(m["errors"], 1, "{v}");
    assert_eq!(m["rate_limited"], 1, "{v}");
    let e = &k["models"]["mock-401"];
    assert_eq!(
        (
            e["requests"].as_u64(),
            e["errors"].as_u64(),
            e["input_tokens"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{v}"
    );
    let t = &k["total"];
    assert_eq!(t["requests"], 4);
    assert_eq!(t["errors"], 2);
    assert_eq!(t["rate_limited"], 1);
    assert_eq!(t["input_tokens"], plain_in + stream_in);
    // A key with no traffic has no entry; no key ever appears by its secret.
    assert!(v["keys"].get("usage-other").is_none(), "{v}");
    assert!(!v.to_string().contains("sk-usage"), "{v}");
}

#[tokio::test]
async fn a_broken_stream_is_an_error() {
    let keys = "  \"sk-usage-broken\": { name: usage-broken }\n";
    let (env, _) = start_file("broken", keys, "", MockOptions::default()).await;
    let resp = post_chat(&env, "sk-usage-broken", chat_body("mock-drop", true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap_or_default();
    assert!(text.contains("upstream_stream_broken"), "{text}");
    let v = usage_until(&env, "", |v| {
        v["keys"]["usage-broken"]["models"]["mock-drop"]["errors"] == 1
    })
    .await;
    let m = &v["keys"]["usage-broken"]["models"]["mock-drop"];
    assert_eq!(m["requests"], 1, "{v}");
    assert_eq!(m["errors"], 1, "{v}");
}

#[tokio::test]
async fn only_the_admin_key_reads_usage() {
    let keys = "  \"sk-usage-auth\": { name: usage-auth }\n";
    let (env, _) = start_file("auth", keys, "", MockOptions::default()).await;
    let c = client();
    let resp = c.get(env.url("/admin/usage")).send().await.unwrap();
    assert_eq!(error_code(resp, 401).await, "invalid_api_key");
    // A client key is not the admin key.
    let resp = c
        .get(env.url("/admin/usage"))
        .bearer_auth("sk-usage-auth")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .post(env.url("/admin/usage"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = c
        .get(env.url("/admin/usage?period=yesterday"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp, 400).await, "invalid_period");

    // Without an admin key the route does not exist.
    let env = start("", MockOptions::default()).await;
    let resp = c.get(env.url("/admin/usage")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn the_ledger_survives_a_reload() {
    let keys = "  \"sk-usage-reload\": { name: usage-reload }\n";
    let (env, path) = start_file("reload", keys, "", MockOptions::default()).await;
    for _ in 0..2 {
        let resp = post_chat(&env, "sk-usage-reload", chat_body("mock-model", false)).await;
        assert_eq!(resp.status(), 200);
    }
    let before = usage_until(&env, "", |v| {
        v["keys"]["usage-reload"]["total"]["requests"] == 2
    })
    .await;
    let before = before["keys"]["usage-reload"]["total"].clone();
    // A new generation (one more key) keeps the counts and adds to them.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "api_keys:\n",
        "api_keys:\n  \"sk-usage-reload-2\": { name: usage-reload-2 }\n",
    );
    std::fs::write(&path, text).unwrap();
    assert_eq!(env.runtime.reload("test").unwrap(), 2);
    let v = admin_usage(&env, "").await;
    assert_eq!(v["keys"]["usage-reload"]["total"], before, "{v}");
    let resp = post_chat(&env, "sk-usage-reload", chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    let v = usage_until(&env, "", |v| {
        v["keys"]["usage-reload"]["total"]["requests"] == 3
    })
    .await;
    assert_eq!(v["keys"]["usage-reload"]["total"]["requests"], 3, "{v}");
}

#[tokio::test]
async fn passthrough_answers_count_their_usage_too() {
    let keys = "  \"sk-usage-embed\": { name: usage-embed }\n";
    let (env, _) = start_file("embed", keys, "", MockOptions::default()).await;
    let resp = client()
        .post(env.url("/v1/embeddings"))
        .bearer_auth("sk-usage-embed")
        .json(&serde_json::json!({"model": "mock-embed", "input": ["one two three", "four"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    let v = usage_until(&env, "", |v| {
        v["keys"]["usage-embed"]["models"]["mock-embed"]["requests"] == 1
    })
    .await;
    let m = &v["keys"]["usage-embed"]["models"]["mock-embed"];
    assert_eq!(m["input_tokens"], prompt, "{v}");
    assert_eq!(m["output_tokens"], 0, "{v}");
    assert_eq!(m["errors"], 0, "{v}");
}

#[tokio::test]
async fn an_on_response_hook_that_fails_counts_as_an_error() {
    let dir = std::env::temp_dir().join(format!("sophgate-usage-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("fail.rhai");
    std::fs::write(
        &plugin,
        "fn on_response(res) { if res.body.model == \"mock-model\" { throw \"no\"; } if res.body.model == \"mock-403\" { throw #{ status: 403, message: \"refused\" }; } }\n",
    )
    .unwrap();
    let keys = "  \"sk-usage-hook\": { name: usage-hook }\n";
    let extra = format!("plugins:\n  - path: \"{}\"\n", plugin.display());
    let (env, _) = start_file("hook", keys, &extra, MockOptions::default()).await;
    let resp = post_chat(&env, "sk-usage-hook", chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 500).await, "script_error");
    let resp = post_chat(&env, "sk-usage-hook", chat_body("mock-403", false)).await;
    assert_eq!(resp.status(), 403);
    let resp = post_chat(&env, "sk-usage-hook", chat_body("mock-fine", false)).await;
    assert_eq!(resp.status(), 200);
    let v = usage_until(&env, "", |v| {
        v["keys"]["usage-hook"]["total"]["requests"] == 3
            && v["keys"]["usage-hook"]["total"]["errors"] == 2
    })
    .await;
    let k = &v["keys"]["usage-hook"]["models"];
    for (model, errors) in [("mock-model", 1), ("mock-403", 1), ("mock-fine", 0)] {
        assert_eq!(k[model]["requests"], 1, "{model}: {v}");
        assert_eq!(k[model]["errors"], errors, "{model}: {v}");
        // The answer was read whole: its usage counts, whatever the hook did.
        assert!(
            k[model]["input_tokens"].as_u64().unwrap() > 0,
            "{model}: {v}"
        );
    }
}
