//! Fetched credentials end to end: single flight, refresh ahead of expiry, 401 → refetch →
//! retry, failure handling, pools with cooldown — real token server, real upstream mock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use sophgate::tools::mock::{self, MockOptions, TokenCheck};
use testkit::token_mock::{self, TokenMock, TokenMockOptions};

async fn token_server(ttl: Duration) -> TokenMock {
    token_mock::spawn(
        "127.0.0.1:0".parse().unwrap(),
        TokenMockOptions {
            ttl,
            client_id: "gw".into(),
            client_secret: "s3cr3t-client".into(),
        },
    )
    .await
    .unwrap()
}

/// Gateway + an upstream that accepts only tokens the token server issued and still honours.
async fn setup(ttl: Duration, cred_extra: &str) -> (Env, TokenMock) {
    let tokens = token_server(ttl).await;
    let state = tokens.state.clone();
    let opts = MockOptions {
        token_check: Some(TokenCheck(Arc::new(move |t| state.is_valid(t)))),
        ..MockOptions::default()
    };
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         credentials:\n  corp: {{ type: oauth2, token_url: \"http://{}/oauth2/token\", client_id: gw, client_secret: \"s3cr3t-client\"{cred_extra} }}\n\
         api_keys:\n  \"{CLIENT_KEY}\": {{ name: alice, credential: corp }}\n",
        tokens.addr
    );
    let env = start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await;
    (env, tokens)
}

#[tokio::test]
async fn hundred_cold_requests_cause_exactly_one_fetch() {
    let (env, tokens) = setup(Duration::from_secs(300), "").await;
    tokens.state.set_delay(Duration::from_millis(200));
    let env = Arc::new(env);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
                .await
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(tokens.state.fetches(), 1);
}

#[tokio::test]
async fn token_is_refreshed_ahead_of_expiry_without_making_requests_wait() {
    let (env, tokens) = setup(Duration::from_secs(2), ", refresh_before: 1").await;
    assert_eq!(
        post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
    assert_eq!(tokens.state.fetches(), 1);
    // Inside the refresh window; token fetches now take two seconds (a request that waited
    // for the refresh would take that long; the bound below leaves room for a loaded machine).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tokens.state.set_delay(Duration::from_millis(2000));
    let t0 = Instant::now();
    assert_eq!(
        post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "a request waited for the refresh: {took:?}"
    );
    let state = tokens.state.clone();
    assert!(
        eventually(3.0, || state.fetches() == 2).await,
        "no background refresh"
    );
}

#[tokio::test]
async fn upstream_401_invalidates_refetches_and_retries_once() {
    let (env, tokens) = setup(Duration::from_secs(300), "").await;
    assert_eq!(
        post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
    tokens.state.revoke_all();
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200, "retried with a fresh token");
    assert_eq!(tokens.state.fetches(), 2);
}

#[tokio::test]
async fn failing_token_source_keeps_a_valid_token_else_502_naming_the_credential() {
    let (env, tokens) = setup(Duration::from_secs(300), "").await;
    tokens.state.set_failing(true);
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("corp"), "names the credential: {body}");
    assert!(!body.contains("s3cr3t"), "{body}");

    tokens.state.set_failing(false);
    assert_eq!(
        post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
    tokens.state.set_failing(true);
    // The cached token is still valid: the failing source does not matter.
    assert_eq!(
        post_chat(&env, CLIENT_KEY, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn pool_key_cools_down_and_traffic_moves_then_recovers() {
    let bad_allowed = Arc::new(AtomicBool::new(false));
    let flag = bad_allowed.clone();
    let opts = MockOptions {
        token_check: Some(TokenCheck(Arc::new(move |t| {
            t == "key-good" || (t == "key-bad" && flag.load(Ordering::SeqCst))
        }))),
        ..MockOptions::default()
    };
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         credentials:\n  spread: {{ type: pool, keys: [key-bad, key-good], strategy: round_robin, cooldown: 0.5 }}\n\
         api_keys:\n  \"{CLIENT_KEY}\": {{ name: alice, credential: spread }}\n"
    );
    let env = start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await;
    for _ in 0..6 {
        let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
        assert_eq!(
            resp.status(),
            200,
            "a refused key is cooled and another one tried"
        );
    }
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        "Bearer key-good"
    );
    // Recovery: the bad key works again and comes back into rotation after its cooldown.
    bad_allowed.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut used_bad = false;
    for _ in 0..4 {
        post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
        let seen = env.mock.stats.last_request().unwrap();
        used_bad |= seen.headers.get("authorization").unwrap() == "Bearer key-bad";
    }
    assert!(used_bad, "the cooled key never came back");
}

#[tokio::test]
async fn all_pool_keys_cooling_is_429_with_the_shortest_retry_after() {
    let opts = MockOptions {
        token_check: Some(TokenCheck(Arc::new(|_| false))),
        ..MockOptions::default()
    };
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         credentials:\n  spread: {{ type: pool, keys: [k1, k2], cooldown: 30 }}\n\
         api_keys:\n  \"{CLIENT_KEY}\": {{ name: alice, credential: spread }}\n"
    );
    let env = start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await;
    // Each request burns through the keys (one retry on another key).
    post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(error_code(resp, 429).await, "upstream_keys_cooling_down");
}
