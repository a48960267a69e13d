//! The token mock (`testkit::token_mock`) itself: form decoding, the OAuth2 and generic routes,
//! expiry and revocation.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use testkit::token_mock::{form_decode, parse_form, spawn, TokenMockOptions};

async fn post(url: &str, body: &'static str, basic: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(b) = basic {
        req = req.header("authorization", format!("Basic {b}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let v = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, v)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn decoding() {
    assert_eq!(form_decode("a+b%3Ac%2F%C3%A9%zz%4"), "a b:c/é%zz%4");
    let f = parse_form(b"grant_type=client_credentials&scope=a+b&x");
    assert_eq!(f.get("scope").map(String::as_str), Some("a b"));
    assert_eq!(f.get("x").map(String::as_str), Some(""));
}

#[tokio::test]
async fn oauth2_route_checks_the_client_and_issues_tokens() {
    let opts = TokenMockOptions {
        ttl: Duration::from_secs(60),
        client_id: "gw".into(),
        client_secret: "p:w d".into(),
    };
    let m = spawn("127.0.0.1:0".parse().unwrap(), opts).await.unwrap();
    let url = m.oauth2_url();
    let good = b64("gw:p%3Aw+d");
    let (s, v) = post(&url, "grant_type=client_credentials", Some(&good)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["access_token"], "tok-1");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 60);
    assert!(m.state.is_valid("tok-1"));
    assert!(m.state.is_valid("Bearer tok-1"));
    assert!(!m.state.is_valid("tok-2"));
    assert!(!m.state.is_valid("sk-other"));

    let (s, _) = post(
        &url,
        "grant_type=client_credentials&client_id=gw&client_secret=p%3Aw+d",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = post(
        &url,
        "grant_type=client_credentials&client_id=gw&client_secret=nope",
        None,
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    let (s, _) = post(&url, "grant_type=password", Some(&good)).await;
    assert_eq!(s, 400);
    assert_eq!(m.state.fetches(), 4);

    m.state.revoke_all();
    assert!(!m.state.is_valid("tok-1"));
    assert!(!m.state.is_valid("tok-2"));
    m.state.set_failing(true);
    let (s, _) = post(&url, "grant_type=client_credentials", Some(&good)).await;
    assert_eq!(s, 500);
}

#[tokio::test]
async fn generic_route_and_expiry() {
    let opts = TokenMockOptions {
        ttl: Duration::from_millis(300),
        ..Default::default()
    };
    let m = spawn("127.0.0.1:0".parse().unwrap(), opts).await.unwrap();
    let (s, v) = post(&m.token_url(), "{}", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["token"], "tok-1");
    assert_eq!(v["data"]["expires_in"], 0.3);
    assert!(m.state.is_valid("tok-1"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!m.state.is_valid("tok-1"));
    m.state.set_ttl(Duration::from_secs(5));
    let (_, v) = post(&m.token_url(), "{}", None).await;
    assert_eq!(v["data"]["expires_in"], 5);
    let last = m.state.last_request().unwrap();
    assert_eq!(last.path, "/token");
    assert_eq!(&last.body[..], b"{}");
    let (s, _) = post(&format!("{}/nope", m.base_url()), "", None).await;
    assert_eq!(s, 404);
}
