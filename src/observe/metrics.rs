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
/// Bumped when a generation starts serving, so threads drop their cached handles and labels.
static CACHE_EPOCH: AtomicU64 = AtomicU64::new(0);

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
    registry.register_collector(Box::new(super::store_calls::StoreCalls));
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
    m.max_models.store(max_models, Ordering::Relaxed);
    CACHE_EPOCH.fetch_add(1, Ordering::Relaxed);
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

/// Holds `sophgate_inflight_requests{route}` up while it lives (an index into the
/// registry's gauges: no handle to clone and drop per request).
#[derive(Debug)]
pub struct Inflight(usize);

impl Inflight {
    pub fn enter(route: &'static str) -> Inflight {
        let i = INFLIGHT_ROUTES
            .iter()
            .position(|r| *r == route)
            .unwrap_or(INFLIGHT_ROUTES.len() - 1);
        metrics().inflight[i].inc();
        Inflight(i)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        if let Some(g) = metrics().inflight.get(self.0) {
            g.dec();
        }
    }
}

/// A worker thread's handles: by label set for the attempts counted apart from the end
/// record, and by [`SeriesId`] for everything one finished request updates.
#[derive(Default)]
struct Cache {
    attempts: HashMap<UpstreamOutcome, Counter>,
    series: SeriesCache,
    models: ModelLabels,
    epoch: u64,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

fn with_cache(f: impl FnOnce(&mut Cache)) {
    CACHE.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            let epoch = CACHE_EPOCH.load(Ordering::Relaxed);
            if c.epoch != epoch {
                // A new generation: its key and upstream labels are new values, and the model
                // fold may have changed.
                c.series = SeriesCache::default();
                c.attempts.clear();
                c.models = ModelLabels::default();
                c.epoch = epoch;
            }
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

/// A thread's `model` labels by the client's model name (only names with their own label;
/// folded ones are looked up again), the last one first: a thread mostly sees one model
/// after another.
#[derive(Default)]
struct ModelLabels {
    last: Option<(Box<str>, Label)>,
    all: HashMap<Box<str>, Label>,
}

impl ModelLabels {
    /// The `model` label for a client's model name: its own until `metrics.max_models` names
    /// have one, `other` after.
    fn get<'a>(&'a mut self, m: &'a Metrics, model: Option<&str>) -> &'a Label {
        let Some(model) = model.filter(|s| !s.is_empty()) else {
            return &m.empty;
        };
        if self.last.as_ref().is_some_and(|(name, _)| **name == *model) {
            return self.last.as_ref().map_or(&m.other_model, |(_, l)| l);
        }
        let label = match self.all.get(model) {
            Some(l) => l.clone(),
            None => {
                let Some(l) = Self::shared(m, model) else {
                    return &m.other_model;
                };
                self.all.insert(model.into(), l.clone());
                l
            }
        };
        &self.last.insert((model.into(), label)).1
    }

    /// The process's label for `model`, `None` once `metrics.max_models` names have one.
    fn shared(m: &Metrics, model: &str) -> Option<Label> {
        let mut all = m.models.lock().ok()?;
        match all.get(model) {
            Some(l) => Some(l.clone()),
            None if all.len() < m.max_models.load(Ordering::Relaxed) => {
                let l = Label::from(model);
                all.insert(model.into(), l.clone());
                Some(l)
            }
            None => None,
        }
    }
}

/// Which [`Series`] a finished request updates: its label values by identity (a shared
/// label's allocation, the index of a fixed label value), so finding it compares or hashes a
/// few words instead of the label strings. The series holds the labels it was made for, so no
/// address in a cached id can be reused by another value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesId {
    key: usize,
    model: usize,
    /// 0 when no upstream answered.
    upstream: usize,
    status: u16,
    /// Index in [`INFLIGHT_ROUTES`] (every route label is one of them).
    route: u8,
    /// Index in [`FINAL_OUTCOMES`].
    outcome: u8,
}

fn label_id(l: &Arc<str>) -> usize {
    Arc::as_ptr(l).cast::<u8>() as usize
}

/// A thread's series, the one its last request used first: consecutive requests mostly share
/// their labels (one key, one model, 200), and then no hash is computed.
#[derive(Default)]
struct SeriesCache {
    last: Option<(SeriesId, usize)>,
    index: HashMap<SeriesId, usize>,
    all: Vec<Series>,
}

impl SeriesCache {
    fn get(&mut self, id: SeriesId, make: impl FnOnce() -> Series) -> &mut Series {
        let at = match self.last {
            Some((last, at)) if last == id => at,
            _ => {
                let at = *self.index.entry(id).or_insert_with(|| {
                    self.all.push(make());
                    self.all.len() - 1
                });
                self.last = Some((id, at));
                at
            }
        };
        &mut self.all[at]
    }
}

/// The handles of one finished request's label values, taken from the families once per
/// thread; those not every such request updates (tokens, TTFT, token gaps) when first used,
/// so no series appears in the exposition before it has a sample.
struct Series {
    key: Label,
    model: Label,
    requests: Counter,
    duration: AtomicHistogram,
    input_tokens: Option<Counter>,
    output_tokens: Option<Counter>,
    /// With the upstream that answered, the attempt's counter.
    upstream: Option<(Label, Counter)>,
    ttft: Option<AtomicHistogram>,
    token_gaps: Option<AtomicHistogram>,
}

impl Series {
    fn new(m: &Metrics, r: &Finished<'_>, model: &Label, outcome: &'static str) -> Series {
        let key = r.key.map_or_else(|| m.empty.clone(), |k| Label(k.clone()));
        let requests = m
            .requests
            .get_or_create(&RequestLabels {
                route: r.route,
                key: key.clone(),
                model: model.clone(),
                status: r.status,
            })
            .clone();
        let duration = m
            .duration
            .get_or_create(&RouteModel {
                route: r.route,
                model: model.clone(),
            })
            .clone();
        let upstream = r.upstream.map(|u| {
            let labels = UpstreamOutcome {
                upstream: Label(u.clone()),
                outcome,
            };
            let counter = m.attempts.get_or_create(&labels).clone();
            (labels.upstream, counter)
        });
        Series {
            key,
            model: model.clone(),
            requests,
            duration,
            input_tokens: None,
            output_tokens: None,
            upstream,
            ttft: None,
            token_gaps: None,
        }
    }

