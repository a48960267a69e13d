//! Usage and budgets kept in the shared store: gateway processes on one real `redis-server`
//! answer `GET /admin/usage` for the whole fleet, share budgets, keep them across restarts,
//! and follow `on_error` when Redis is gone.

use std::time::{Duration, Instant};

use serde_json::Value;
use sophgate::tools::mock::{MockHandle, MockOptions};
use testkit::redis_server::RedisServer;

use crate::common::client;
use crate::fleet::{mock_with, Replica};

const ADMIN_KEY: &str = "admin-key-for-fleet-usage";

const KEYS: &str = concat!(
    "api_keys:\n",
    "  \"sk-plain\": { name: plain }\n",
    "  \"sk-slow\": { name: slow, rpm: 1 }\n",
    "  \"sk-budget\": { name: budgeted, budget: { tokens: 40, period: day } }\n",
);

fn yaml_with_store(mock: &MockHandle, store: &str) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\napi_host: \"http://{}\"\nforward_chat_path: /v1/chat/completions\n\
         log_level: WARNING\nadmin: {{ key: \"{ADMIN_KEY}\" }}\n{store}{KEYS}",
        mock.addr
    )
}

fn yaml(mock: &MockHandle, redis: &RedisServer, prefix: &str, on_error: &str) -> String {
    yaml_with_store(
        mock,
        &format!(
            "store: {{ url: \"{}\", prefix: \"{prefix}\", timeout_ms: 200, on_error: {on_error} }}\n",
            redis.url()
        ),
    )
}

