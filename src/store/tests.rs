//! The store against a real `redis-server` on a free loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::redis_server::RedisServer;

use super::admission::{self, Limit, SharedLimits, Verdict};
use super::admit_script;
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
async fn a_released_lease_goes_with_the_keys_next_admission() {
    // max_concurrent 1, requests one after another with no pause: each admission removes the
    // lease the one before released (the writer would send it only after its linger), so none
    // is refused.
    let redis = RedisServer::start();
    let s = store(&redis, "trel:");
    let l = limits(&s, None, None, Some(1));
    for i in 0..50 {
        match l.admit(None).await.unwrap() {
            Verdict::Admitted(Some(lease)) => drop(lease),
            v => panic!("request {i}: {v:?}"),
        }
    }
    // The last release, which no admission took, the writer sends after its linger.
    let deadline = Instant::now() + Duration::from_secs(2);
    while redis
        .command(&["ZCARD", "trel:leases:alice"])
        .unwrap()
        .trim()
        != "0"
    {
        assert!(Instant::now() < deadline, "the last release was never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_renewal_does_not_bring_back_a_released_lease() {
    let redis = RedisServer::start();
    let s = store(&redis, "tren:");
    let l = limits(&s, None, None, Some(1));
    let Verdict::Admitted(Some(_held)) = l.admit(None).await.unwrap() else {
        panic!()
    };
    // A lease of this process that an admission (of any replica) already removed: the
    // renewal, which may reach Redis after that, updates only leases still in the set.
    let members = redis
        .command(&["ZRANGE", "tren:leases:alice", "0", "-1"])
        .unwrap();
    let member = members.trim().to_owned();
    redis
        .command(&["ZREM", "tren:leases:alice", &member])
        .unwrap();
    super::admission::renew(&s).await;
    assert_eq!(
        redis
            .command(&["ZCARD", "tren:leases:alice"])
            .unwrap()
            .trim(),
        "0"
    );
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
    let port = testkit::refused_port();
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
        queue_use(&s, "carol", 7);
    }
    s.flush(Duration::from_secs(5)).await;
    let rows = s.usage_snapshot().await.unwrap();
    let carol = rows
        .iter()
        .find(|r| r.key == "carol")
        .expect("carol's usage");
    assert_eq!((carol.requests, carol.input_tokens), (3, 21));
}

/// Redis's clock in µs, as the admission script reads it.
fn redis_now_us(redis: &RedisServer) -> u64 {
    let time = redis.command(&["TIME"]).unwrap();
    let mut parts = time.lines().map(|l| l.trim().parse::<u64>().unwrap());
    let (secs, micros) = (parts.next().unwrap(), parts.next().unwrap());
    secs * 1_000_000 + micros
}

/// A stored GCRA time (`%d.%03d` milliseconds) in µs, checking its text on the way.
fn stored_us(text: &str) -> u64 {
    let (ms, frac) = text.trim().split_once('.').expect("ms.µs");
    assert_eq!(frac.len(), 3, "{text}");
    assert!(ms.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()));
    ms.parse::<u64>().unwrap() * 1000 + frac.parse::<u64>().unwrap()
}

#[test]
fn a_script_takes_only_the_keys_and_arguments_its_limits_need() {
    let shape = |rpm: bool, tpm: bool, conc: u32, budget: bool| admit_script::Shape {
        rpm_interval: rpm.then(|| (60_000_000.0 / 7.0f64).to_string()),
        tpm,
        max_concurrent: conc,
        lease_ttl_ms: 1500,
        budget,
    };
    // rpm + max_concurrent: two keys (leases, rpm) and one argument (the lease), the constants
    // in the text and nothing parsed from text but what Redis stores.
    let text = shape(true, false, 4, false).text();
    let interval = format!("tat + {})", 60_000_000.0 / 7.0f64);
    for (needle, present) in [
        ("KEYS[2]", true),
        ("KEYS[3]", false),
        ("ARGV[1]", true),
        ("ARGV[2]", false),
        ("tonumber", false),
        (interval.as_str(), true),
        (">= 4 then", true),
        ("+ 1500)", true),
        ("'61000'", true),
        ("TIME", true),
    ] {
        assert_eq!(text.contains(needle), present, "{needle} in\n{text}");
    }
    // Everything: four keys, three arguments.
    let text = shape(true, true, 4, true).text();
    assert!(
        text.contains("KEYS[4]") && text.contains("ARGV[3]"),
        "{text}"
    );
    // A budget alone needs no clock.
    let text = shape(false, false, 0, true).text();
    assert!(!text.contains("TIME") && text.contains("KEYS[1]"), "{text}");
    // Keys of one shape share its script; another shape has its own.
    let a = admit_script::variant(&shape(true, false, 4, false));
    let b = admit_script::variant(&shape(true, false, 4, false));
    let c = admit_script::variant(&shape(true, false, 5, false));
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &c));
}

