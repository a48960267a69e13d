//! Auth mapping: the upstream sees the mapped key, never the client key.

use crate::common::*;
use sophgate::tools::mock::MockOptions;

#[tokio::test]
async fn upstream_sees_mapped_key_never_client_key() {
    let env = start("", MockOptions::default()).await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {UPSTREAM_KEY}")
    );
    for (name, value) in &seen.headers {
        assert!(
            !value
                .as_bytes()
                .windows(CLIENT_KEY.len())
                .any(|w| w == CLIENT_KEY.as_bytes()),
            "client key leaked upstream in header {name}"
        );
    }
    assert!(!String::from_utf8_lossy(&seen.body).contains(CLIENT_KEY));
}

/// Header names with `_` stay at the gateway (nginx's default): to a server that maps `-` and
/// `_` alike, `x_api_key` would be a second `x-api-key`.
#[tokio::test]
async fn header_names_with_underscores_are_not_forwarded() {
    let env = start("", MockOptions::default()).await;
    let resp = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x_api_key", "smuggled")
        .header("x-team_id", "smuggled")
        .header("x-team-id", "kept")
        .body(chat_body("mock-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(seen.headers.get("x-team-id").unwrap(), "kept");
    for (name, value) in &seen.headers {
        assert!(!name.as_str().contains('_'), "{name} went upstream");
        assert_ne!(value, "smuggled", "{name}");
    }
}

#[tokio::test]
async fn unknown_and_missing_keys_are_401_and_never_forwarded() {
    let env = start("", MockOptions::default()).await;
    let resp = post_chat(&env, "sk-unknown", chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 401).await, "invalid_api_key");
    let resp = client()
        .post(env.url("/v1/chat/completions"))
        .body(chat_body("mock-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp, 401).await, "invalid_api_key");
    let resp = client()
        .get(env.url("/v1/models"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp, 401).await, "invalid_api_key");
    assert_eq!(
        env.mock.stats.get(&env.mock.stats.requests),
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn passthrough_unknown_keys_forwards_the_callers_own_key() {
    let env = start("passthrough_unknown_keys: true\n", MockOptions::default()).await;
    let resp = post_chat(&env, "sk-their-own", chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        "Bearer sk-their-own"
    );
    // Known keys are still mapped.
    post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {UPSTREAM_KEY}")
    );
}