    fn tokens(&mut self, m: &Metrics, kind: &'static str) -> &Counter {
        let slot = if kind == "input" {
            &mut self.input_tokens
        } else {
            &mut self.output_tokens
        };
        slot.get_or_insert_with(|| {
            m.tokens
                .get_or_create(&TokenLabels {
                    key: self.key.clone(),
                    model: self.model.clone(),
                    r#type: kind,
                })
                .clone()
        })
    }
}

/// The outcomes the attempt whose answer the client got can have (see [`final_attempt`]).
const FINAL_OUTCOMES: [&str; 5] = [
    attempt::OK,
    attempt::HTTP_4XX,
    attempt::HTTP_5XX,
    attempt::TIMEOUT,
    attempt::BROKEN,
];

/// The `sophgate_upstream_attempts_total{outcome}` of the attempt whose answer the client got.
fn final_attempt(r: &Finished<'_>) -> &'static str {
    match r.error {
        Some("upstream_stream_broken") => attempt::BROKEN,
        Some("upstream_idle_timeout" | "upstream_total_timeout") => attempt::TIMEOUT,
        _ => attempt::of_status(r.status),
    }
}

/// The index of `label` in `fixed`, for a [`SeriesId`].
fn index_of(fixed: &[&str], label: &str) -> u8 {
    let i = fixed
        .iter()
        .position(|f| *f == label)
        .unwrap_or(fixed.len());
    u8::try_from(i).unwrap_or(u8::MAX)
}

/// Records one finished request.
pub fn request_finished(r: &Finished<'_>) {
    let m = metrics();
    with_cache(|c| {
        let model = c.models.get(m, r.model);
        let outcome = final_attempt(r);
        let id = SeriesId {
            key: r.key.map_or(0, label_id),
            model: label_id(&model.0),
            upstream: r.upstream.map_or(0, label_id),
            status: r.status,
            route: index_of(&INFLIGHT_ROUTES, r.route),
            outcome: index_of(&FINAL_OUTCOMES, outcome),
        };
        let s = c.series.get(id, || Series::new(m, r, model, outcome));
        s.requests.inc();
        s.duration.observe(r.duration);
        if let Some(usage) = r.usage {
            s.tokens(m, "input").inc_by(usage.input);
            s.tokens(m, "output").inc_by(usage.output);
        }
        let Some((upstream, attempts)) = &s.upstream else {
            return;
        };
        attempts.inc();
        let pair = || ModelUpstream {
            model: s.model.clone(),
            upstream: upstream.clone(),
        };
        // An error answer has no first token.
        if let Some(ttft) = r.ttft.filter(|_| r.status < 400) {
            s.ttft
                .get_or_insert_with(|| m.ttft.get_or_create(&pair()).clone())
                .observe(ttft);
        }
        if let Some(gaps) = r.token_gaps.filter(|g| g.count() > 0) {
            s.token_gaps
                .get_or_insert_with(|| m.token_gaps.get_or_create(&pair()).clone())
                .merge(gaps);
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::observe::finished::Usage;

    fn record<'a>(key: &'a Arc<str>, upstream: &'a Arc<str>, usage: Option<Usage>) -> Finished<'a> {
        Finished {
            request_id: "req-unit",
            route: route::CHAT,
            method: &http::Method::POST,
            path: "",
            client_ip: None,
            key: Some(key),
            model: Some("unit-series-model"),
            upstream: Some(upstream),
            status: 200,
            outcome: "ok",
            error: None,
            stream: false,
            duration: Duration::from_millis(3),
            ttft: Some(Duration::from_millis(2)),
            token_gaps: None,
            usage,
            bytes: 10,
            metrics: true,
        }
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_label_value_is_one_series_whatever_its_allocation_and_across_generations() {
        let upstream: Arc<str> = Arc::from("unit-series-upstream");
        let requests = "sophgate_requests_total{route=\"chat\",key=\"unit-series-key\",model=\"unit-series-model\",status=\"200\"}";
        let input = "sophgate_tokens_total{key=\"unit-series-key\",model=\"unit-series-model\",type=\"input\"}";
        let attempts =
            "sophgate_upstream_attempts_total{upstream=\"unit-series-upstream\",outcome=\"ok\"}";
        // Two allocations of the same key label (a reload builds new ones).
        let first: Arc<str> = Arc::from("unit-series-key");
        let second: Arc<str> = Arc::from("unit-series-key");
        request_finished(&record(&first, &upstream, None));
        let text = render().unwrap();
        assert_eq!(sample(&text, requests), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, input),
            None,
            "no tokens series before a usage"
        );
        request_finished(&record(
            &second,
            &upstream,
            Some(Usage {
                input: 5,
                output: 7,
            }),
        ));
        generation_serving(1, crate::config::validate::DEFAULT_MAX_MODELS);
        request_finished(&record(
            &first,
            &upstream,
            Some(Usage {
                input: 1,
                output: 0,
            }),
        ));
        let text = render().unwrap();
        assert_eq!(sample(&text, requests), Some(3.0), "{text}");
        assert_eq!(sample(&text, input), Some(6.0), "{text}");
        assert_eq!(sample(&text, attempts), Some(3.0), "{text}");
    }
}
