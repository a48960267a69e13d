//! The bundled `field_aliases.rhai` as a plugin renames keys without converting the body to
//! script values (in the body's text where it can, as the native `field_aliases` key does):
//! what goes upstream is the JSON the native key sends, and a body with nothing to rename goes
//! byte for byte.

use crate::common::*;
use serde_json::{json, Value};
use sophgate::tools::mock::MockOptions;

/// The same aliases as the native key and as the bundled plugin's params.
fn configs(aliases: &[(&str, &str)]) -> [String; 2] {
    let mut native = String::from("field_aliases:\n");
    let mut params = Vec::new();
    for (from, to) in aliases {
        native.push_str(&format!("  {from}: {to}\n"));
        params.push(format!("{from}: {to}"));
    }
    let plugin = format!(
        "plugins:\n  - path: plugins/field_aliases.rhai\n    params: {{ {} }}\n",
        params.join(", ")
    );
    [native, plugin]
}

/// The body the upstream got for `body` posted to `path`.
async fn sent(env: &Env, path: &str, body: &str) -> Vec<u8> {
    let resp = client()
        .post(env.url(path))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert!(resp.status().as_u16() < 500, "{path}: {}", resp.status());
    env.mock.stats.last_request().unwrap().body.to_vec()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Aliases, path, body.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

#[tokio::test]
async fn the_plugin_sends_what_the_native_key_sends() {
    let chat = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "x", "model": "inner"},
            {"role": "assistant", "content": [{"type": "text", "text": "y", "model": "deep"}]},
        ],
        "meta": {"model": 1, "n": [1, 2.5, "z"]},
    })
    .to_string();
    let embeddings =
        json!({"model": "e", "input": ["a", "b"], "extra": {"model": "x"}}).to_string();
    let cases: [Case<'_>; 6] = [
        (&[("model", "model_id")], "/v1/chat/completions", &chat),
        (
            &[("model", "model_id"), ("role", "speaker")],
            "/v1/chat/completions",
            &chat,
        ),
        // A key renamed onto an existing one, and aliases that chain: the tree fallback.
        (&[("content", "role")], "/v1/chat/completions", &chat),
        (
            &[("meta", "model"), ("model", "name")],
            "/v1/chat/completions",
            &chat,
        ),
        (&[("model", "model_id")], "/v1/embeddings", &embeddings),
        // An array body: renamed in every object it holds.
        (
            &[("model", "model_id")],
            "/v1/embeddings",
            r#"[{"model": "a"}, {"b": {"model": 1}}]"#,
        ),
    ];
    for (aliases, path, body) in cases {
        let [native, plugin] = configs(aliases);
        let native = start(&native, MockOptions::default()).await;
        let plugin = start(&plugin, MockOptions::default()).await;
        let want = sent(&native, path, body).await;
        let got = sent(&plugin, path, body).await;
        assert_eq!(json_of(&got), json_of(&want), "{aliases:?} {path}");
        assert_ne!(
            json_of(&got),
            json_of(body.as_bytes()),
            "{aliases:?} {path}"
        );
    }
}

#[tokio::test]
async fn a_body_with_nothing_to_rename_goes_byte_for_byte() {
    let [_, plugin] = configs(&[("model", "model_id")]);
    let env = start(&plugin, MockOptions::default()).await;
    let raw = "{ \"messages\" : [ {\"role\": \"user\", \"content\": \"x\"} ],\n \"x\": 1.50 }";
    assert_eq!(
        sent(&env, "/v1/chat/completions", raw).await,
        raw.as_bytes()
    );
    // A renamed key keeps its place and everything else its bytes.
    let raw = "{ \"model\" : \"m\", \"messages\": [ ], \"x\": 1.50 }";
    let got = sent(&env, "/v1/chat/completions", raw).await;
    assert_eq!(
        String::from_utf8(got).unwrap(),
        "{ \"model_id\" : \"m\", \"messages\": [ ], \"x\": 1.50 }"
    );
}

/// The body phase looks for the keys a renaming plugin's constant names; what goes upstream is
/// still exactly what the hooks' own renames give when they rename with something else, or not
/// at all, and when the native key renamed first.
#[tokio::test]
async fn the_keys_looked_for_early_are_checked_against_the_hooks_renames() {
    let dir = std::env::temp_dir().join(format!("sophgate-guess-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    let cases = [
        // A local shadows the constant: its aliases apply, not params'.
        (
            "shadow.rhai",
            r#"fn on_request(req) { let params = #{messages: "msgs"}; req.body.rename_keys(params); }"#,
            json!({"model": "m", "msgs": [{"role": "user", "content": "x"}]}),
        ),
        // The call does not run: the body goes as it came.
        (
            "never.rhai",
            r#"fn on_request(req) { if type_of(req.body) == "array" { req.body.rename_keys(params); } }"#,
            body.clone(),
        ),
        // Another constant than params, as guessed.
        (
            "table.rhai",
            r#"let table = #{role: "speaker"}; fn on_request(req) { req.body.rename_keys(table); }"#,
            json!({"model": "m", "messages": [{"speaker": "user", "content": "x"}]}),
        ),
    ];
    for (name, source, want) in cases {
        let path = dir.join(name);
        std::fs::write(&path, source).unwrap();
        let yaml = format!(
            "plugins:\n  - path: {}\n    params: {{ model: model_id }}\n",
            path.display()
        );
        let env = start(&yaml, MockOptions::default()).await;
        let got = sent(&env, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(json_of(&got), want, "{name}");
    }
    // The native key renames first; the plugin then renames what it left.
    let yaml = "field_aliases:\n  model: model_id\n\
                plugins:\n  - path: plugins/field_aliases.rhai\n    params: { model_id: name }\n";
    let env = start(yaml, MockOptions::default()).await;
    let got = sent(&env, "/v1/chat/completions", &body.to_string()).await;
    assert_eq!(
        json_of(&got),
        json!({"name": "m", "messages": [{"role": "user", "content": "x"}]})
    );
}
