//! What tracing costs a request when `otel` is on: the SERVER span with its attributes, one
//! CLIENT span with its `traceparent`, and the end of both (the batch processor's queue
//! behind them; its export thread sends to a port where nothing listens, so spans are
//! dropped and counted, as with a dead collector). With `otel` absent the request path only
//! tests `Option`s (`Generation::tracing`, `RequestCtx::trace`): nothing here is built.
//!
//! Run: `cargo bench --bench trace` (`-- --quick` for a shorter run).

use std::hint::black_box;

use criterion::Criterion;
use http::{HeaderMap, HeaderValue, Method};

use sophgate::config::Config;
use sophgate::observe::trace::Tracing;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    let _guard = rt.enter();
    let port = testkit::free_port();
    let cfg = Config::from_yaml(
        &format!("otel: {{ endpoint: \"http://127.0.0.1:{port}\" }}\n"),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tracing = Tracing::for_config(cfg.otel.as_ref())
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("otel is on"));
    let mut with_parent = HeaderMap::new();
    with_parent.insert(
        "traceparent",
        HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    let body = br#"{"model":"gpt-test","messages":[],"temperature":0.2,"max_tokens":64}"#;

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("trace");
    for (name, headers) in [("new_trace", HeaderMap::new()), ("continued", with_parent)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut t = tracing.start(&headers, &Method::POST, "/v1/chat/completions");
                t.key_label("team");
                t.request_model(Some("gpt-test"));
                t.request_params(body);
                let attempt = t.attempt(
                    "default",
                    &Method::POST,
                    "http://127.0.0.1:9/v1/chat/completions",
                );
                black_box(attempt.headers());
                attempt.answered(200);
                t.keep_attempt(attempt);
                t.status(200);
                t.into_tap().end_now();
            })
        });
    }
    g.finish();
    c.final_summary();
}
