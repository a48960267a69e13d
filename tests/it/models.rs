//! `/v1/models`: static list, or the upstream's list cached `models_cache_ttl` seconds, with
//! the stale copy served when the upstream fails and 502 when there is no copy.

use crate::common::*;
use sophgate::tools::mock::{self, MockOptions};

async fn models(env: &Env) -> reqwest::Response {
    client()
        .get(env.url("/v1/models"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn static_list_is_served_without_the_upstream() {
    let env = start(
        "models: [\"DeepSeek-R1\", {id: \"Qwen3\", owned_by: \"sophnet\"}]\n",
        MockOptions::default(),
    )
    .await;
    let v: serde_json::Value = models(&env).await.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "DeepSeek-R1");
    assert_eq!(v["data"][1]["owned_by"], "sophnet");
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
}

#[tokio::test]
async fn upstream_list_is_fetched_with_mapped_key_and_cached() {
    let env = start("models_cache_ttl: 60\n", MockOptions::default()).await;
    for _ in 0..3 {
        let resp = models(&env).await;
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert!(v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "mock-model"));
    }
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 1, "cached");
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(seen.path, "/v1/models");
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {UPSTREAM_KEY}")
    );
}

#[tokio::test]
async fn stale_copy_is_served_when_the_upstream_fails() {
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let mock_addr = mock.addr;
    let yaml = base_yaml(mock.addr, "models_cache_ttl: 0.2\n");
    let env = start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await;
    assert_eq!(models(&env).await.status(), 200);
    // Take the upstream away: the mock's task is aborted when its handle drops.
    let Env {
        mock,
        gateway,
        runtime,
    } = env;
    drop(mock);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let placeholder = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let env = Env {
        mock: placeholder,
        gateway,
        runtime,
    };
    let resp = models(&env).await;
    assert_eq!(resp.status(), 200, "stale copy served");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["data"].as_array().unwrap().len() > 1);
    let _ = mock_addr;
}

#[tokio::test]
async fn no_copy_and_no_upstream_is_502() {
    let env = start_with_dead_upstream().await;
    let resp = models(&env).await;
    assert_eq!(error_code(resp, 502).await, "upstream_models_unavailable");
}

/// Two client keys mapped to two upstream keys of which the upstream accepts one: each client
/// sees what the upstream says to its own credential, whichever asks first (issue 17, item 6).
async fn two_accounts(refused_first: bool) {
    let mock = mock::spawn(
        "127.0.0.1:0".parse().unwrap(),
        MockOptions {
            require_key: Some(UPSTREAM_KEY.into()),
            ..MockOptions::default()
        },
    )
    .await
    .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nmodels_cache_ttl: 60\napi_keys:\n  \"{CLIENT_KEY}\": \"{UPSTREAM_KEY}\"\n  \"sk-other-client\": \"up-refused-key\"\n"
    );
    let env = start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await;
    let ask = |key: &'static str| {
        let url = env.url("/v1/models");
        async move { client().get(url).bearer_auth(key).send().await.unwrap() }
    };
    let order: [&'static str; 2] = if refused_first {
        ["sk-other-client", CLIENT_KEY]
    } else {
        [CLIENT_KEY, "sk-other-client"]
    };
    for _round in 0..2 {
        for key in order {
            let resp = ask(key).await;
            if key == CLIENT_KEY {
                assert_eq!(resp.status(), 200, "the accepted key gets the list");
                let v: serde_json::Value = resp.json().await.unwrap();
                assert!(v["data"].as_array().unwrap().len() > 1, "{v}");
            } else {
                assert_eq!(resp.status(), 401, "the upstream's own status");
                let v: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
                let text = v.to_string();
                assert!(!text.contains(UPSTREAM_KEY) && !text.contains("up-refused-key"));
            }
        }
    }
    // The accepted list was fetched once and then cached; the refusal is asked again.
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 3);
}

#[tokio::test]
async fn each_key_sees_its_own_credentials_list_refused_key_first() {
    two_accounts(true).await;
}

#[tokio::test]
async fn each_key_sees_its_own_credentials_list_accepted_key_first() {
    two_accounts(false).await;
}
