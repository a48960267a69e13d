//! The process-global Prometheus registry (prometheus-client) and what records into it.
//! Counters survive reloads; `sophgate_config_generation` follows them.
//!
//! The hot path takes no lock shared between requests: each worker thread keeps the metric
//! handles (Arc'd atomics) of the label sets it has seen, so a request touches the families'
//! maps (and their lock) only the first time a thread meets a label set.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::finished::{route, Finished};
use super::histogram::{AtomicHistogram, DURATION_BUCKETS, TOKEN_GAP_BUCKETS, TTFT_BUCKETS};
use super::process::ProcessCollector;

/// A label value shared by many series (a key's label, a model, an upstream).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

impl From<&str> for Label {
    fn from(s: &str) -> Self {
        Label(Arc::from(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    key: Label,
    model: Label,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteModel {
    route: &'static str,
    model: Label,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelUpstream {
    model: Label,
    upstream: Label,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenLabels {
    key: Label,
    model: Label,
    r#type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamOutcome {
    upstream: Label,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KeyLimit {
    key: Label,
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CredentialResult {
    credential: Label,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginHook {
    plugin: Label,
    hook: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Builds a family's histograms with one set of bounds.
#[derive(Clone, Copy)]
struct Buckets(&'static [f64]);

impl MetricConstructor<AtomicHistogram> for Buckets {
    fn new_metric(&self) -> AtomicHistogram {
        AtomicHistogram::new(self.0)
    }
}

/// `sophgate_upstream_attempts_total{outcome}` values.
pub mod attempt {
    pub const OK: &str = "ok";
    pub const HTTP_4XX: &str = "http_4xx";
    pub const HTTP_5XX: &str = "http_5xx";
    pub const TIMEOUT: &str = "timeout";
    pub const CONNECT_ERROR: &str = "connect_error";
    pub const BROKEN: &str = "broken";

    /// The outcome of an attempt the upstream answered with `status`.
    pub fn of_status(status: u16) -> &'static str {
        match status {
            500.. => HTTP_5XX,
            400.. => HTTP_4XX,
            _ => OK,
        }
    }
}

/// The routes `sophgate_inflight_requests` is kept for, in [`Inflight`]'s order.
const INFLIGHT_ROUTES: [&str; 6] = [
    route::CHAT,
    route::MODELS,
    route::PASSTHROUGH,
    route::ADMIN,
    route::HEALTH,
    route::OTHER,
];

/// A counter kept elsewhere (an `AtomicU64` and a getter) exposed at scrape time.
pub type ExternalCounter = fn() -> u64;

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteModel, AtomicHistogram, Buckets>,
    ttft: Family<ModelUpstream, AtomicHistogram, Buckets>,
    token_gaps: Family<ModelUpstream, AtomicHistogram, Buckets>,
    tokens: Family<TokenLabels, Counter>,
    attempts: Family<UpstreamOutcome, Counter>,
    rate_limited: Family<KeyLimit, Counter>,
    inflight: [Gauge; INFLIGHT_ROUTES.len()],
    credential_fetches: Family<CredentialResult, Counter>,
    script_errors: Family<PluginHook, Counter>,
    reloads: Family<ResultLabel, Counter>,
    generation: Gauge,
    models: Mutex<HashMap<Box<str>, Label>>,
    max_models: AtomicUsize,
    other_model: Label,
    empty: Label,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
/// External counters registered before the registry was first used.
static EXTERNAL: Mutex<Vec<(&'static str, &'static str, ExternalCounter)>> = Mutex::new(Vec::new());
/// Bumped when the model fold changes size, so threads drop their cached model labels.
static MODEL_EPOCH: AtomicU64 = AtomicU64::new(0);

fn metrics() -> &'static Metrics {
    METRICS.get_or_init(build)
}

fn build() -> Metrics {
    let mut registry = Registry::default();
    let requests = Family::<RequestLabels, Counter>::default();
    registry.register(
        "sophgate_requests",
        "Finished requests by route, key label, model and the status the client got",
        requests.clone(),
    );
    let duration = Family::new_with_constructor(Buckets(DURATION_BUCKETS));
    registry.register(
        "sophgate_request_duration_seconds",
        "From a request's arrival to the last byte of its answer",
        duration.clone(),
    );
    let ttft = Family::new_with_constructor(Buckets(TTFT_BUCKETS));
    registry.register(
        "sophgate_time_to_first_token_seconds",
        "Streams: arrival to the first event with content or a tool call; others: to the first byte",
        ttft.clone(),
    );
    let token_gaps = Family::new_with_constructor(Buckets(TOKEN_GAP_BUCKETS));
    registry.register(
        "sophgate_time_per_output_token_seconds",
        "Gaps between the content events of a stream",
        token_gaps.clone(),
    );
    let tokens = Family::<TokenLabels, Counter>::default();
    registry.register(
        "sophgate_tokens",
        "Tokens the upstream reported in usage, by key label, model and type (input/output)",
        tokens.clone(),
    );
    let attempts = Family::<UpstreamOutcome, Counter>::default();
    registry.register(
        "sophgate_upstream_attempts",
        "Upstream attempts by outcome (ok, http_4xx, http_5xx, timeout, connect_error, broken)",
        attempts.clone(),
    );
    let rate_limited = Family::<KeyLimit, Counter>::default();
    registry.register(
        "sophgate_rate_limited",
        "Requests refused by a key's limit (rpm, tpm, max_concurrent)",
        rate_limited.clone(),
    );
    let inflight_family = Family::<RouteLabel, Gauge>::default();
    registry.register(
        "sophgate_inflight_requests",
        "Requests being answered (streams until they end)",
        inflight_family.clone(),
    );
    let inflight = INFLIGHT_ROUTES.map(|r| {
        inflight_family
            .get_or_create(&RouteLabel { route: r })
            .clone()
    });
    let credential_fetches = Family::<CredentialResult, Counter>::default();
    registry.register(
        "sophgate_credential_fetches",
        "Fetches of upstream tokens by credential and result (ok, error)",
        credential_fetches.clone(),
    );
    let script_errors = Family::<PluginHook, Counter>::default();
    registry.register(
        "sophgate_script_errors",
        "Plugin hooks that failed (not counting deliberate throws)",
        script_errors.clone(),
    );
    let reloads = Family::<ResultLabel, Counter>::default();
    registry.register(
        "sophgate_reloads",
        "Configuration reloads by result (ok, error)",
        reloads.clone(),
    );
    for result in ["ok", "error"] {
        drop(reloads.get_or_create(&ResultLabel { result }));
    }
    let generation = Gauge::default();
    registry.register(
        "sophgate_config_generation",
        "The number of the configuration generation serving",
        generation.clone(),
    );
    registry.register_collector(Box::new(ExternalCounters));
    registry.register_collector(Box::new(ProcessCollector));
    Metrics {
        registry,
        requests,
        duration,
        ttft,
        token_gaps,
        tokens,
        attempts,
        rate_limited,
        inflight,
        credential_fetches,
        script_errors,
        reloads,
        generation,
        models: Mutex::new(HashMap::new()),
        max_models: AtomicUsize::new(crate::config::validate::DEFAULT_MAX_MODELS),
        other_model: Label::from("other"),
        empty: Label::from(""),
    }
}

/// Exposes a counter kept elsewhere (e.g. `sophgate_store_errors_total`) on every scrape:
/// `name` without the `_total` suffix, read by `get` at scrape time. Registering a name twice
/// keeps the first.
pub fn register_counter(name: &'static str, help: &'static str, get: ExternalCounter) {
    if let Ok(mut list) = EXTERNAL.lock() {
        if !list.iter().any(|(n, _, _)| *n == name) {
            list.push((name, help, get));
        }
    }
}

#[derive(Debug)]
struct ExternalCounters;

impl prometheus_client::collector::Collector for ExternalCounters {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let mut list: Vec<(&'static str, &'static str, ExternalCounter)> =
            EXTERNAL.lock().map(|l| l.clone()).unwrap_or_default();
        list.push((
            "sophgate_log_dropped_lines",
            "Log lines dropped because the log writer could not keep up",
            crate::logging::dropped_lines,
        ));
        list.push((
            "sophgate_store_errors",
            "Shared-store (Redis) calls that failed or timed out, and usage writes dropped",
            crate::store::store_errors_total,
        ));
        list.push((
            "sophgate_otel_dropped_spans",
            "Spans dropped by the OTLP exporter (queue full or export failed)",
            crate::observe::trace_export::dropped_spans,
        ));
        for (name, help, get) in list {
            let counter = ConstCounter::new(get());
            let m = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(m)?;
        }
        Ok(())
    }
}

/// The text exposition (OpenMetrics) of every metric.
pub fn render() -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &metrics().registry)?;
    Ok(out)
}

/// A generation started serving (at start and after each successful reload).
pub fn generation_serving(number: u64, max_models: usize) {
    let m = metrics();
    m.generation.set(i64::try_from(number).unwrap_or(i64::MAX));
    if m.max_models.swap(max_models, Ordering::Relaxed) != max_models {
        MODEL_EPOCH.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn reload_result(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics()
        .reloads
        .get_or_create(&ResultLabel { result })
        .inc();
}

/// A key's limit refused a request; `limit` is `rpm`, `tpm` or `max_concurrent`.
pub fn rate_limited(key: &Arc<str>, limit: &'static str) {
    metrics()
        .rate_limited
        .get_or_create(&KeyLimit {
            key: Label(key.clone()),
            limit,
        })
        .inc();
}

pub fn credential_fetch(credential: &Arc<str>, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics()
        .credential_fetches
        .get_or_create(&CredentialResult {
            credential: Label(credential.clone()),
            result,
        })
        .inc();
}

pub fn script_error(plugin: &str, hook: &'static str) {
    metrics()
        .script_errors
        .get_or_create(&PluginHook {
            plugin: Label::from(plugin),
            hook,
        })
        .inc();
}

/// An upstream attempt that did not become the client's answer (a retry or a failure); the
/// attempt that did is counted from the end record, where a broken stream is known.
pub fn upstream_attempt(upstream: &Arc<str>, outcome: &'static str) {
    with_cache(|c| {
        cached(
            &mut c.attempts,
            &metrics().attempts,
            UpstreamOutcome {
                upstream: Label(upstream.clone()),
                outcome,
            },
        )
        .inc();
    });
}

/// Holds `sophgate_inflight_requests{route}` up while it lives.
#[derive(Debug)]
pub struct Inflight(Gauge);

impl Inflight {
    pub fn enter(route: &'static str) -> Inflight {
        let m = metrics();
        let i = INFLIGHT_ROUTES
            .iter()
            .position(|r| *r == route)
            .unwrap_or(INFLIGHT_ROUTES.len() - 1);
        let g = m.inflight[i].clone();
        g.inc();
        Inflight(g)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A worker thread's handles, by label set.
#[derive(Default)]
struct Cache {
    requests: HashMap<RequestLabels, Counter>,
    duration: HashMap<RouteModel, AtomicHistogram>,
    ttft: HashMap<ModelUpstream, AtomicHistogram>,
    token_gaps: HashMap<ModelUpstream, AtomicHistogram>,
    tokens: HashMap<TokenLabels, Counter>,
    attempts: HashMap<UpstreamOutcome, Counter>,
    /// Model names this thread has seen with their own label (never the folded ones).
    models: HashMap<Box<str>, Label>,
    model_epoch: u64,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

fn with_cache(f: impl FnOnce(&mut Cache)) {
    CACHE.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            f(&mut c);
        }
    });
}

fn cached<'c, S, M, C>(map: &'c mut HashMap<S, M>, family: &Family<S, M, C>, labels: S) -> &'c M
where
    S: Clone + Eq + Hash + EncodeLabelSet + std::fmt::Debug,
    M: Clone + prometheus_client::metrics::TypedMetric + std::fmt::Debug,
    C: MetricConstructor<M>,
{
    map.entry(labels)
        .or_insert_with_key(|l| family.get_or_create(l).clone())
}

/// The `model` label for a client's model name: its own until `metrics.max_models` names
/// have one, `other` after.
fn model_label(c: &mut Cache, m: &Metrics, model: Option<&str>) -> Label {
    let Some(model) = model.filter(|s| !s.is_empty()) else {
        return m.empty.clone();
    };
    let epoch = MODEL_EPOCH.load(Ordering::Relaxed);
    if c.model_epoch != epoch {
        c.models.clear();
        c.model_epoch = epoch;
    }
    if let Some(l) = c.models.get(model) {
        return l.clone();
    }
    let Ok(mut all) = m.models.lock() else {
        return m.other_model.clone();
    };
    let label = match all.get(model) {
        Some(l) => l.clone(),
        None if all.len() < m.max_models.load(Ordering::Relaxed) => {
            let l = Label::from(model);
            all.insert(model.into(), l.clone());
            l
        }
        None => return m.other_model.clone(),
    };
    drop(all);
    c.models.insert(model.into(), label.clone());
    label
}

/// Records one finished request.
pub fn request_finished(r: &Finished<'_>) {
    let m = metrics();
    with_cache(|c| {
        let model = model_label(c, m, r.model);
        let key = r.key.map_or_else(|| m.empty.clone(), |k| Label(k.clone()));
        cached(
            &mut c.requests,
            &m.requests,
            RequestLabels {
                route: r.route,
                key: key.clone(),
                model: model.clone(),
                status: r.status,
            },
        )
        .inc();
        cached(
            &mut c.duration,
            &m.duration,
            RouteModel {
                route: r.route,
                model: model.clone(),
            },
        )
        .observe(r.duration);
        if let Some(usage) = r.usage {
            for (kind, n) in [("input", usage.input), ("output", usage.output)] {
                cached(
                    &mut c.tokens,
                    &m.tokens,
                    TokenLabels {
                        key: key.clone(),
                        model: model.clone(),
                        r#type: kind,
                    },
                )
                .inc_by(n);
            }
        }
        let Some(upstream) = r.upstream else {
            return;
        };
        let upstream = Label(upstream.clone());
        let outcome = match r.error {
            Some("upstream_stream_broken") => attempt::BROKEN,
            Some("upstream_idle_timeout" | "upstream_total_timeout") => attempt::TIMEOUT,
            _ => attempt::of_status(r.status),
        };
        cached(
            &mut c.attempts,
            &m.attempts,
            UpstreamOutcome {
                upstream: upstream.clone(),
                outcome,
            },
        )
        .inc();
        let pair = ModelUpstream { model, upstream };
        // An error answer has no first token.
        if let Some(ttft) = r.ttft.filter(|_| r.status < 400) {
            cached(&mut c.ttft, &m.ttft, pair.clone()).observe(ttft);
        }
        if let Some(gaps) = r.token_gaps.filter(|g| g.count() > 0) {
            cached(&mut c.token_gaps, &m.token_gaps, pair).merge(gaps);
        }
    });
}
