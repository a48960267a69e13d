//! The store against a real `redis-server` on a free loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::redis_server::RedisServer;

use super::admission::{Limit, SharedLimits, Verdict};
use super::cooldown::Restable;
use super::*;
use crate::config::store::{OnStoreError, StoreConfig};
use crate::secret::Secret;

fn config(url: &str, prefix: &str) -> StoreConfig {
    StoreConfig {
        url: Secret::new(url),
        prefix: prefix.into(),
        timeout: Duration::from_millis(200),
        on_error: OnStoreError::Allow,
        lease_ttl: Duration::from_millis(1500),
        ca_pem: None,
    }
}

fn store(redis: &RedisServer, prefix: &str) -> Arc<Store> {
    Store::shared(&config(&redis.url(), prefix))
        .unwrap()
        .unwrap()
}

fn limits(
    store: &Arc<Store>,
    rpm: Option<u32>,
    tpm: Option<u64>,
    conc: Option<u32>,
) -> Arc<SharedLimits> {
    Arc::new(SharedLimits::new(store, "alice", rpm, tpm, conc))
}

#[tokio::test]
async fn rpm_admits_the_minute_then_says_when() {
    let redis = RedisServer::start();
    let s = store(&redis, "t1:");
    let l = limits(&s, Some(3), None, None);
    for _ in 0..3 {
        assert!(matches!(
            l.admit(None).await.unwrap(),
            Verdict::Admitted(None)
        ));
    }
    match l.admit(None).await.unwrap() {
        Verdict::Limited { limit, wait } => {
            assert_eq!(limit, Limit::Rpm);
            assert!(
                wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
                "{wait:?}"
            );
        }
        v => panic!("{v:?}"),
    }
    // Every key written starts with the prefix and names the key by its label.
    let keys = redis.command(&["KEYS", "*"]).unwrap();
    assert_eq!(keys.trim(), "t1:rpm:alice");
}

#[tokio::test]
async fn leases_bound_concurrency_and_free_on_drop() {
    let redis = RedisServer::start();
    let s = store(&redis, "t2:");
    let l = limits(&s, None, None, Some(2));
    let Verdict::Admitted(Some(a)) = l.admit(None).await.unwrap() else {
        panic!()
    };
    let Verdict::Admitted(Some(_b)) = l.admit(None).await.unwrap() else {
        panic!()
    };
    assert!(matches!(
        l.admit(None).await.unwrap(),
        Verdict::Limited {
            limit: Limit::Concurrency,
            ..
        }
    ));
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Verdict::Admitted(Some(_)) = l.admit(None).await.unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "released lease was not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn live_leases_are_renewed_past_their_ttl() {
    let redis = RedisServer::start();
    let s = store(&redis, "t3:");
    let l = limits(&s, None, None, Some(1));
    let Verdict::Admitted(Some(_held)) = l.admit(None).await.unwrap() else {
        panic!()
    };
    // Three TTLs later the renewal task has kept the slot taken.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(matches!(
        l.admit(None).await.unwrap(),
        Verdict::Limited {
            limit: Limit::Concurrency,
            ..
        }
    ));
}

