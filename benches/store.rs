//! Criterion benchmark of the shared store's admission call (`store:`) against a real
//! `redis-server` on a free loopback port: what one limited request costs on the hot path when
//! its limits are shared, next to a bare `PING` on the same connection (the round trip alone).
//!
//! Run: `cargo bench --bench store` (needs `redis-server`; skipped with a note without it).
//! Under `cargo test --all-targets` each benchmark runs once as a smoke test.
//!
//! Groups: `store/ping` (round trip floor), `store/admit_rpm` (an rpm key: the GCRA script),
//! `store/admit_rpm_lease` (rpm + `max_concurrent`: the script plus the lease's release after,
//! through the store's writer), `store/admit_budget_rpm_lease` (the same with the key's budget
//! checked inside the script, as a budgeted key with shared limits is),
//! `store/budget_read` (a budgeted key's period as `/admin/usage` reads it),
//! `store/usage_record` (recording a request's usage: the ledger plus the queue to the writer,
//! which runs between iterations and pipelines what is queued).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;

use sophgate::config::store::{OnStoreError, StoreConfig};
use sophgate::secret::Secret;
use sophgate::store::admission::{BudgetCheck, SharedLimits, Verdict};
use sophgate::store::Store;
use sophgate::usage::backend::{ledger, Charge, Delta, UsageBackend};
use sophgate::usage::period::Period;
use sophgate::usage::shared::SharedUsage;
use testkit::redis_server::RedisServer;

fn main() -> ExitCode {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("benches/store: redis-server is not installed; skipped");
        return ExitCode::SUCCESS;
    }
    let mut c = Criterion::default().configure_from_args();
    let result = run(&mut c);
    c.final_summary();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benches/store: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(c: &mut Criterion) -> Result<(), String> {
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let _guard = rt.enter();
    let config = StoreConfig {
        url: Secret::new(redis.url()),
        prefix: "bench:".into(),
        timeout: Duration::from_secs(1),
        on_error: OnStoreError::Deny,
        lease_ttl: Duration::from_secs(10),
        ca_pem: None,
    };
    let store = Store::shared(&config)?.ok_or("no runtime")?;
    let rpm = Arc::new(SharedLimits::new(&store, "rpm", Some(u32::MAX), None, None));
    let leased = Arc::new(SharedLimits::new(
        &store,
        "leased",
        Some(u32::MAX),
        None,
        Some(1_000_000),
    ));
    let budget_hash = store.budget_key("leased", "month-0");
    let budget = BudgetCheck {
        hash: &budget_hash,
        field: "tokens",
        limit: 1e15,
    };
    // Each subject once, checked, so no benchmark times an error path.
    rt.block_on(async {
        store.ping().await.map_err(|e| format!("ping: {e}"))?;
        match rpm.admit(None).await {
            Ok(Verdict::Admitted(None)) => {}
            other => return Err(format!("admit_rpm: {other:?}")),
        }
        match leased.admit(None).await {
            Ok(Verdict::Admitted(Some(_))) => {}
            other => return Err(format!("admit_rpm_lease: {other:?}")),
        }
        match leased.admit(Some(budget)).await {
            Ok(Verdict::Admitted(Some(_))) => Ok(()),
            other => Err(format!("admit_budget_rpm_lease: {other:?}")),
        }
    })?;

    let usage = SharedUsage::new(Arc::clone(&store), ledger()).ok_or("no runtime")?;
    let charge = || Charge {
        key: "budgeted",
        model: "bench-model",
        delta: Delta {
            requests: 1,
            input_tokens: 20,
            output_tokens: 5,
            ..Delta::default()
        },
        period: Some(Period::Month),
        at: std::time::SystemTime::now(),
    };
    rt.block_on(async {
        usage.record(&charge());
        usage
            .period_use("budgeted", Period::Month, std::time::SystemTime::now())
            .await
            .map(drop)
            .map_err(|e| format!("budget_read: {}", e.0))
    })?;

    let mut group = c.benchmark_group("store");
    group.bench_function("ping", |b| {
        b.to_async(&rt)
            .iter(|| async { store.ping().await.is_ok() })
    });
    group.bench_function("admit_rpm", |b| {
        b.to_async(&rt)
            .iter(|| async { rpm.admit(None).await.is_ok() })
    });
    group.bench_function("admit_rpm_lease", |b| {
        // The lease drops at once: its release (a ZREM, off the request path) runs too.
        b.to_async(&rt)
            .iter(|| async { leased.admit(None).await.is_ok() })
    });
    group.bench_function("admit_budget_rpm_lease", |b| {
        b.to_async(&rt)
            .iter(|| async { leased.admit(Some(budget)).await.is_ok() })
    });
    group.bench_function("budget_read", |b| {
        b.to_async(&rt).iter(|| async {
            usage
                .period_use("budgeted", Period::Month, std::time::SystemTime::now())
                .await
                .is_ok()
        })
    });
    group.bench_function("usage_record", |b| {
        b.to_async(&rt).iter(|| async {
            usage.record(&charge());
            tokio::task::yield_now().await;
        })
    });
    group.finish();
    Ok(())
}
