//! The shared store failing under a serving gateway: `on_error: allow` falls back to the
//! process's own limits (and counts), `deny` answers 503 `limits_unavailable` within
//! `timeout_ms`, and when Redis is back the shared limits resume without a restart.

use std::time::{Duration, Instant};

use sophgate::tools::mock::{self, MockOptions};
use testkit::redis_server::RedisServer;

use crate::common::{chat_body, client, error_code, post_chat, start_gateway, Env};

const ADMIN_KEY: &str = "admin-key-for-store-faults";

async fn gateway(redis: &RedisServer, store: &str, key: &str) -> Env {
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         admin: {{ key: \"{ADMIN_KEY}\" }}\n\
         store: {{ url: \"{}\", {store} }}\napi_keys:\n  \"sk-faults\": {key}\n",
        redis.url()
    );
    start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await
}

async fn status(env: &Env) -> u16 {
    post_chat(env, "sk-faults", chat_body("mock-model", false))
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn allow_serves_with_local_limits_while_redis_is_down_then_shares_again() {
    let mut redis = RedisServer::start();
    let env = gateway(
        &redis,
        "prefix: \"faults-allow:\", timeout_ms: 100, on_error: allow",
        "{ name: faulty, rpm: 3 }",
    )
    .await;
    for _ in 0..3 {
        assert_eq!(status(&env).await, 200);
    }
    assert_eq!(status(&env).await, 429, "the shared bucket is spent");

    redis.stop();
    let errors_before = sophgate::store::store_errors_total();
    // The process's own bucket (3 a minute) takes over: requests keep flowing, none waits on
    // the store for longer than its timeout.
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(status(&env).await, 200);
        assert!(
            t.elapsed() < Duration::from_millis(100 + 450),
            "{:?}",
            t.elapsed()
        );
    }
    assert_eq!(
        status(&env).await,
        429,
        "local limits hold while the store is down"
    );
    assert!(sophgate::store::store_errors_total() >= errors_before + 4);
    let admin: serde_json::Value = client()
        .get(env.url("/admin/status"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin["store"]["prefix"], "faults-allow:");
    assert_eq!(admin["store"]["on_error"], "allow");
    assert!(admin["store"]["errors_total"].as_u64().unwrap() >= errors_before + 4);

    // Redis back (empty, as after a crash): the shared bucket serves again, no restart.
    redis.restart();
    let back = Instant::now();
    loop {
        if status(&env).await == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "shared limits never resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = redis.command(&["KEYS", "*"]).unwrap();
    assert_eq!(keys.trim(), "faults-allow:rpm:faulty");
    assert_eq!(status(&env).await, 200);
    assert_eq!(status(&env).await, 200);
    assert_eq!(status(&env).await, 429);
}

#[tokio::test]
async fn deny_answers_503_within_the_timeout_and_recovers() {
    let mut redis = RedisServer::start();
    let env = gateway(
        &redis,
        "prefix: \"faults-deny:\", timeout_ms: 50, on_error: deny",
        "{ name: strict, rpm: 1000, max_concurrent: 10 }",
    )
    .await;
    assert_eq!(status(&env).await, 200);

    // A frozen Redis answers nothing: the request waits timeout_ms, then 503.
    redis.pause();
    for _ in 0..3 {
        let t = Instant::now();
        let resp = post_chat(&env, "sk-faults", chat_body("mock-model", false)).await;
        let took = t.elapsed();
        assert_eq!(error_code(resp, 503).await, "limits_unavailable");
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(50 + 450), "{took:?}");
    }
    redis.resume();
    let back = Instant::now();
    while status(&env).await != 200 {
        assert!(back.elapsed() < Duration::from_secs(10), "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A stopped Redis (connection refused) is refused as fast.
    redis.stop();
    let t = Instant::now();
    let resp = post_chat(&env, "sk-faults", chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 503).await, "limits_unavailable");
    assert!(t.elapsed() < Duration::from_millis(50 + 450));
    redis.restart();
    let back = Instant::now();
    while status(&env).await != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "never recovered after a restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
