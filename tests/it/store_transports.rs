//! The store's other transports against a real `redis-server`: TLS (`rediss://`) verified
//! against the operator's CA (`store.ca_file`, the test CA of tests/fixtures/tls), refused
//! without it, and a Unix socket (`redis+unix://`).

use std::path::PathBuf;

use sophgate::tools::mock::{self, MockOptions};
use testkit::redis_server::RedisServer;

use crate::common::{chat_body, error_code, post_chat, start_gateway, Env};

fn tls_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn tls_redis() -> RedisServer {
    RedisServer::start_tls(
        &tls_file("server.pem"),
        &tls_file("server.key"),
        &tls_file("ca.pem"),
    )
}

/// A gateway whose key `sk-transport` has `rpm: 2` in the store given by `store` (YAML flow
/// map entries).
async fn gateway(store: &str) -> Env {
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         store: {{ {store}, timeout_ms: 2000, on_error: deny }}\n\
         api_keys:\n  \"sk-transport\": {{ name: transport, rpm: 2 }}\n"
    );
    start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await
}

async fn statuses(env: &Env, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let resp = post_chat(env, "sk-transport", chat_body("mock-model", false)).await;
        out.push(resp.status().as_u16());
    }
    out
}

#[tokio::test]
async fn rediss_with_the_operators_ca_keeps_the_limits_in_redis() {
    let redis = tls_redis();
    let env = gateway(&format!(
        "url: \"{}\", prefix: \"tls:\", ca_file: \"{}\"",
        redis.url(),
        tls_file("ca.pem").display()
    ))
    .await;
    assert_eq!(statuses(&env, 3).await, [200, 200, 429]);
    // The bucket is Redis's, reached over TLS.
    let keys = redis.command(&["KEYS", "tls:*"]).unwrap();
    assert_eq!(keys.trim(), "tls:rpm:transport");
}

#[tokio::test]
async fn rediss_without_the_ca_does_not_trust_a_private_certificate() {
    let redis = tls_redis();
    // The web roots do not hold the test CA: the handshake fails, and `deny` refuses.
    let env = gateway(&format!("url: \"{}\", prefix: \"tls-no-ca:\"", redis.url())).await;
    let resp = post_chat(&env, "sk-transport", chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 503).await, "limits_unavailable");
    let keys = redis.command(&["KEYS", "*"]).unwrap();
    assert_eq!(keys.trim(), "", "nothing reached Redis");
}

#[tokio::test]
async fn redis_over_a_unix_socket_keeps_the_limits_in_redis() {
    let dir = std::env::temp_dir().join(format!("sophgate-store-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = RedisServer::start_unix(&dir.join("redis.sock"));
    let env = gateway(&format!("url: \"{}\", prefix: \"unix:\"", redis.url())).await;
    assert_eq!(statuses(&env, 3).await, [200, 200, 429]);
    let keys = redis.command(&["KEYS", "unix:*"]).unwrap();
    assert_eq!(keys.trim(), "unix:rpm:transport");
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
