//! Test harness: a real mock upstream and a real gateway, both on loopback port 0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod raw_upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use sophgate::config::Config;
use sophgate::gateway::server::{self, ServerHandle};
use sophgate::reload::Runtime;
use sophgate::tools::mock::{self, MockHandle, MockOptions};

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

/// Waits until `cond` holds, polling for up to `secs` seconds.
pub async fn eventually(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cond()
}

/// A loopback port that was free a moment ago: for a child process to listen on, or as an
/// address where nothing listens.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 10 s) until something accepts connections on the loopback port: a gateway
/// started as a child process is up.
pub async fn wait_for_listener(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A gateway whose upstream address has nothing listening (a port that was free a moment ago).
pub async fn start_with_dead_upstream() -> Env {
    let port = free_port();
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let yaml =
        base_yaml(mock.addr, "").replace(&mock.addr.to_string(), &format!("127.0.0.1:{port}"));
    start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await
}
