//! `default_*` fill only absent fields; `field_aliases` renames keys recursively.

use crate::common::*;
use serde_json::{json, Value};
use sophgate::tools::mock::MockOptions;

const DEFAULTS: &str =
    "default_model: DeepSeek-V3\ndefault_temperature: 0.3\ndefault_max_tokens: 256\n";

async fn upstream_body(env: &Env, body: Value) -> Value {
    let resp = post_chat(env, CLIENT_KEY, body.to_string()).await;
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&env.mock.stats.last_request().unwrap().body).unwrap()
}

#[tokio::test]
async fn defaults_fill_only_absent_fields() {
    let env = start(DEFAULTS, MockOptions::default()).await;
    let seen = upstream_body(
        &env,
        json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(seen["model"], "DeepSeek-V3");
    assert_eq!(seen["temperature"], 0.3);
    assert_eq!(seen["max_tokens"], 256);

    let seen = upstream_body(
        &env,
        json!({"model": "mine", "temperature": 1.5, "max_tokens": 9, "messages": []}),
    )
    .await;
    assert_eq!(seen["model"], "mine");
    assert_eq!(seen["temperature"], 1.5);
    assert_eq!(seen["max_tokens"], 9);
}

#[tokio::test]
async fn untouched_bodies_pass_byte_for_byte() {
    let env = start("", MockOptions::default()).await;
    let raw = "{ \"model\" : \"mock-model\",\n  \"messages\": [ ] , \"x\": 1.50 }";
    let resp = post_chat(&env, CLIENT_KEY, raw.to_string()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(env.mock.stats.last_request().unwrap().body, raw.as_bytes());
}

#[tokio::test]
async fn field_aliases_rename_recursively() {
    let env = start(
        "field_aliases:\n  model: model_id\n",
        MockOptions::default(),
    )
    .await;
    let seen = upstream_body(
        &env,
        json!({"model": "m", "messages": [{"role": "user", "content": "x", "model": "inner"}], "meta": {"model": 1}}),
    )
    .await;
    assert_eq!(seen["model_id"], "m");
    assert!(seen.get("model").is_none());
    assert_eq!(seen["messages"][0]["model_id"], "inner");
    assert_eq!(seen["meta"]["model_id"], 1);
}
