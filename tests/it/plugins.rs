//! The plugin stage end to end: hooks change what goes upstream and what comes back, the
//! error contract, the sandbox under load, and the bundled plugins loaded by path.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use sophgate::config::Config;
use sophgate::gateway::server;
use sophgate::reload::Runtime;
use sophgate::tools::mock::{self, MockOptions};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn temp_dir(tag: &str) -> Dir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("sophgate-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// Gateway whose config file lives in `dir` with the given plugin files and `plugins:` block.
async fn start_with_plugins(
    dir: &Dir,
    files: &[(&str, &str)],
    plugins_yaml: &str,
    opts: MockOptions,
) -> Env {
    for (name, src) in files {
        std::fs::write(dir.0.join(name), src).unwrap();
    }
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let yaml = format!(
        "{}{plugins_yaml}\n",
        base_yaml(mock.addr, "").replace(
            &format!("  \"{CLIENT_KEY}\": \"{UPSTREAM_KEY}\""),
            &format!("  \"{CLIENT_KEY}\": {{ name: alice }}\n  \"sk-seed\": \"{UPSTREAM_KEY}\"")
        )
    );
    let path = dir.0.join("config.yml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let runtime = Runtime::new(config).unwrap_or_else(|e| panic!("{e}"));
    let gateway = server::spawn(runtime.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Env {
        mock,
        gateway,
        runtime,
    }
}

const HOOKS: &str = r#"
fn on_request(req) {
    req.body.seen_headers = req.headers;
    req.body.seen_key = req.key;
    req.body.seen_ip = req.client_ip;
    req.headers["x-team"] = params.team;
    req.headers.remove("x-debug");
    req.ctx.started = "yes";
}
fn on_response(res) {
    res.headers["x-ctx"] = res.ctx.started;
    res.body.note = "touched by " + params.team;
}
"#;

#[tokio::test]
async fn hooks_change_the_request_and_the_response_and_never_see_credentials() {
    let dir = temp_dir("hooks");
    let env = start_with_plugins(
        &dir,
        &[("hooks.rhai", HOOKS)],
        "plugins:\n  - path: hooks.rhai\n    params: { team: blue }",
        MockOptions::default(),
    )
    .await;
    let resp = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth("sk-seed")
        .header("x-debug", "1")
        .body(chat_body("mock-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("x-ctx").unwrap(), "yes");
    assert!(
        resp.headers().get("content-length").is_none()
            || resp.headers().get("content-length").unwrap() != "0"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["note"], "touched by blue");

    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(seen.headers.get("x-team").unwrap(), "blue");
    assert!(seen.headers.get("x-debug").is_none());
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {UPSTREAM_KEY}")
    );
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    let visible = sent["seen_headers"].as_object().unwrap();
    assert!(
        !visible.contains_key("authorization"),
        "script saw credentials: {visible:?}"
    );
    assert!(!sent.to_string().contains("sk-seed"));
    assert!(!sent.to_string().contains(UPSTREAM_KEY));
    assert!(sent["seen_key"].as_str().unwrap().starts_with("key-"));
    assert_eq!(sent["seen_ip"], "127.0.0.1");
}

#[tokio::test]
async fn throw_answers_with_its_status_and_other_errors_are_500_naming_the_plugin() {
    let dir = temp_dir("throw");
    let guard = r#"
fn on_request(req) {
    if req.body.model == "forbidden" { throw #{ status: 403, message: "model forbidden here" }; }
    if req.body.model == "crash" { let x = req.body.nope.deeper; }
}
"#;
    let env = start_with_plugins(
        &dir,
        &[("guard.rhai", guard)],
        "plugins:\n  - path: guard.rhai",
        MockOptions::default(),
    )
    .await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("forbidden", false)).await;
    assert_eq!(resp.status(), 403);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "model forbidden here");
    assert_eq!(v["error"]["code"], "script_rejected");

    let resp = post_chat(&env, CLIENT_KEY, chat_body("crash", false)).await;
    assert_eq!(resp.status(), 500);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "script_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("guard.rhai"), "{msg}");
    assert!(
        !msg.contains("line"),
        "no script internals in the response: {msg}"
    );
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
    assert_eq!(
        post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_runaway_script_fails_only_its_own_request_under_load() {
    let dir = temp_dir("loop");
    let src = r#"fn on_request(req) { if req.body.model == "spin" { loop { } } }"#;
    let env = Arc::new(
        start_with_plugins(
            &dir,
            &[("spin.rhai", src)],
            "plugins:\n  - path: spin.rhai",
            MockOptions::default(),
        )
        .await,
    );
    let mut tasks = Vec::new();
    for i in 0..40 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let model = if i % 4 == 0 { "spin" } else { "mock-model" };
            let t0 = Instant::now();
            let status = post_chat(&env, CLIENT_KEY, chat_body(model, false))
                .await
                .status()
                .as_u16();
            (model, status, t0.elapsed())
        }));
    }
    for t in tasks {
        let (model, status, took) = t.await.unwrap();
        if model == "spin" {
            assert_eq!(status, 500);
        } else {
            assert_eq!(status, 200, "a good request failed next to runaway scripts");
        }
        assert!(took < Duration::from_secs(5), "{model} took {took:?}");
    }
}

#[tokio::test]
async fn on_event_rewrites_and_drops_stream_events() {
    let dir = temp_dir("events");
    let src = r#"
fn on_event(ev) {
    if type_of(ev.data) == "string" { return; }
    let delta = ev.data.choices[0].delta;
    if "content" in delta && delta.content != () {
        if delta.content == "" { ev.drop = true; return; }
        ev.data.choices[0].delta.content = delta.content.to_upper();
        ev.ctx.n = (ev.ctx.n ?? 0) + 1;
        ev.data.n = ev.ctx.n;
    }
}
"#;
    let env = start_with_plugins(
        &dir,
        &[("upper.rhai", src)],
        "plugins:\n  - path: upper.rhai",
        MockOptions {
            tokens: 4,
            ..MockOptions::default()
        },
    )
    .await;
    let text = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true))
        .await
        .text()
        .await
        .unwrap();
    let mut content = String::new();
    let mut last_n = 0;
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = ev.strip_prefix("data: ").unwrap();
        if data == "[DONE]" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            assert!(
                !c.is_empty(),
                "the empty first delta should have been dropped"
            );
            content.push_str(c);
            last_n = v["n"].as_i64().unwrap();
        }
    }
    assert_eq!(content, "HELLO FROM THE SOPHGATE");
    assert_eq!(last_n, 4, "ctx carried across events");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

