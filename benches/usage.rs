//! Criterion benchmarks of usage metering, which every authenticated request now pays: one
//! ledger record (a known key and model: two read locks and atomic adds), the same with a
//! budget period (plus the key's mutex), a request meter's whole life, and records from two
//! threads at once on the same key and model (the shared counters' cache line).
//!
//! Each benchmark first checks that its records really land in the ledger.
//!
//! Run: `cargo bench --bench usage` (`-- --quick` for shorter runs). Under
//! `cargo test --all-targets` each runs once as a smoke test.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;

use sophgate::usage::backend::{Charge, Delta, UsageBackend};
use sophgate::usage::ledger::Ledger;
use sophgate::usage::meter::TokenUsage;
use sophgate::usage::period::Period;
use sophgate::usage::RequestMeter;

fn delta() -> Delta {
    Delta {
        requests: 1,
        input_tokens: 20,
        output_tokens: 8,
        ..Delta::default()
    }
}

fn charge(period: Option<Period>) -> Charge<'static> {
    Charge {
        key: "alice",
        model: "DeepSeek-V3",
        delta: delta(),
        period,
        at: SystemTime::now(),
    }
}

fn requests(ledger: &Ledger) -> u64 {
    ledger.totals_now().keys["alice"]["DeepSeek-V3"].requests
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage");

    let ledger = Ledger::new();
    ledger.record(&charge(None));
    assert_eq!(requests(&ledger), 1);
    let plain = charge(None);
    g.bench_function("record", |b| b.iter(|| ledger.record(black_box(&plain))));

    let budgeted = charge(Some(Period::Month));
    ledger.record(&budgeted);
    let used = ledger.period_use_now("alice", Period::Month, SystemTime::now());
    assert_eq!(used.tokens, 28);
    g.bench_function("record_budgeted", |b| {
        b.iter(|| ledger.record(black_box(&budgeted)))
    });

    // The process-wide backend, as requests use it.
    let key: Arc<str> = Arc::from("bench-meter");
    let u = TokenUsage {
        input: 20,
        output: 8,
        total: 28,
    };
    g.bench_function("request_meter", |b| {
        b.iter(|| {
            let mut m = RequestMeter::new(key.clone());
            m.set_model(Some(black_box("DeepSeek-V3")));
            m.answered(http::StatusCode::OK);
            m.usage(u);
        })
    });
    let shared = Arc::new(Ledger::new());
    shared.record(&charge(None));
    g.bench_function("record_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let l = shared.clone();
                    s.spawn(move || {
                        let c = charge(None);
                        for _ in 0..iters {
                            l.record(black_box(&c));
                        }
                    });
                }
            });
            // Per record of one thread (both ran at once).
            start.elapsed()
        })
    });
    assert!(requests(&shared) > 1);
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
