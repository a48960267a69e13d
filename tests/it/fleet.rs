//! Several gateway processes sharing one real `redis-server` (`store:`): one set of limits for
//! the fleet. Real processes (the built binary), the mock upstream in this process.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sophgate::tools::mock::{self, MockHandle, MockOptions, TokenCheck};
use testkit::redis_server::RedisServer;

use crate::common::{chat_body, client, free_port, wait_for_listener};

/// One gateway process; killed (SIGKILL) when dropped.
pub(crate) struct Replica {
    pub(crate) port: u16,
    child: Child,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Replica {
    pub(crate) async fn start(yaml: &str) -> Replica {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("sophgate-fleet-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.yml");
        std::fs::write(&cfg, yaml.replace("{port}", &port.to_string())).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sophgate"))
            .args(["serve", "-c", cfg.to_str().unwrap()])
            .env_remove("SOPHGATE_LOG")
            .spawn()
            .unwrap();
        wait_for_listener(port).await;
        Replica {
            port,
            child,
            _dir: TempDir(dir),
        }
    }

    /// The config file the process was started with (rewrite it, then reload).
    pub(crate) fn config_path(&self) -> PathBuf {
        self._dir.0.join("config.yml")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/chat/completions", self.port)
    }

    pub(crate) async fn chat(&self, key: &str, model: &str, stream: bool) -> reqwest::Response {
        client()
            .post(self.url())
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(chat_body(model, stream))
            .send()
            .await
            .unwrap()
    }

    /// SIGTERM and wait: a graceful stop, which sends what the replica queued for the store.
    pub(crate) fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(
            self.child.wait().unwrap().success(),
            "clean exit on SIGTERM"
        );
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no chance to release anything
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn fleet_yaml(mock: &MockHandle, redis: &RedisServer, extra: &str) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\napi_host: \"http://{}\"\nforward_chat_path: /v1/chat/completions\n\
         log_level: WARNING\n\
         store: {{ url: \"{}\", prefix: \"fleet:\", timeout_ms: 1000, on_error: deny, lease_ttl_ms: 3000 }}\n{extra}\n",
        mock.addr,
        redis.url()
    )
}

