//! The status page (`GET /admin`) and its data (`GET /admin/live`): the page and its assets
//! under a strict CSP, the admin key required for the data, and the data after known traffic:
//! requests, errors with their request ids, tokens per key and model (a `tpm` key reads real
//! usage), upstream outcomes, open streams, the generation and a failed reload's error. The
//! statistics are process-wide (other tests run beside these), so counts are lower bounds and
//! the rows asserted exactly carry names only these tests use.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use sophgate::config::Config;
use sophgate::gateway::server;
use sophgate::reload::Runtime;
use sophgate::tools::mock::{self, MockOptions};

use crate::common::*;

const ADMIN_KEY: &str = "status-admin-key-0123456789abcdef";
const TPM_KEY: &str = "sk-status-page-tpm";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn yaml(extra: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         api_keys:\n  \"{CLIENT_KEY}\": \"{UPSTREAM_KEY}\"\n  \"{TPM_KEY}\": {{ name: status-page-tpm, tpm: 1000000 }}\n\
         admin:\n  key: \"{ADMIN_KEY}\"\n{extra}"
    )
}

async fn start_with(opts: MockOptions) -> Env {
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    start_gateway(mock, &yaml(""), "127.0.0.1:0".parse().unwrap()).await
}

/// A gateway reading its config from a file, so a reload can fail for real.
async fn start_from_file(tag: &str) -> (Env, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sophgate-status-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let path = dir.join("config.yml");
    std::fs::write(&path, yaml("").replace("{mock}", &mock.addr.to_string())).unwrap();
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

async fn live(env: &Env) -> (reqwest::header::HeaderMap, String, Value) {
    let resp = client()
        .get(env.url("/admin/live"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    (headers, text, v)
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

fn assert_hardened(h: &reqwest::header::HeaderMap) {
    assert_eq!(h["content-security-policy"], CSP);
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
}

#[tokio::test]
async fn page_and_assets_are_served_with_a_strict_csp() {
    let env = start_with(MockOptions::default()).await;
    let c = client();
    let mut served = String::new();
    for (path, content_type) in [
        ("/admin", "text/html; charset=utf-8"),
        ("/admin/", "text/html; charset=utf-8"),
        ("/admin/assets/status.js", "text/javascript; charset=utf-8"),
        ("/admin/assets/status.css", "text/css; charset=utf-8"),
    ] {
        // The page itself holds no data: no key needed.
        let resp = c.get(env.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], content_type, "{path}");
        assert_hardened(resp.headers());
        served.push_str(&resp.text().await.unwrap());
    }
    let html = c
        .get(env.url("/admin"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"<script src="/admin/assets/status.js" defer></script>"#));
    assert!(html.contains(r#"<link rel="stylesheet" href="/admin/assets/status.css">"#));
    assert!(html.contains(r#"id="key-input" type="password""#));
    // Nothing the CSP would block or that loads from elsewhere.
    assert!(!html.contains("<script>"), "no inline script");
    assert!(!html.contains(" style="), "no inline style");
    let handler = html.split(" on").skip(1).find(|rest| {
        let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert!(handler.is_none(), "no inline handlers: on{handler:?}");
    for text in [&html, &served] {
        assert!(!text.contains("https://"), "nothing external");
        assert!(!text.contains(ADMIN_KEY));
    }
    // The key is kept per tab, never where it outlives the session or shows in a URL.
    let js = c
        .get(env.url("/admin/assets/status.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(js.contains("sessionStorage"));
    assert!(!js.contains("localStorage"));
    assert!(js.contains(r#""Authorization": "Bearer " + key"#));

    let resp = c.post(env.url("/admin")).send().await.unwrap();
    assert_eq!(error_code(resp, 405).await, "method_not_allowed");
    let resp = c
        .get(env.url("/admin/assets/other.js"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn page_does_not_exist_without_an_admin_key() {
    let env = start("", MockOptions::default()).await;
    for path in ["/admin", "/admin/assets/status.js", "/admin/live"] {
        let resp = client().get(env.url(path)).send().await.unwrap();
        assert_eq!(error_code(resp, 404).await, "unknown_route", "{path}");
    }
}

#[tokio::test]
async fn live_refuses_a_missing_or_wrong_key() {
    let env = start_with(MockOptions::default()).await;
    let c = client();
    let resp = c.get(env.url("/admin/live")).send().await.unwrap();
    assert_eq!(error_code(resp, 401).await, "invalid_api_key");
    for wrong in ["wrong-admin-key-0123456789", CLIENT_KEY] {
        let resp = c
            .get(env.url("/admin/live"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(resp, 401).await, "invalid_api_key", "{wrong}");
    }
    // The key in a query string is not a key.
    let resp = c
        .get(env.url(&format!("/admin/live?key={ADMIN_KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn live_reports_known_traffic() {
    let env = start_with(MockOptions::default()).await;
    let model = "status-page-model";
    for _ in 0..5 {
        let resp = post_chat(&env, TPM_KEY, chat_body(model, false)).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    for _ in 0..3 {
        let resp = post_chat(&env, TPM_KEY, chat_body(model, true)).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // An upstream 500, passed through, and a key the gateway refuses itself.
    let resp = post_chat(&env, TPM_KEY, chat_body("mock-500", false)).await;
    let upstream_failed = request_id(&resp);
    assert_eq!(resp.status(), 500);
    let resp = post_chat(&env, "sk-status-page-unknown", chat_body(model, false)).await;
    let refused = request_id(&resp);
    assert_eq!(error_code(resp, 401).await, "invalid_api_key");

    let (headers, text, v) = live(&env).await;
    assert_hardened(&headers);
    assert_eq!(headers["content-type"], "application/json");
    assert!(!text.contains(ADMIN_KEY) && !text.contains(TPM_KEY) && !text.contains(UPSTREAM_KEY));

    let series = &v["series"];
    assert_eq!(series["requests"].as_array().unwrap().len(), 300);
    let sum = |k: &str| -> u64 {
        series[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    assert!(sum("requests") >= 10, "{series}");
    assert!(sum("errors") >= 2, "{series}");
    assert!(v["ttft_ms"]["samples"].as_u64().unwrap() >= 8);
    assert!(v["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(v["ttft_ms"]["p95"].as_f64().unwrap() >= v["ttft_ms"]["p50"].as_f64().unwrap());

    // Real usage of the tpm key: the mock reports prompt and completion tokens (8 per answer).
    let row = |list: &Value, name: &str| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {list}"))
            .clone()
    };
    let by_key = row(&v["tokens_per_min"]["keys"], "status-page-tpm");
    assert_eq!(by_key["output"], 8 * 8, "{by_key}");
    assert!(by_key["input"].as_u64().unwrap() >= 8, "{by_key}");
    let by_model = row(&v["tokens_per_min"]["models"], model);
    assert_eq!(by_model["output"], 8 * 8, "{by_model}");

    let errors = v["errors"].as_array().unwrap();
    let find = |rid: &str| {
        errors
            .iter()
            .find(|e| e["request_id"] == rid)
            .unwrap_or_else(|| panic!("{rid} in {errors:?}"))
    };
    let e = find(&upstream_failed);
    assert_eq!(e["status"], 500);
    assert_eq!(e["key"], "status-page-tpm");
    assert_eq!(e["model"], "mock-500");
    assert_eq!(e["route"], "chat");
    let e = find(&refused);
    assert_eq!(e["status"], 401);
    assert_eq!(e["code"], "invalid_api_key");
    assert!(e["key"].is_null());

    let upstreams = v["upstreams"].as_array().unwrap();
    assert!(!upstreams.is_empty());
    let u = &upstreams[0];
    assert!(u["outcomes"]["ok"].as_u64().unwrap() >= 8, "{u}");
    assert!(u["outcomes"]["http_5xx"].as_u64().unwrap() >= 1, "{u}");
    assert!(u["recent"].as_array().unwrap().len() <= 20);
    assert!(u["last_at"].as_u64().is_some());

    assert_eq!(v["config"]["generation"], 1);
    assert!(v["config"]["last_reload"].is_null());
}

#[tokio::test]
async fn live_counts_an_open_stream() {
    let env = start_with(MockOptions {
        itl: Duration::from_millis(400),
        tokens: 20,
        ..MockOptions::default()
    })
    .await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("status-page-stream", true)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    let (_, _, v) = live(&env).await;
    assert!(
        v["inflight"]["streams"].as_i64().unwrap() >= 1,
        "{}",
        v["inflight"]
    );
    // The stream and this very admin request are not the only ones: the stream counts too.
    assert!(
        v["inflight"]["requests"].as_i64().unwrap() >= 1,
        "{}",
        v["inflight"]
    );
    drop(body);
}

#[tokio::test]
async fn a_failed_reload_shows_its_error_and_the_generation_that_serves() {
    let (env, path) = start_from_file("reload").await;
    std::fs::write(&path, "listen: [unclosed\n").unwrap();
    let resp = client()
        .post(env.url("/admin/reload"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let (_, text, v) = live(&env).await;
    let c = &v["config"];
    assert_eq!(c["generation"], 1);
    assert_eq!(c["last_reload"]["ok"], false);
    assert_eq!(c["last_reload"]["trigger"], "admin");
    let err = c["last_reload"]["error"].as_str().unwrap();
    assert!(err.contains("config.yml"), "{err}");
    assert_eq!(c["reloads"]["failed"], 1);
    assert!(!text.contains(ADMIN_KEY));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