#[tokio::test]
async fn tpm_is_charged_after_the_fact() {
    let redis = RedisServer::start();
    let s = store(&redis, "t4:");
    let l = limits(&s, None, Some(60), None);
    assert!(matches!(
        l.admit(None).await.unwrap(),
        Verdict::Admitted(None)
    ));
    l.charge_tokens(90);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match l.admit(None).await.unwrap() {
            Verdict::Limited { limit, wait } => {
                assert_eq!(limit, Limit::Tpm);
                // 30 tokens over the minute's 60, at one token a second.
                assert!(
                    wait > Duration::from_secs(25) && wait <= Duration::from_secs(31),
                    "{wait:?}"
                );
                break;
            }
            Verdict::Admitted(_) => {
                assert!(Instant::now() < deadline, "charge never arrived");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn usage_and_budgets_add_up_across_calls() {
    let redis = RedisServer::start();
    let s = store(&redis, "t5:");
    s.add_usage("alice", "DeepSeek-R1", 1, 10, 20, 0.5)
        .await
        .unwrap();
    s.add_usage("alice", "DeepSeek-R1", 2, 1, 2, 0.25)
        .await
        .unwrap();
    s.add_usage("bob", "gpt:4", 1, 5, 6, 0.0).await.unwrap();
    let rows = s.usage_snapshot().await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (
            rows[0].key.as_str(),
            rows[0].model.as_str(),
            rows[0].requests,
            rows[0].input_tokens,
            rows[0].output_tokens
        ),
        ("alice", "DeepSeek-R1", 3, 11, 22)
    );
    assert!((rows[0].cost - 0.75).abs() < 1e-9);
    assert_eq!(
        (
            rows[1].key.as_str(),
            rows[1].model.as_str(),
            rows[1].requests
        ),
        ("bob", "gpt:4", 1)
    );

    assert_eq!(s.budget_used("alice", "2026-12").await.unwrap().tokens, 0);
    s.add_budget("alice", "2026-12", 100, 1.5).await.unwrap();
    s.add_budget("alice", "2026-12", 50, 0.5).await.unwrap();
    s.add_budget("alice", "2026-11", 7, 0.0).await.unwrap();
    let used = s.budget_used("alice", "2026-12").await.unwrap();
    assert_eq!(used.tokens, 150);
    assert!((used.cost - 2.0).abs() < 1e-9);
    let ttl: i64 = redis
        .command(&["TTL", "t5:budget:alice:2026-12"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 30 * 24 * 3600, "{ttl}");
}

struct Rests(Mutex<Vec<(usize, Duration)>>);

impl Restable for Rests {
    fn key_count(&self) -> usize {
        3
    }
    fn rest_key(&self, index: usize, rest: Duration) {
        self.0.lock().unwrap().push((index, rest));
    }
}

#[tokio::test]
async fn rests_written_by_one_process_reach_the_watched_pools() {
    let redis = RedisServer::start();
    let s = store(&redis, "t6:");
    let rests = Arc::new(Rests(Mutex::new(Vec::new())));
    let pool: Arc<dyn Restable> = rests.clone();
    s.watch_pool("spread", Arc::downgrade(&pool));
    s.share_rest("spread", 1, Duration::from_secs(5));
    // The process's poll task mirrors the rest into the pool on its own.
    assert!(testkit::eventually(2.0, || !rests.0.lock().unwrap().is_empty()).await);
    let keys = redis.command(&["KEYS", "t6:cooldown:*"]).unwrap();
    assert_eq!(keys.trim(), "t6:cooldown:spread:1");
    let seen = rests.0.lock().unwrap().clone();
    assert!(seen.iter().all(|(i, _)| *i == 1), "{seen:?}");
    assert!(seen[0].1 > Duration::from_secs(4) && seen[0].1 <= Duration::from_secs(5));
}

#[tokio::test]
async fn an_unreachable_store_fails_within_its_timeout_and_counts() {
    let port = testkit::free_port();
    let s = store_at(&format!("redis://127.0.0.1:{port}/0"));
    let l = limits(&s, Some(10), None, None);
    let before = store_errors_total();
    let t = Instant::now();
    assert!(l.admit(None).await.is_err());
    assert!(
        t.elapsed() < Duration::from_millis(200 + 150),
        "{:?}",
        t.elapsed()
    );
    assert!(store_errors_total() > before);
}

fn store_at(url: &str) -> Arc<Store> {
    Store::shared(&config(url, "t7:")).unwrap().unwrap()
}

#[tokio::test]
async fn a_batch_writes_every_counter_and_its_period_in_one_call() {
    let redis = RedisServer::start();
    let s = store(&redis, "t8:");
    let one = |model: &str, period: Option<&str>| super::usage::UsageWrite {
        key: "carol".into(),
        model: model.into(),
        requests: 1,
        input_tokens: 10,
        output_tokens: 4,
        errors: 1,
        rate_limited: 2,
        cost: 0.5,
        period_id: period.map(str::to_owned),
    };
    assert_eq!(s.usage_since().await.unwrap(), None);
    s.write_usage(&[
        one("m1", Some("day-1")),
        one("m1", Some("day-1")),
        one("m2", None),
    ])
    .await
    .unwrap();
    let rows = s.usage_snapshot().await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let m1 = &rows[0];
    assert_eq!(
        (
            m1.model.as_str(),
            m1.requests,
            m1.input_tokens,
            m1.output_tokens,
            m1.errors,
            m1.rate_limited
        ),
        ("m1", 2, 20, 8, 2, 4)
    );
    assert!((m1.cost - 1.0).abs() < 1e-9);
    assert!(s.usage_since().await.unwrap().is_some());

    let period = s.period_usage("carol", "day-1").await.unwrap();
    assert_eq!(period.tokens, 28);
    assert!((period.cost - 1.0).abs() < 1e-9);
    assert_eq!(period.models.len(), 1, "only m1 counted in the period");
    assert_eq!(
        (period.models[0].requests, period.models[0].rate_limited),
        (2, 4)
    );
    assert_eq!(s.budget_used("carol", "day-1").await.unwrap().tokens, 28);
    assert_eq!(
        s.period_usage("carol", "day-2").await.unwrap(),
        Default::default()
    );
}

#[tokio::test]
async fn flush_returns_once_every_queued_write_is_in_redis() {
    let redis = RedisServer::start();
    let s = store(&redis, "tflush:");
    for _ in 0..3 {
        s.queue(writer::Write::Usage(usage::UsageWrite {
            key: "carol".into(),
            model: "m".into(),
            requests: 1,
            input_tokens: 7,
            ..Default::default()
        }));
    }
    s.flush(Duration::from_secs(5)).await;
    let rows = s.usage_snapshot().await.unwrap();
    let carol = rows
        .iter()
        .find(|r| r.key == "carol")
        .expect("carol's usage");
    assert_eq!((carol.requests, carol.input_tokens), (3, 21));
}
