//! Which client headers reach the upstream: cookies and the client's network-path headers stay
//! at the gateway unless `forward_headers.keep` names them; `forward_headers.drop` adds names;
//! a body the gateway rewrote goes as `application/json`.

use crate::common::*;
use sophgate::tools::mock::MockOptions;

const PATH_HEADERS: &[&str] = &[
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
];

async fn send_with_headers(env: &Env, body: String, content_type: &str) -> reqwest::Response {
    let mut req = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", content_type)
        .header("x-team", "blue");
    for name in PATH_HEADERS {
        req = req.header(*name, "198.51.100.7");
    }
    req.body(body).send().await.unwrap()
}

#[tokio::test]
async fn cookies_and_client_path_headers_stay_at_the_gateway() {
    let env = start("", MockOptions::default()).await;
    let resp = send_with_headers(&env, chat_body("mock-model", false), "application/json").await;
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    for name in PATH_HEADERS {
        assert!(
            !seen.headers.contains_key(*name),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen.headers.get("x-team").unwrap(), "blue");
}

#[tokio::test]
async fn forward_headers_keep_and_drop() {
    let env = start(
        "forward_headers:\n  keep: [x-forwarded-for, X-Real-IP]\n  drop: [x-team]\n",
        MockOptions::default(),
    )
    .await;
    let resp = send_with_headers(&env, chat_body("mock-model", false), "application/json").await;
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "198.51.100.7");
    assert_eq!(seen.headers.get("x-real-ip").unwrap(), "198.51.100.7");
    for name in ["cookie", "forwarded", "x-forwarded-proto", "x-team"] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn a_header_a_script_sets_goes_upstream() {
    let env = start(
        "plugins:\n  - path: plugins/headers.rhai\n    params: { set: { x-forwarded-for: 10.1.2.3 } }\n",
        MockOptions::default(),
    )
    .await;
    let resp = send_with_headers(&env, chat_body("mock-model", false), "application/json").await;
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(seen.headers.get("x-forwarded-for").unwrap(), "10.1.2.3");
    assert!(!seen.headers.contains_key("cookie"));
}

#[tokio::test]
async fn a_body_the_gateway_rewrote_is_sent_as_json() {
    // Defaults filled in: the body is encoded again.
    let env = start("default_temperature: 0.5\n", MockOptions::default()).await;
    let resp = send_with_headers(&env, chat_body("mock-model", false), "text/plain").await;
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("content-type").unwrap(),
        "application/json"
    );
    let v: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(v["temperature"], 0.5);
}

#[tokio::test]
async fn a_body_renamed_in_its_text_is_sent_as_json() {
    let env = start("field_aliases: {model: model_id}\n", MockOptions::default()).await;
    let resp = send_with_headers(&env, chat_body("mock-model", false), "text/plain").await;
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("content-type").unwrap(),
        "application/json"
    );
    let v: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(v["model_id"], "mock-model");
}

#[tokio::test]
async fn a_body_left_alone_keeps_the_clients_content_type() {
    let env = start("", MockOptions::default()).await;
    let resp = send_with_headers(
        &env,
        chat_body("mock-model", false),
        "application/json; charset=utf-8",
    )
    .await;
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("content-type").unwrap(),
        "application/json; charset=utf-8"
    );
}

#[test]
fn forward_header_names_are_checked_with_path_and_line() {
    let text = "api_host: http://127.0.0.1:1\nforward_headers:\n  drop: [x-ok, \"x y\"]\n  keep:\n    - authorization\n    - x-*-y\n";
    let errs = sophgate::config::Config::from_yaml(text, &|_| None).unwrap_err();
    let found: Vec<(String, Option<usize>)> =
        errs.0.iter().map(|e| (e.path.clone(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("forward_headers.drop[1]".to_string(), Some(3)),
            ("forward_headers.keep[0]".to_string(), Some(5)),
            ("forward_headers.keep[1]".to_string(), Some(6)),
        ],
        "{errs}"
    );
    assert!(errs.0[0].message.contains("not a header name"), "{errs}");
    assert!(errs.0[1].message.contains("set by the gateway"), "{errs}");
}
