//! Test harness: a real mock upstream and a real gateway, both on loopback port 0. Helpers
//! that need no sophgate types (the token mock, the raw-socket upstream, ports, polling) are
//! in the `testkit` crate and re-exported here.

use std::net::SocketAddr;
use std::sync::Arc;

use sophgate::config::Config;
use sophgate::gateway::server::{self, ServerHandle};
use sophgate::reload::Runtime;
use sophgate::tools::mock::{self, MockHandle, MockOptions};
pub use testkit::raw_upstream::{upstream, Mode, Upstream};
pub use testkit::{eventually, free_port, wait_for_listener};

pub const CLIENT_KEY: &str = "sk-test-client";
pub const UPSTREAM_KEY: &str = "up-test-secret";

pub struct Env {
    pub mock: MockHandle,
    pub gateway: ServerHandle,
    pub runtime: Arc<Runtime>,
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.addr, path)
    }
}

/// The base config every test starts from; `extra` is appended (top-level keys).
pub fn base_yaml(mock: SocketAddr, extra: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{mock}\"\nforward_chat_path: /v1/chat/completions\napi_keys:\n  \"{CLIENT_KEY}\": \"{UPSTREAM_KEY}\"\nlog_level: DEBUG\n{extra}\n"
    )
}

pub async fn start(extra: &str, opts: MockOptions) -> Env {
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let yaml = base_yaml(mock.addr, extra);
    start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await
}

/// Starts the gateway with a full YAML config (`{mock}` is replaced by the mock's address).
pub async fn start_gateway(mock: MockHandle, yaml: &str, listen: SocketAddr) -> Env {
    let yaml = yaml.replace("{mock}", &mock.addr.to_string());
    let config =
        Config::from_yaml(&yaml, &|_| None).unwrap_or_else(|e| panic!("bad test config: {e}"));
    let runtime = Runtime::new(config).unwrap();
    let gateway = server::spawn(runtime.clone(), listen).await.unwrap();
    Env {
        mock,
        gateway,
        runtime,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn chat_body(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": stream,
    })
    .to_string()
}

pub async fn post_chat(env: &Env, key: &str, body: String) -> reqwest::Response {
    client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Asserts the OpenAI error shape and returns `error.code`.
pub async fn error_code(resp: reqwest::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert!(
        resp.headers().contains_key("x-request-id"),
        "x-request-id on errors"
    );
    let v: serde_json::Value = resp.json().await.expect("error body is JSON");
    let e = &v["error"];
    assert!(e["message"].is_string(), "error.message in {v}");
    assert!(e["type"].is_string(), "error.type in {v}");
    assert!(e["code"].is_string(), "error.code in {v}");
    e["code"].as_str().unwrap().to_owned()
}

/// A gateway whose upstream address has nothing listening (a port that was free a moment ago).
pub async fn start_with_dead_upstream() -> Env {
    let port = testkit::refused_port();
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let yaml =
        base_yaml(mock.addr, "").replace(&mock.addr.to_string(), &format!("127.0.0.1:{port}"));
    start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await
}

/// A gateway whose upstream is the raw-socket `up` (the mock it also starts gets no requests).
pub async fn gateway_for(up: &Upstream, extra: &str) -> Env {
    let unused = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let yaml = base_yaml(up.addr, extra);
    start_gateway(unused, &yaml, "127.0.0.1:0".parse().unwrap()).await
}

/// One non-streamed chat request that must be answered 200 by the raw-socket upstream.
pub async fn ask(env: &Env, i: usize) {
    let resp = post_chat(env, CLIENT_KEY, chat_body("m", false)).await;
    assert_eq!(resp.status(), 200, "request {i}");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("ok "));
}
