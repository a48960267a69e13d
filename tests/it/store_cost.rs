//! What a request costs the shared store, against a real `redis-server` and gateway process:
//! one admission round trip (the budget checked inside it), and what it leaves behind
//! (releases, usage) sent off the path yet promptly enough that a released slot is free again
//! at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sophgate::tools::mock::{MockHandle, MockOptions};
use testkit::redis_server::RedisServer;

use crate::fleet::{mock_with, Replica};
use crate::metrics::{scrape, value};

fn yaml(mock: &MockHandle, redis: &RedisServer, keys: &str) -> String {
    // A 30 s lease TTL: the renewal (every 10 s) stays out of these short tests' counts, and a
    // slot that comes back within a second came back by its release, not by expiring.
    format!(
        "listen: \"127.0.0.1:{{port}}\"\napi_host: \"http://{}\"\nforward_chat_path: /v1/chat/completions\n\
         log_level: WARNING\n\
         store: {{ url: \"{}\", prefix: \"cost:\", timeout_ms: 1000, on_error: deny, lease_ttl_ms: 30000 }}\n\
         api_keys:\n{keys}",
        mock.addr,
        redis.url()
    )
}

/// `INFO commandstats` as command → calls (Lua's own `redis.call`s included).
fn command_calls(redis: &RedisServer) -> BTreeMap<String, u64> {
    let info = redis.command(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

async fn error_code(resp: reqwest::Response) -> (u16, Option<u64>, String) {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let v: Value = resp.json().await.unwrap();
    let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, retry_after, code)
}

#[tokio::test]
async fn a_limited_budgeted_key_costs_one_admission_call_per_request() {
    let redis = RedisServer::start();
    let mock = mock_with(MockOptions::default()).await;
    let r = Replica::start(&yaml(
        &mock,
        &redis,
        "  \"sk-both\": { name: both, rpm: 1000, max_concurrent: 4, budget: { tokens: 100000000, period: day } }\n",
    ))
    .await;
    // The first request loads the scripts.
    assert_eq!(r.chat("sk-both", "mock-model", false).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = format!("http://127.0.0.1:{}/metrics", r.port);
    let usage_writes = |samples: &_| {
        value(
            samples,
            "sophgate_store_call_duration_seconds_count",
            &[("call", "write_usage")],
        )
        .unwrap_or(0.0) as u64
    };
    let usage_writes_before = usage_writes(&scrape(&metrics).await);
    redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
    const N: u64 = 12;
    for i in 0..N {
        let stream = i % 2 == 1;
        let resp = r.chat("sk-both", "mock-model", stream).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // What the requests leave behind reaches Redis off their path: wait for the releases.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let calls = command_calls(&redis);
        if calls.get("zrem").is_some_and(|_| {
            redis
                .command(&["ZCARD", "cost:leases:both"])
                .is_some_and(|n| n.trim() == "0")
        }) || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The usage due with the last release (2 ms, budgeted) has gone too by now.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let calls = command_calls(&redis);
    let samples = scrape(&metrics).await;
    // One script call per request: the budget, rpm and the lease checked together (the other
    // script calls are the writer's usage batches)...
    let usage_batches = usage_writes(&samples) - usage_writes_before;
    assert!(usage_batches >= 1);
    assert_eq!(
        calls.get("evalsha"),
        Some(&(N + usage_batches)),
        "{calls:?}"
    );
    // ...and no budget read of its own (it was an HGETALL before the limits' script).
    assert_eq!(calls.get("hgetall"), None, "{calls:?}");
    assert_eq!(
        calls.get("hget"),
        Some(&N),
        "the budget, inside the script: {calls:?}"
    );
    // Releases and usage were batched: never more than one ZREM per request.
    assert!(calls["zrem"] <= N, "{calls:?}");
    // Every request's usage arrived, added up.
    let used = redis
        .command(&["HGET", "cost:usage:both", "requests:mock-model"])
        .unwrap();
    assert_eq!(used.trim(), (N + 1).to_string(), "{calls:?}");
    // The gateway timed each of those calls: one `admit` per request (a budgeted key's
    // admissions never share a batch), each in a bucket and the sum.
    let admit = [("call", "admit")];
    let sample = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing"))
    };
    let admits = sample("sophgate_store_call_duration_seconds_count", &admit);
    assert_eq!(admits, (N + 1) as f64);
    let sum = sample("sophgate_store_call_duration_seconds_sum", &admit);
    assert!(sum > 0.0 && sum < (N + 1) as f64, "{sum}");
    let all = sample(
        "sophgate_store_call_duration_seconds_bucket",
        &[("call", "admit"), ("le", "+Inf")],
    );
    assert_eq!(all, admits);
    // The writer's pipelines are timed too; no batch was sent.
    let writes = [("call", "write")];
    assert!(sample("sophgate_store_call_duration_seconds_count", &writes) >= 1.0);
    let batches = [("call", "admit_batch")];
    assert_eq!(
        value(
            &samples,
            "sophgate_store_call_duration_seconds_count",
            &batches
        ),
        None
    );
}

#[tokio::test]
async fn a_budget_checked_in_admission_refuses_first_with_retry_after() {
    let redis = RedisServer::start();
    let mock = mock_with(MockOptions::default()).await;
    // rpm 3: if a budget refusal took an rpm slot, the refusals would turn into rpm's.
    let r = Replica::start(&yaml(
        &mock,
        &redis,
        "  \"sk-capped\": { name: capped, rpm: 3, max_concurrent: 1, budget: { tokens: 40, period: day } }\n",
    ))
    .await;
    let mut admitted = 0;
    let mut refused = Vec::new();
    for _ in 0..8 {
        let (status, retry_after, code) =
            error_code(r.chat("sk-capped", "mock-model", false).await).await;
        match status {
            200 => {
                assert!(refused.is_empty(), "admitted after a budget refusal");
                admitted += 1;
                // The spend reaches Redis off the request path.
                let deadline = Instant::now() + Duration::from_secs(3);
                while redis
                    .command(&["KEYS", "cost:budget:capped:*"])
                    .is_none_or(|k| k.trim().is_empty())
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => refused.push((status, retry_after, code)),
        }
    }
    // About 25 tokens a request: two spend the 40.
    assert_eq!(admitted, 2, "{refused:?}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    for (status, retry_after, code) in &refused {
        assert_eq!((*status, code.as_str()), (429, "budget_exceeded"));
        let wait = retry_after.expect("Retry-After");
        assert!(wait.abs_diff(to_midnight) <= 5, "{wait} vs {to_midnight}");
    }
    // Refusals took no slot: the minute's third request is still there, and no lease is held.
    let leases = redis.command(&["ZCARD", "cost:leases:capped"]).unwrap();
    assert_eq!(leases.trim(), "0");
    let tat_ms: f64 = redis
        .command(&["GET", "cost:rpm:capped"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let redis_now = redis.command(&["TIME"]).unwrap();
    let secs: f64 = redis_now.lines().next().unwrap().trim().parse().unwrap();
    // Two slots of 20 s taken, not more.
    assert!(tat_ms / 1e3 - secs <= 41.0, "{tat_ms} vs {secs}");
}

#[tokio::test]
async fn released_slots_are_free_again_at_once() {
    let redis = RedisServer::start();
    let mock = mock_with(MockOptions {
        itl: Duration::from_millis(20),
        tokens: 10,
        ..MockOptions::default()
    })
    .await;
    let r = Replica::start(&yaml(
        &mock,
        &redis,
        "  \"sk-one\": { name: one, max_concurrent: 1 }\n  \"sk-eight\": { name: eight, max_concurrent: 8 }\n",
    ))
    .await;
    // One slot, used back to back: each request ends before the next starts, and the lease
    // TTL is 30 s, so only the release frees it.
    let mut longest = Duration::ZERO;
    for _ in 0..15 {
        let started = Instant::now();
        loop {
            let resp = r.chat("sk-one", "mock-model", true).await;
            if resp.status() == 200 {
                resp.bytes().await.unwrap();
                break;
            }
            assert_eq!(resp.status(), 429);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a released slot stayed taken"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        longest = longest.max(started.elapsed());
    }
    // Eight streams ending together (their releases batched), then eight new ones at once.
    for round in 0..2 {
        let started = Instant::now();
        loop {
            let resps = futures_util::future::join_all(
                (0..8).map(|_| r.chat("sk-eight", "mock-model", true)),
            )
            .await;
            let ok = resps.iter().filter(|r| r.status() == 200).count();
            for resp in resps {
                resp.bytes().await.unwrap();
            }
            if ok == 8 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "round {round}: only {ok} of 8 slots free"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("longest wait for a released slot: {longest:?}");
}