async fn admin_usage(r: &Replica, query: &str) -> (u16, Value) {
    let resp = client()
        .get(format!("http://127.0.0.1:{}/admin/usage{query}", r.port))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Polls `/admin/usage{query}` on `r` until `cond` holds (usage is written off the request
/// path); the last answer.
async fn usage_until(r: &Replica, query: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, v) = admin_usage(r, query).await;
        assert_eq!(status, 200, "{v}");
        if cond(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn total(v: &Value, key: &str) -> Value {
    v["keys"][key]["total"].clone()
}

async fn code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn usage_made_on_two_replicas_shows_on_either() {
    let redis = RedisServer::start();
    let mock = mock_with(MockOptions::default()).await;
    let yaml = yaml(&mock, &redis, "fu1:", "deny");
    let a = Replica::start(&yaml).await;
    let b = Replica::start(&yaml).await;
    let mut input = 0;
    for r in [&a, &b, &b] {
        let resp = r.chat("sk-plain", "mock-model", false).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        input += v["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    // One admitted on A, then the fleet's rpm of 1 refuses on B.
    assert_eq!(a.chat("sk-slow", "mock-model", false).await.status(), 200);
    assert_eq!(b.chat("sk-slow", "mock-model", false).await.status(), 429);

    for r in [&a, &b] {
        let v = usage_until(r, "", |v| {
            total(v, "plain")["requests"] == 3 && total(v, "slow")["requests"] == 2
        })
        .await;
        let plain = total(&v, "plain");
        assert_eq!(plain["requests"], 3, "{v}");
        assert_eq!(plain["input_tokens"], input, "{v}");
        assert!(plain["output_tokens"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["keys"]["plain"]["models"]["mock-model"]["requests"], 3);
        let slow = total(&v, "slow");
        assert_eq!(
            (slow["requests"].clone(), slow["rate_limited"].clone()),
            (2.into(), 1.into()),
            "{v}"
        );
        assert!(v["since"].is_string(), "{v}");
    }
}

/// Spends `sk-budget`'s 40 tokens through `r` (about 25 a request): admitted until refused.
async fn spend_budget(r: &Replica) {
    for _ in 0..4 {
        let (status, code) = code(r.chat("sk-budget", "mock-model", false).await).await;
        match status {
            200 => {}
            429 => {
                assert_eq!(code, "budget_exceeded");
                return;
            }
            other => panic!("status {other} {code}"),
        }
        // The charge reaches Redis off the request path.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the budget never ran out");
}

#[tokio::test]
async fn a_budget_spent_on_one_replica_refuses_on_another_and_survives_a_restart() {
    let redis = RedisServer::start();
    let mock = mock_with(MockOptions::default()).await;
    let yaml = yaml(&mock, &redis, "fu2:", "deny");
    let mut a = Replica::start(&yaml).await;
    let mut b = Replica::start(&yaml).await;
    spend_budget(&a).await;

    // Replica B has not served this key, yet sees the budget spent and refuses.
    let current = usage_until(&b, "?period=current", |v| {
        v["keys"]["budgeted"]["exhausted"] == true
    })
    .await;
    assert!(current["keys"]["budgeted"]["used_tokens"].as_u64().unwrap() >= 40);
    let requests = &current["keys"]["budgeted"]["models"]["mock-model"]["requests"];
    assert!(requests.as_u64().unwrap() >= 2, "{current}");
    let resp = b.chat("sk-budget", "mock-model", false).await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(code(resp).await, (429, "budget_exceeded".to_owned()));

    // Both processes stopped (SIGTERM: B's refusal, still queued for Redis, goes out before it
    // exits); a new one on the same Redis keeps the budget and the usage.
    a.stop();
    b.stop();
    let c = Replica::start(&yaml).await;
    assert_eq!(
        code(c.chat("sk-budget", "mock-model", false).await).await,
        (429, "budget_exceeded".to_owned())
    );
    let v = usage_until(&c, "", |v| total(v, "budgeted")["rate_limited"] == 3).await;
    let budgeted = total(&v, "budgeted");
    assert!(budgeted["input_tokens"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(
        budgeted["rate_limited"], 3,
        "one refusal on each replica: {v}"
    );
}

#[tokio::test]
async fn with_redis_down_allow_serves_from_local_counts_and_deny_refuses_budgets() {
    let mut redis = RedisServer::start();
    let mock = mock_with(MockOptions::default()).await;
    let allow = Replica::start(&yaml(&mock, &redis, "fu3:", "allow")).await;
    let deny = Replica::start(&yaml(&mock, &redis, "fu3:", "deny")).await;
    assert_eq!(
        allow.chat("sk-budget", "mock-model", false).await.status(),
        200
    );
    assert_eq!(
        deny.chat("sk-plain", "mock-model", false).await.status(),
        200
    );
    usage_until(&allow, "", |v| total(v, "plain")["requests"] == 1).await;
    redis.stop();

    // allow: the budget is checked against this replica's own counts; usage still answers,
    // with this replica's counts (the other replica's request is not among them).
    let t = Instant::now();
    assert_eq!(
        allow.chat("sk-budget", "mock-model", false).await.status(),
        200
    );
    assert!(
        t.elapsed() < Duration::from_millis(200 + 800),
        "{:?}",
        t.elapsed()
    );
    let v = usage_until(&allow, "", |v| total(v, "budgeted")["requests"] == 2).await;
    assert_eq!(total(&v, "budgeted")["requests"], 2, "{v}");
    assert!(v["keys"]["plain"].is_null(), "{v}");
    let (status, current) = admin_usage(&allow, "?period=current").await;
    assert_eq!(status, 200);
    assert!(current["keys"]["budgeted"]["used_tokens"].as_u64().unwrap() > 0);

    // deny: a budgeted key cannot be checked, 503 limits_unavailable within timeout_ms.
    let t = Instant::now();
    assert_eq!(
        code(deny.chat("sk-budget", "mock-model", false).await).await,
        (503, "limits_unavailable".to_owned())
    );
    assert!(
        t.elapsed() < Duration::from_millis(200 + 800),
        "{:?}",
        t.elapsed()
    );
    let (status, v) = admin_usage(&deny, "").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("usage_unavailable"))
    );
}

#[tokio::test]
async fn removing_the_store_on_reload_keeps_the_local_counts() {
    let redis = RedisServer::start();
    let mock = mock_with(MockOptions::default()).await;
    let a = Replica::start(&yaml(&mock, &redis, "fu4:", "deny")).await;
    let b = Replica::start(&yaml(&mock, &redis, "fu4:", "deny")).await;
    assert_eq!(a.chat("sk-plain", "mock-model", false).await.status(), 200);
    assert_eq!(b.chat("sk-plain", "mock-model", false).await.status(), 200);
    usage_until(&b, "", |v| total(v, "plain")["requests"] == 2).await;

    let local = yaml_with_store(&mock, "").replace("{port}", &b.port.to_string());
    std::fs::write(b.config_path(), local).unwrap();
    let resp = client()
        .post(format!("http://127.0.0.1:{}/admin/reload", b.port))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(b.chat("sk-plain", "mock-model", false).await.status(), 200);
    // Time for a write to the store, had B still made one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // B's own two requests (one before the reload), not A's (the store's would be 3).
    let (_, v) = admin_usage(&b, "").await;
    assert_eq!(total(&v, "plain")["requests"], 2, "{v}");
    // A, still on the store, sees only what was written there.
    let (_, v) = admin_usage(&a, "").await;
    assert_eq!(total(&v, "plain")["requests"], 2, "{v}");
}