/// Every combination of rpm, tpm, max_concurrent and a budget: admitted when nothing binds,
/// and when several limits bind the first in the script's order answers (budget, tpm,
/// max_concurrent, rpm), each with its wait, and a refusal takes nothing.
#[tokio::test]
async fn every_shape_of_limits_admits_and_refuses_in_order() {
    let redis = RedisServer::start();
    let s = store(&redis, "shape:");
    for i in 1..16u32 {
        let (rpm, tpm, conc, budget) = (i & 1 != 0, i & 2 != 0, i & 4 != 0, i & 8 != 0);
        let label = format!("k{i}");
        let l = SharedLimits::new(
            &s,
            &label,
            rpm.then_some(2),
            tpm.then_some(60),
            conc.then_some(2),
        );
        let hash = s.budget_key(&label, "p");
        let check = || {
            budget.then_some(admission::BudgetCheck {
                hash: &hash,
                field: "tokens",
                limit: 50.0,
            })
        };
        let (rpm_key, tpm_key, lease_key) = (
            format!("shape:rpm:{label}"),
            format!("shape:tpm:{label}"),
            format!("shape:leases:{label}"),
        );
        // Nothing binds: admitted, with a lease exactly when the key has max_concurrent.
        let first = l.admit(check()).await.unwrap();
        match &first {
            Verdict::Admitted(lease) => assert_eq!(lease.is_some(), conc, "shape {i}"),
            v => panic!("shape {i}: {v:?}"),
        }
        assert_eq!(
            redis.command(&["EXISTS", &rpm_key]).unwrap().trim(),
            if rpm { "1" } else { "0" },
            "shape {i}"
        );
        assert_eq!(
            redis.command(&["ZCARD", &lease_key]).unwrap().trim(),
            if conc { "1" } else { "0" },
            "shape {i}"
        );
        // Make every limit of the shape bind.
        // 30 s over: tpm's 90 s of spend ahead, rpm's 60 s plus its next 30 s slot.
        let now_ms = redis_now_us(&redis) / 1000;
        let tpm_ahead = format!("{}.000", now_ms + 90_000);
        let rpm_ahead = format!("{}.000", now_ms + 60_000);
        let mut held = 1;
        if budget {
            redis.command(&["HSET", &hash, "tokens", "50"]).unwrap();
        }
        if tpm {
            redis
                .command(&["SET", &tpm_key, &tpm_ahead, "PX", "100000"])
                .unwrap();
        }
        if conc {
            redis
                .command(&["ZADD", &lease_key, "1e15", "other"])
                .unwrap();
            held = 2;
        }
        if rpm {
            redis
                .command(&["SET", &rpm_key, &rpm_ahead, "PX", "100000"])
                .unwrap();
        }
        let about_30s =
            |wait: Duration| wait > Duration::from_secs(25) && wait <= Duration::from_secs(31);
        for (on, limit) in [
            (budget, Limit::Budget),
            (tpm, Limit::Tpm),
            (conc, Limit::Concurrency),
            (rpm, Limit::Rpm),
        ] {
            if !on {
                continue;
            }
            match l.admit(check()).await.unwrap() {
                Verdict::Limited { limit: got, wait } => {
                    assert_eq!(got, limit, "shape {i}");
                    match limit {
                        Limit::Budget => assert_eq!(wait, Duration::ZERO),
                        Limit::Concurrency => assert_eq!(wait, Duration::from_secs(1)),
                        Limit::Tpm | Limit::Rpm => assert!(about_30s(wait), "{wait:?}"),
                    }
                }
                v => panic!("shape {i}, {limit:?}: {v:?}"),
            }
            // A refusal took no lease and no rpm slot.
            if conc {
                let card = redis.command(&["ZCARD", &lease_key]).unwrap();
                assert_eq!(card.trim(), held.to_string(), "shape {i}");
            }
            if rpm {
                let tat = redis.command(&["GET", &rpm_key]).unwrap();
                assert_eq!(tat.trim(), rpm_ahead, "shape {i}");
            }
            // Lift this limit; the next one answers.
            let lifted = match limit {
                Limit::Budget => redis.command(&["HSET", &hash, "tokens", "0"]),
                Limit::Tpm => redis.command(&["DEL", &tpm_key]),
                Limit::Concurrency => {
                    held = 1;
                    redis.command(&["ZREM", &lease_key, "other"])
                }
                Limit::Rpm => redis.command(&["DEL", &rpm_key]),
            };
            assert!(lifted.is_some());
        }
        assert!(
            matches!(l.admit(check()).await.unwrap(), Verdict::Admitted(_)),
            "shape {i}"
        );
    }
}