pub(crate) async fn mock_with(opts: MockOptions) -> MockHandle {
    mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

#[tokio::test]
async fn three_replicas_admit_one_rpm_between_them() {
    let redis = RedisServer::start();
    let mock = mock_with(MockOptions::default()).await;
    let yaml = fleet_yaml(
        &mock,
        &redis,
        "api_keys:\n  \"sk-fleet\": { name: fleet, rpm: 30 }\n",
    );
    let replicas = [
        Replica::start(&yaml).await,
        Replica::start(&yaml).await,
        Replica::start(&yaml).await,
    ];
    let started = Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    for i in 0..300 {
        let resp = replicas[i % 3].chat("sk-fleet", "mock-model", false).await;
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(resp.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("request {i}: status {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // GCRA: the minute's 30 at once, then one more every 2 s (README: rpm + rpm * t / 60).
    let bound = 30 + (30.0 * elapsed / 60.0).ceil() as u32;
    assert!(
        (30..=bound).contains(&ok),
        "{ok} admitted in {elapsed:.1} s (bound {bound}), {limited} limited"
    );
    assert_eq!(ok + limited, 300);
    // Without the store each replica would have admitted its own 30.
    assert!(ok < 60);
}

#[tokio::test]
async fn a_killed_replicas_leases_expire_and_another_replica_admits() {
    let redis = RedisServer::start();
    // Streams that last a minute: 300 tokens, 200 ms apart.
    let mock = mock_with(MockOptions {
        itl: Duration::from_millis(200),
        tokens: 300,
        ..MockOptions::default()
    })
    .await;
    let yaml = fleet_yaml(
        &mock,
        &redis,
        "api_keys:\n  \"sk-conc\": { name: conc, max_concurrent: 2 }\n",
    );
    let mut a = Replica::start(&yaml).await;
    let b = Replica::start(&yaml).await;
    let s1 = a.chat("sk-conc", "mock-model", true).await;
    let s2 = a.chat("sk-conc", "mock-model", true).await;
    assert_eq!((s1.status().as_u16(), s2.status().as_u16()), (200, 200));
    // The two slots are the fleet's: replica B refuses a third stream.
    let third = b.chat("sk-conc", "mock-model", true).await;
    assert_eq!(third.status(), 429);
    drop(third);

    a.kill();
    let killed = Instant::now();
    drop((s1, s2));
    // Within the lease TTL (3 s) plus a margin, B admits two new streams.
    let mut held = Vec::new();
    while held.len() < 2 {
        assert!(
            killed.elapsed() < Duration::from_millis(3000 + 2000),
            "the killed replica's slots were not freed within the lease TTL"
        );
        let resp = b.chat("sk-conc", "mock-model", true).await;
        match resp.status().as_u16() {
            200 => held.push(resp),
            429 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("status {other}"),
        }
    }
    // And no more than two: B's own leases are renewed past the TTL.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(b.chat("sk-conc", "mock-model", true).await.status(), 429);
}

#[tokio::test]
async fn a_pool_key_resting_on_one_replica_rests_on_the_others() {
    let redis = RedisServer::start();
    let bad_tries = Arc::new(AtomicU64::new(0));
    let count = bad_tries.clone();
    let mock = mock_with(MockOptions {
        token_check: Some(TokenCheck(Arc::new(move |t| {
            if t == "key-bad" {
                count.fetch_add(1, Ordering::SeqCst);
            }
            t == "key-good"
        }))),
        ..MockOptions::default()
    })
    .await;
    let yaml = fleet_yaml(
        &mock,
        &redis,
        "credentials:\n  spread: { type: pool, keys: [key-bad, key-good], strategy: round_robin, cooldown: 30 }\n\
         api_keys:\n  \"sk-pool\": { name: pool-user, credential: spread }\n",
    );
    let a = Replica::start(&yaml).await;
    let b = Replica::start(&yaml).await;
    // A tries key-bad first (401: it rests), then key-good.
    assert_eq!(a.chat("sk-pool", "mock-model", false).await.status(), 200);
    assert_eq!(bad_tries.load(Ordering::SeqCst), 1);
    // B learns of the rest within its poll (200 ms) and never tries key-bad.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for _ in 0..4 {
        assert_eq!(b.chat("sk-pool", "mock-model", false).await.status(), 200);
    }
    assert_eq!(
        bad_tries.load(Ordering::SeqCst),
        1,
        "replica B used a key replica A had rested"
    );
    // Key names in the store say which credential and key index, never the key.
    let keys = redis.command(&["KEYS", "*"]).unwrap();
    assert!(keys.contains("fleet:cooldown:spread:0"), "{keys}");
    assert!(!keys.contains("key-bad"), "{keys}");
}

/// Concurrent bursts on two replicas: each replica sends the admissions that queue behind one
/// in flight as one batch call (`store::admit_queue`), and the fleet still admits exactly what
/// the key's limits allow: six streams for `max_concurrent: 6`, the minute's 20 for `rpm: 20`.
#[tokio::test]
async fn concurrent_bursts_on_two_replicas_keep_the_limits_exact() {
    let redis = RedisServer::start();
    // Streams that stay open ~5 s, so the admitted ones hold their leases while the rest
    // arrive, on a slow machine too (the test drops them as soon as it has counted).
    let mock = mock_with(MockOptions {
        itl: Duration::from_millis(100),
        tokens: 50,
        ..MockOptions::default()
    })
    .await;
    let yaml = fleet_yaml(
        &mock,
        &redis,
        "api_keys:\n  \"sk-burst\": { name: burst, rpm: 1000, max_concurrent: 6 }\n  \
         \"sk-minute\": { name: minute, rpm: 20 }\n",
    );
    let replicas = [Replica::start(&yaml).await, Replica::start(&yaml).await];

    let streams = futures_util::future::join_all(
        (0..60).map(|i| replicas[i % 2].chat("sk-burst", "mock-model", true)),
    )
    .await;
    let statuses: Vec<u16> = streams.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        54,
        "{statuses:?}"
    );
    let held = redis.command(&["ZCARD", "fleet:leases:burst"]).unwrap();
    assert_eq!(held.trim(), "6");
    drop(streams);

    let started = Instant::now();
    let answers = futures_util::future::join_all(
        (0..80).map(|i| replicas[i % 2].chat("sk-minute", "mock-model", false)),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let ok = answers.iter().filter(|r| r.status() == 200).count() as u32;
    let limited = answers.iter().filter(|r| r.status() == 429).count() as u32;
    // GCRA: the minute's 20 at once, then one more every 3 s.
    let bound = 20 + (20.0 * elapsed / 60.0).ceil() as u32;
    assert!(
        (20..=bound).contains(&ok),
        "{ok} admitted in {elapsed:.1} s (bound {bound}), {limited} limited"
    );
    assert_eq!(ok + limited, 80);
}