/// An `on_event` hook that fails mid-stream ends the stream with an error event whose type
/// is the script's (`script_error`), not the upstream's.
#[tokio::test]
async fn a_script_error_mid_stream_ends_it_with_a_script_error_event() {
    let dir = temp_dir("event-error");
    let src = r#"
fn on_event(ev) {
    ev.ctx.n = (ev.ctx.n ?? 0) + 1;
    if ev.ctx.n == 3 { let x = (); x.boom(); }
}
"#;
    let env = start_with_plugins(
        &dir,
        &[("boom.rhai", src)],
        "plugins:\n  - path: boom.rhai",
        MockOptions {
            tokens: 6,
            ..MockOptions::default()
        },
    )
    .await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "two events, then the error: {text}");
    let last = events[2].strip_prefix("data: ").unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["error"]["type"], "script_error", "{text}");
    assert_eq!(v["error"]["code"], "script_error", "{text}");
    assert!(!text.contains("upstream_error"), "{text}");
}

#[tokio::test]
async fn bundled_plugins_load_by_path_from_any_folder() {
    let dir = temp_dir("bundled");
    let env = start_with_plugins(
        &dir,
        &[],
        "plugins:\n  - path: plugins/headers.rhai\n    params: { set: { x-team: red }, response_set: { x-served-by: sophgate } }\n  - path: plugins/sophnet_project.rhai\n    params: { project_id: proj-42 }",
        MockOptions::default(),
    )
    .await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("DeepSeek-V3", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("x-served-by").unwrap(), "sophgate");
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/api/open-apis/projects/proj-42/chat/completions"
    );
    assert_eq!(seen.headers.get("x-team").unwrap(), "red");
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["model_id"], "DeepSeek-V3");
    assert!(sent.get("model").is_none());
}

#[tokio::test]
async fn a_plugin_that_does_not_compile_is_reported_with_file_and_line() {
    let dir = temp_dir("broken");
    std::fs::write(
        dir.0.join("bad.rhai"),
        "fn on_request(req) {\n  let x = ;\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.0.join("config.yml"),
        "api_keys: { \"sk-x\": \"up\" }\nplugins:\n  - path: bad.rhai\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sophgate"))
        .args(["check", "-c", dir.0.join("config.yml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.rhai:2:"), "{err}");
}
