//! `sophgate demo`: the gateway and the mock upstream in one process on loopback, with a
//! built-in config, so the first command in the README works with no network and no key.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::gateway::server::{self, ServerHandle};
use crate::reload::Runtime;
use crate::tools::mock::{self, MockOptions};

/// The client key the demo accepts. Demo only: it maps to the mock's key, on loopback.
pub const DEMO_CLIENT_KEY: &str = "sk-demo";
const DEMO_UPSTREAM_KEY: &str = "mock-upstream-key";

pub fn demo_config(mock_addr: SocketAddr, listen: SocketAddr) -> Result<Config, String> {
    let yaml = format!(
        r#"
listen: "{listen}"
api_host: "http://{mock_addr}"
forward_chat_path: /v1/chat/completions
api_keys:
  "{DEMO_CLIENT_KEY}": "{DEMO_UPSTREAM_KEY}"
ip_whitelist: ["127.0.0.0/8", "::1"]
default_model: mock-model
models_cache_ttl: 60
log_level: INFO
"#
    );
    Config::from_yaml(&yaml, &|_| None).map_err(|e| e.to_string())
}

pub struct Demo {
    pub gateway: ServerHandle,
    pub mock: mock::MockHandle,
}

/// Starts the mock and the gateway. `listen` falls back to a free port if it is taken.
pub async fn start(listen: SocketAddr, ttft: Duration, itl: Duration) -> Result<Demo, String> {
    let mock = mock::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockOptions {
            ttft,
            itl,
            tokens: 12,
            require_key: Some(DEMO_UPSTREAM_KEY.into()),
            token_check: None,
        },
    )
    .await
    .map_err(|e| format!("cannot start the mock upstream: {e}"))?;
    let config = demo_config(mock.addr, listen)?;
    let runtime = Runtime::new(config).map_err(|e| e.to_string())?;
    let gateway = match server::spawn(runtime.clone(), listen).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("note: {listen} is busy ({e}); using a free port instead");
            let any = SocketAddr::new(listen.ip(), 0);
            server::spawn(runtime, any)
                .await
                .map_err(|e| format!("cannot listen on {any}: {e}"))?
        }
    };
    Ok(Demo { gateway, mock })
}

pub fn banner(addr: SocketAddr) -> String {
    format!(
        r#"sophgate demo: gateway on http://{addr}  →  mock upstream (built in, loopback only)

Try it:

  curl -s http://{addr}/v1/chat/completions \
    -H 'Authorization: Bearer {DEMO_CLIENT_KEY}' -H 'Content-Type: application/json' \
    -d '{{"model":"mock-model","messages":[{{"role":"user","content":"Hi"}}],"stream":true}}'
  curl -s http://{addr}/v1/models -H 'Authorization: Bearer {DEMO_CLIENT_KEY}'
  curl -s http://{addr}/v1/embeddings -H 'Authorization: Bearer {DEMO_CLIENT_KEY}' \
    -H 'Content-Type: application/json' -d '{{"model":"mock-embedding","input":"Hi"}}'

  python3 - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="http://{addr}/v1", api_key="{DEMO_CLIENT_KEY}")
  for chunk in client.chat.completions.create(
          model="mock-model", messages=[{{"role": "user", "content": "Hi"}}], stream=True):
      print(chunk.choices[0].delta.content or "", end="", flush=True) if chunk.choices else None
  print()
  PY

Models with injected faults: mock-429, mock-500, mock-401, mock-drop, mock-slow, mock-hang.
Press Ctrl-C to stop."#
    )
}

/// `demo --check`: one plain and one streamed request through the running demo; returns a
/// short report or the first failure.
pub async fn self_check(addr: SocketAddr) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://{addr}/v1/chat/completions");
    let plain = client
        .post(&url)
        .bearer_auth(DEMO_CLIENT_KEY)
        .header("content-type", "application/json")
        .body(r#"{"messages":[{"role":"user","content":"Hi"}]}"#)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = plain.status();
    let text = plain.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("chat request answered {status}: {text}"));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let content = v
        .pointer("/choices/0/message/content")
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_owned();
    let streamed = client
        .post(&url)
        .bearer_auth(DEMO_CLIENT_KEY)
        .header("content-type", "application/json")
        .body(r#"{"model":"mock-model","messages":[{"role":"user","content":"Hi"}],"stream":true}"#)
        .send()
        .await
        .map_err(|e| format!("stream request failed: {e}"))?;
    let body = streamed.text().await.map_err(|e| e.to_string())?;
    let events = body.matches("data: ").count();
    if !body.contains("data: [DONE]") {
        return Err(format!("stream did not end with [DONE]: {body}"));
    }
    Ok(format!(
        "demo check passed: plain answer {content:?}; stream of {events} events ending in [DONE]"
    ))
}