/// The numbers the script writes are exact: the rpm interval written into its text (rpm 7:
/// 8571428.57142857 µs, as Rust prints that f64) adds up as the generic script's parsed argument did, and a lease
/// score beyond 2^32 ms (a very long lease TTL) is the integer Redis's clock gives, not a
/// float's rounding.
#[tokio::test]
async fn numbers_reach_redis_exactly() {
    let redis = RedisServer::start();
    let mut cfg = config(&redis.url(), "exact:");
    cfg.lease_ttl = Duration::from_millis(3_000_000_000_000);
    let s = Store::shared(&cfg).unwrap().unwrap();
    let l = SharedLimits::new(&s, "x", Some(7), None, Some(3));
    let interval = 60_000_000.0 / 7.0f64;
    let before = redis_now_us(&redis);
    let Verdict::Admitted(Some(_first)) = l.admit(None).await.unwrap() else {
        panic!()
    };
    let after = redis_now_us(&redis);
    let tat1 = stored_us(&redis.command(&["GET", "exact:rpm:x"]).unwrap());
    // From an empty key: the call's clock plus one interval, rounded up to the µs.
    assert!(tat1 >= (before as f64 + interval).ceil() as u64, "{tat1}");
    assert!(tat1 <= (after as f64 + interval).ceil() as u64, "{tat1}");
    let pttl: u64 = redis
        .command(&["PTTL", "exact:rpm:x"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 59_000 && pttl <= 61_000, "{pttl}");
    let scores = redis
        .command(&["ZRANGE", "exact:leases:x", "0", "-1", "WITHSCORES"])
        .unwrap();
    let score = scores.lines().nth(1).unwrap().trim();
    let score: u64 = score.parse().expect("an integer score");
    assert!(score > u64::from(u32::MAX));
    assert!(score >= before / 1000 + 3_000_000_000_000, "{score}");
    assert!(score <= after / 1000 + 3_000_000_000_000, "{score}");
    // Its time is ahead of the clock now: the next slot is exactly one interval later.
    let Verdict::Admitted(Some(_second)) = l.admit(None).await.unwrap() else {
        panic!()
    };
    let tat2 = stored_us(&redis.command(&["GET", "exact:rpm:x"]).unwrap());
    assert_eq!(tat2, (tat1 as f64 + interval).ceil() as u64);
}

/// Keys of the same limits load one script into Redis between them.
#[tokio::test]
async fn keys_of_one_shape_share_one_script_in_redis() {
    let redis = RedisServer::start();
    let s = store(&redis, "shared:");
    for label in ["a", "b", "c"] {
        let l = limits_labelled(&s, label, Some(1000), Some(100_000));
        assert!(matches!(
            l.admit(None).await.unwrap(),
            Verdict::Admitted(None)
        ));
    }
    let other = limits_labelled(&s, "d", Some(999), Some(100_000));
    assert!(matches!(
        other.admit(None).await.unwrap(),
        Verdict::Admitted(None)
    ));
    let info = redis.command(&["INFO", "memory"]).unwrap();
    let cached = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("number_of_cached_scripts:"))
        .unwrap();
    assert_eq!(cached, "2", "{info}");
}

fn limits_labelled(
    s: &Arc<Store>,
    label: &str,
    rpm: Option<u32>,
    tpm: Option<u64>,
) -> SharedLimits {
    SharedLimits::new(s, label, rpm, tpm, None)
}

