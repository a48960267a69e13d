//! Criterion benchmarks of what the metrics cost a request: recording one finished request
//! (metrics on, through the per-thread handle cache; metrics off), next to what the same
//! counter update costs through a prometheus-client `Family` lookup (its lock and hash) each
//! time, which is what the cache avoids; and the stream tap's cost per SSE event.
//!
//! Run: `cargo bench --bench metrics` (or `-- --quick`). Under `cargo test --all-targets`
//! each benchmark runs once as a smoke test.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use sophgate::observe::finished::{finished, route, Finished, Usage};
use sophgate::observe::metrics;
use sophgate::observe::stream_tap::StreamTap;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Labels {
    route: &'static str,
    key: String,
    model: String,
    status: u16,
}

fn bench_finished(c: &mut Criterion) {
    let key: Arc<str> = Arc::from("team-a");
    let upstream: Arc<str> = Arc::from("default");
    let method = http::Method::POST;
    let record = |metrics: bool| Finished {
        request_id: "req-0",
        route: route::CHAT,
        method: &method,
        path: "/v1/chat/completions",
        client_ip: None,
        key: Some(&key),
        model: Some("mock-model"),
        upstream: Some(&upstream),
        status: 200,
        outcome: "ok",
        error: None,
        stream: false,
        duration: Duration::from_millis(12),
        ttft: Some(Duration::from_millis(11)),
        token_gaps: None,
        usage: Some(Usage {
            input: 20,
            output: 16,
        }),
        bytes: 310,
        metrics,
    };
    let on = record(true);
    finished(&on);
    let text = metrics::render().unwrap_or_default();
    assert!(
        text.contains("sophgate_requests_total{route=\"chat\",key=\"team-a\",model=\"mock-model\",status=\"200\"}"),
        "the record was counted"
    );

    let mut g = c.benchmark_group("metrics");
    g.bench_function("finished/on", |b| b.iter(|| finished(black_box(&on))));
    let off = record(false);
    g.bench_function("finished/off", |b| b.iter(|| finished(black_box(&off))));
    let family = Family::<Labels, Counter>::default();
    g.bench_function("family_lookup_per_request", |b| {
        b.iter(|| {
            family
                .get_or_create(&Labels {
                    route: route::CHAT,
                    key: key.to_string(),
                    model: "mock-model".to_owned(),
                    status: 200,
                })
                .inc()
        })
    });
    let event = br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"mock-model","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}

"#;
    let mut tap = StreamTap::new(Instant::now());
    g.bench_function("stream_tap/content_event", |b| {
        b.iter(|| tap.on_event(black_box(event)))
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_finished(&mut c);
    c.final_summary();
}