/// Calls of `EVALSHA` Redis has answered since its last `CONFIG RESETSTAT`.
fn evalsha_calls(redis: &RedisServer) -> u64 {
    let stats = redis.command(&["INFO", "commandstats"]).unwrap();
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Admissions of one key that arrive while one is in flight go to Redis as one batch, and
/// the batch decides as single admissions in their order would: for every shape of limits
/// (rpm 2, tpm 60, max_concurrent 2), six at once admit the first ones the limits allow and
/// refuse the rest with the limit the single script checks first.
#[tokio::test]
async fn concurrent_admissions_go_as_one_batch_and_decide_as_single_ones() {
    let redis = RedisServer::start();
    let s = store(&redis, "batch:");
    for i in 1..8u32 {
        let (rpm, tpm, conc) = (i & 1 != 0, i & 2 != 0, i & 4 != 0);
        let limits = |label: &str| {
            SharedLimits::new(
                &s,
                label,
                rpm.then_some(2),
                tpm.then_some(60),
                conc.then_some(2),
            )
        };
        // Another key of the same shape loads both scripts into Redis first, so the calls
        // counted below are the admissions' own (no NOSCRIPT retries).
        let warm = limits(&format!("w{i}"));
        drop(futures_util::future::join_all((0..3).map(|_| warm.admit(None))).await);
        let l = limits(&format!("k{i}"));
        redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
        let verdicts = futures_util::future::join_all((0..6).map(|_| l.admit(None))).await;
        assert_eq!(
            evalsha_calls(&redis),
            2,
            "shape {i}: the first alone, the five that queued behind it as one batch"
        );
        let allowed = if rpm || conc { 2 } else { 6 };
        for (j, v) in verdicts.iter().enumerate() {
            match v {
                Ok(Verdict::Admitted(lease)) => {
                    assert!(j < allowed, "shape {i}: request {j} admitted");
                    assert_eq!(lease.is_some(), conc, "shape {i}");
                }
                Ok(Verdict::Limited { limit, wait }) => {
                    assert!(j >= allowed, "shape {i}: request {j} refused");
                    let first = if conc { Limit::Concurrency } else { Limit::Rpm };
                    assert_eq!(*limit, first, "shape {i}");
                    assert!(*wait > Duration::ZERO);
                }
                Err(e) => panic!("shape {i}: {e}"),
            }
        }
        if conc {
            let held = redis
                .command(&["ZCARD", &format!("batch:leases:k{i}")])
                .unwrap();
            assert_eq!(held.trim(), "2", "shape {i}");
        }
    }
}

/// A batch steps the rpm key's time once per admitted request, exactly as that many single
/// admissions: one alone, then three at once (one alone and a batch of two) leave it four
/// intervals on, each rounded up to the µs as the single script rounds it.
#[tokio::test]
async fn a_batch_steps_the_rpm_time_as_single_admissions_do() {
    let redis = RedisServer::start();
    let s = store(&redis, "steps:");
    let l = SharedLimits::new(&s, "x", Some(7), None, None);
    let interval = 60_000_000.0 / 7.0f64;
    assert!(matches!(
        l.admit(None).await.unwrap(),
        Verdict::Admitted(None)
    ));
    let tat1 = stored_us(&redis.command(&["GET", "steps:rpm:x"]).unwrap());
    let verdicts = futures_util::future::join_all((0..3).map(|_| l.admit(None))).await;
    assert!(verdicts
        .iter()
        .all(|v| matches!(v, Ok(Verdict::Admitted(None)))));
    let mut expected = tat1 as f64;
    for _ in 0..3 {
        expected = (expected + interval).ceil();
    }
    let tat4 = stored_us(&redis.command(&["GET", "steps:rpm:x"]).unwrap());
    assert_eq!(tat4, expected as u64);
}

/// A request queued behind a call that gets no answer waits `timeout_ms` from the moment it
/// queued, not that call's time plus its own; once Redis answers again the key admits again.
#[tokio::test]
async fn queued_admissions_wait_no_longer_than_timeout_ms() {
    let redis = RedisServer::start();
    let s = store(&redis, "paused:");
    let l = SharedLimits::new(&s, "x", Some(1000), None, Some(10));
    assert!(matches!(
        l.admit(None).await.unwrap(),
        Verdict::Admitted(Some(_))
    ));
    redis.pause();
    let started = Instant::now();
    let verdicts = futures_util::future::join_all((0..5).map(|_| async {
        let v = l.admit(None).await;
        (v, started.elapsed())
    }))
    .await;
    redis.resume();
    for (v, took) in &verdicts {
        assert!(matches!(v, Err(StoreError::Timeout)), "{v:?}");
        // timeout_ms is 200 ms here; the margin is for a loaded machine.
        assert!(*took < Duration::from_millis(450), "{took:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Verdict::Admitted(Some(_))) = l.admit(None).await {
            break;
        }
        assert!(Instant::now() < deadline, "the key never admitted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An admission that ran out of time may still be run by Redis once it answers again: the
/// lease it added for a request that was told it failed goes back as a release, so it does not
/// hold the key's slot until the lease TTL (1.5 s here). Single calls and batches alike.
#[tokio::test]
async fn a_timed_out_admission_gives_its_lease_back() {
    let redis = RedisServer::start();
    let s = store(&redis, "tlate:");
    // Connected, and the scripts in Redis's cache: the calls below reach Redis as EVALSHA.
    for conc in [1, 2] {
        let warm = SharedLimits::new(&s, "warm", None, None, Some(conc));
        let _ = warm.admit(None).await.unwrap();
        let queued = futures_util::future::join_all((0..3).map(|_| warm.admit(None))).await;
        assert!(queued.iter().all(Result::is_ok), "{queued:?}");
    }

    let single = limits(&s, None, None, Some(1));
    redis.pause();
    assert!(matches!(single.admit(None).await, Err(StoreError::Timeout)));
    redis.resume();
    // Redis runs the late admission (its lease fills the set), then this one.
    match single.admit(None).await.unwrap() {
        Verdict::Admitted(Some(_)) => {}
        v => panic!("the late lease held the slot: {v:?}"),
    }
    // Nor does a request that went away while its admission was in flight (a client that
    // hung up).
    redis.pause();
    let gone = tokio::time::timeout(Duration::from_millis(20), single.admit(None)).await;
    assert!(gone.is_err(), "{gone:?}");
    redis.resume();
    match single.admit(None).await.unwrap() {
        Verdict::Admitted(Some(_)) => {}
        v => panic!("the lease of the request that went away held the slot: {v:?}"),
    }

    // One call alone and a batch of three behind it, both out of time; Redis admits two.
    let batched = SharedLimits::new(&s, "bob", None, None, Some(2));
    redis.pause();
    let verdicts = futures_util::future::join_all((0..4).map(|_| batched.admit(None))).await;
    assert!(
        verdicts
            .iter()
            .all(|v| matches!(v, Err(StoreError::Timeout))),
        "{verdicts:?}"
    );
    // The batch is sent when the call alone ends, and runs out of time 200 ms later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.resume();
    let mut held = Vec::new();
    for i in 0..2 {
        match batched.admit(None).await.unwrap() {
            Verdict::Admitted(Some(lease)) => held.push(lease),
            v => panic!("admission {i}: the late leases held the slots: {v:?}"),
        }
    }
}

/// Queues one request's use of model `m` by `key` for the writer.
fn queue_use(s: &Store, key: &str, input_tokens: u64) {
    s.queue(writer::Write::Usage(usage::UsageWrite {
        key: key.into(),
        model: "m".into(),
        requests: 1,
        input_tokens,
        ..Default::default()
    }));
}

fn dave_uses(s: &Store) {
    queue_use(s, "dave", 5);
}

async fn dave_requests(s: &Store) -> u64 {
    let rows = s.usage_snapshot().await.unwrap();
    rows.iter()
        .find(|r| r.key == "dave")
        .map_or(0, |r| r.requests)
}

/// Waits until `ping` answers as `wanted` says (the client reconnects at its own pace).
async fn ping_until(s: &Store, wanted: impl Fn(&Result<(), StoreError>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = s.ping().await;
        if wanted(&answer) {
            return;
        }
        assert!(Instant::now() < deadline, "ping still answers {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn usage_redis_refused_is_sent_once_redis_is_back() {
    let mut redis = RedisServer::start();
    let cfg = StoreConfig {
        lease_ttl: Duration::from_secs(30),
        ..config(&redis.url(), "treplay:")
    };
    let s = Store::shared(&cfg).unwrap().unwrap();
    s.ping().await.unwrap();
    redis.stop();
    // Until the client knows the connection is gone, a write may still have gone out.
    ping_until(&s, |a| *a == Err(StoreError::Refused)).await;
    let errors = store_errors_total();
    for _ in 0..3 {
        dave_uses(&s);
        s.flush(Duration::from_secs(5)).await;
    }
    assert!(store_errors_total() > errors, "the refused batches count");
    redis.restart();
    ping_until(&s, Result::is_ok).await;
    dave_uses(&s);
    s.flush(Duration::from_secs(5)).await;
    // The three kept uses went with the fourth, once: nothing lost, nothing twice.
    assert_eq!(dave_requests(&s).await, 4);
    dave_uses(&s);
    s.flush(Duration::from_secs(5)).await;
    assert_eq!(dave_requests(&s).await, 5);
}

#[tokio::test]
async fn a_batch_that_may_have_been_applied_counts_once() {
    let redis = RedisServer::start();
    let cfg = StoreConfig {
        lease_ttl: Duration::from_secs(30),
        ..config(&redis.url(), "tpaused:")
    };
    let s = Store::shared(&cfg).unwrap().unwrap();
    dave_uses(&s);
    s.flush(Duration::from_secs(5)).await;
    assert_eq!(dave_requests(&s).await, 1);
    // Paused, Redis reads the batch later and applies it: the writer, out of time, sends it
    // again with the next batch, and Redis skips it there.
    redis.pause();
    dave_uses(&s);
    s.flush(Duration::from_secs(5)).await;
    redis.resume();
    ping_until(&s, Result::is_ok).await;
    dave_uses(&s);
    s.flush(Duration::from_secs(5)).await;
    assert_eq!(dave_requests(&s).await, 3);
    assert_eq!(
        redis
            .command(&["KEYS", "tpaused:usage-applied:*"])
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        1,
        "one sequence marker per replica"
    );
}

/// A batch whose connection was lost before Redis ran it (Redis holds writes during `CLIENT
/// PAUSE WRITE`, and `CLIENT KILL` drops them with the connection) is sent again once the
/// client has reconnected: nothing lost.
#[tokio::test]
async fn a_batch_lost_with_its_connection_is_sent_again() {
    let redis = RedisServer::start();
    let cfg = StoreConfig {
        lease_ttl: Duration::from_secs(30),
        ..config(&redis.url(), "tlost:")
    };
    let s = Store::shared(&cfg).unwrap().unwrap();
    dave_uses(&s);
    s.flush(Duration::from_secs(5)).await;
    assert_eq!(dave_requests(&s).await, 1);
    redis
        .command(&["CLIENT", "PAUSE", "10000", "WRITE"])
        .unwrap();
    dave_uses(&s);
    let cut = async {
        // The batch is in Redis's hands (held by the pause) when its connection goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = redis
            .command(&["CLIENT", "KILL", "TYPE", "normal"])
            .unwrap();
        redis.command(&["CLIENT", "UNPAUSE"]).unwrap();
        killed
    };
    let ((), killed) = tokio::join!(s.flush(Duration::from_secs(5)), cut);
    assert_eq!(killed.trim(), "1", "the store's one connection");
    ping_until(&s, Result::is_ok).await;
    assert_eq!(
        dave_requests(&s).await,
        1,
        "the batch died with its connection"
    );
    assert_eq!(s.status()["usage_unsent"], 1, "kept for the next batch");
    dave_uses(&s);
    s.flush(Duration::from_secs(5)).await;
    assert_eq!(dave_requests(&s).await, 3);
    assert_eq!(s.status()["usage_unsent"], 0);
}

#[tokio::test]
async fn writes_beyond_the_full_queue_reach_redis_with_a_later_batch() {
    // Writes queued faster than the writer sends them (here all at once, the writer cannot run
    // meanwhile) overflow its queue: lease releases and usage wait beside it, none is lost.
    let redis = RedisServer::start();
    let s = store(&redis, "tfull:");
    let n = writer::QUEUE + 2_000;
    for _ in 0..n {
        dave_uses(&s);
    }
    // The queue is full: each lease set's word to the writer waits beside it.
    let sets: Vec<Arc<admission::Releases>> = (0..2_000)
        .map(|i| Arc::new(admission::Releases::new(format!("tfull:leases:{i}").into())))
        .collect();
    for (i, r) in sets.iter().enumerate() {
        let member = format!("m{i}");
        redis.command(&["ZADD", &r.set, "1e15", &member]).unwrap();
        r.release(&s, member);
    }
    s.flush(Duration::from_secs(10)).await;
    let left = redis.command(&["KEYS", "tfull:leases:*"]).unwrap();
    assert_eq!(left.trim(), "", "lease sets left");
    assert_eq!(dave_requests(&s).await, n as u64);
}
