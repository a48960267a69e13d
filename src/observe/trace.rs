//! OpenTelemetry traces: one SERVER span per request (from its arrival to the end of its
//! answer's body, streams included) and one CLIENT span per upstream attempt, with the GenAI
//! and HTTP semantic-convention attributes. An incoming W3C `traceparent`/`tracestate` is
//! continued, and each attempt sends the `traceparent` of its own span upstream.
//!
//! Spans carry names, models, numbers, statuses and key *labels*; never a prompt, a completion,
//! a key, a token or a header value. With `otel` absent there is no [`Tracing`] and no
//! [`RequestTrace`]: the request path tests an `Option` and builds nothing.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use super::trace_export;
use crate::config::OtelConfig;

pub use trace_export::dropped_spans;

/// How long a replaced exporter gets to send what it still holds.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The live tracer of one `otel` config. Generations with the same `otel` section share it,
/// so a reload that leaves `otel` alone keeps its queue; a changed section builds a new one
/// and the old one flushes and stops once no generation holds it.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    config: OtelConfig,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("endpoint", &self.config.endpoint)
            .finish()
    }
}

/// The tracer of the last config built, reused while some generation holds it.
static CURRENT: Mutex<Option<Weak<Tracing>>> = Mutex::new(None);

impl Tracing {
    /// The tracer for `cfg` (`None` when tracing is off): the running one if its config is
    /// the same, else a new one.
    pub fn for_config(cfg: Option<&OtelConfig>) -> Result<Option<Arc<Tracing>>, String> {
        let Some(cfg) = cfg else {
            return Ok(None);
        };
        let mut current = CURRENT
            .lock()
            .map_err(|_| "otel: tracer registry poisoned".to_owned())?;
        if let Some(t) = current.as_ref().and_then(Weak::upgrade) {
            if t.config == *cfg {
                return Ok(Some(t));
            }
        }
        let t = Arc::new(Tracing::new(cfg)?);
        *current = Some(Arc::downgrade(&t));
        Ok(Some(t))
    }

    fn new(cfg: &OtelConfig) -> Result<Tracing, String> {
        let provider = SdkTracerProvider::builder()
            .with_span_processor(trace_export::processor(cfg)?)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(cfg.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("sophgate");
        Ok(Tracing {
            provider,
            tracer,
            config: cfg.clone(),
        })
    }

    /// Starts the SERVER span of a request, continuing the client's `traceparent` if any.
    pub fn start(&self, headers: &HeaderMap, method: &Method, path: &str) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let operation = operation_of(path);
        let name = match operation {
            Some(op) => op.to_owned(),
            None => span_name_for(method, path),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("url.path", path.to_owned()),
        ];
        if let Some(op) = operation {
            attributes.push(KeyValue::new("gen_ai.operation.name", op));
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            cx: parent.with_span(span),
            tracer: self.tracer.clone(),
            operation,
            model: None,
            attempt: None,
            error_typed: false,
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // Flushing waits on the export thread: not on a runtime worker.
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("otel-shutdown".into())
            .spawn(move || {
                let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
            });
    }
}

/// Sends what the exporter still holds and stops it (at exit, after the drain: the spans of
/// the last requests are not lost).
pub async fn flush(tracing: Option<Arc<Tracing>>) {
    if let Some(t) = tracing {
        let provider = t.provider.clone();
        let _ =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
    }
}

/// The GenAI operation of a gateway path, if it is one.
fn operation_of(path: &str) -> Option<&'static str> {
    match path {
        "/v1/chat/completions" => Some("chat"),
        "/v1/completions" => Some("text_completion"),
        "/v1/embeddings" => Some("embeddings"),
        _ => None,
    }
}

/// `METHOD route` for the gateway's own routes, `METHOD /v1/*` for other API paths and the
/// bare method otherwise: names stay few whatever paths clients send.
fn span_name_for(method: &Method, path: &str) -> String {
    let route = match path {
        "/v1/models" | "/health" => path,
        p if p.starts_with("/v1/") => "/v1/*",
        _ => return method.as_str().to_owned(),
    };
    format!("{} {route}", method.as_str())
}

/// The request parameters the spans report, read from the body that goes upstream.
#[derive(serde::Deserialize, Default)]
struct RequestParams {
    temperature: Option<f64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
}

/// One request's SERVER span (in its context) and the CLIENT span of its last attempt.
pub struct RequestTrace {
    cx: Context,
    tracer: SdkTracer,
    operation: Option<&'static str>,
    model: Option<String>,
    attempt: Option<Context>,
    /// `error.type` is set (by [`Self::failed`]).
    error_typed: bool,
}

impl RequestTrace {
    /// The model the client asked for (or the default it got): names the span.
    pub fn request_model(&mut self, model: Option<&str>) {
        let Some(model) = model else { return };
        let span = self.cx.span();
        if let Some(op) = self.operation {
            span.update_name(format!("{op} {model}"));
        }
        span.set_attribute(KeyValue::new("gen_ai.request.model", model.to_owned()));
        self.model = Some(model.to_owned());
    }

    /// The principal's label (never the key).
    pub fn key_label(&self, label: &str) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("sophgate.key", label.to_owned()));
    }

    pub fn client_address(&self, ip: std::net::IpAddr) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("client.address", ip.to_string()));
    }

    /// `temperature` and `max_tokens` of the body going upstream (defaults applied).
    pub fn request_params(&self, body: &[u8]) {
        if self.operation.is_none() {
            return;
        }
        let Ok(p) = serde_json::from_slice::<RequestParams>(body) else {
            return;
        };
        let span = self.cx.span();
        if let Some(t) = p.temperature {
            span.set_attribute(KeyValue::new("gen_ai.request.temperature", t));
        }
        if let Some(m) = p.max_tokens.or(p.max_completion_tokens) {
            span.set_attribute(KeyValue::new("gen_ai.request.max_tokens", m));
        }
    }

    /// Starts the CLIENT span of one upstream attempt; its `traceparent` goes upstream.
    pub fn attempt(&mut self, upstream: &str, method: &Method, url: &str) -> Attempt {
        let name = match (self.operation, &self.model) {
            (Some(op), Some(m)) => format!("{op} {m}"),
            (Some(op), None) => op.to_owned(),
            _ => method.as_str().to_owned(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("sophgate.upstream", upstream.to_owned()),
        ];
        if let Some(op) = self.operation {
            attributes.push(KeyValue::new("gen_ai.operation.name", op));
        }
        if let Some(m) = &self.model {
            attributes.push(KeyValue::new("gen_ai.request.model", m.clone()));
        }
        if let Ok(uri) = url.parse::<http::Uri>() {
            if let Some(host) = uri.host() {
                attributes.push(KeyValue::new("server.address", host.to_owned()));
            }
            let port = uri.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            });
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
            attributes.push(KeyValue::new("url.path", uri.path().to_owned()));
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        let cx = self.cx.with_span(span);
        let mut headers = Vec::with_capacity(2);
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut headers));
        Attempt { cx, headers }
    }

    /// The attempt whose answer goes to the client: its span lasts as long as that body.
    pub fn keep_attempt(&mut self, attempt: Attempt) {
        self.attempt = Some(attempt.cx);
    }

    /// A phase refused the request or the upstream failed: the error's code.
    pub fn failed(&mut self, code: &'static str) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("error.type", code));
        self.error_typed = true;
    }

    /// The status the client gets; the spans end now, or with the body ([`Self::into_tap`]).
    pub fn status(&self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(""));
            if !self.error_typed {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
            }
        }
    }

    /// What reads the answer's `model` and `usage` and ends the spans when the body ends.
    pub fn into_tap(self) -> Tap {
        Tap {
            server: self.cx,
            attempt: self.attempt,
            buf: Vec::new(),
            overflow: false,
            response_model: None,
            usage: None,
            broken: None,
        }
    }
}

/// One upstream attempt: its CLIENT span (ended when the last handle on its context is
/// dropped) and the trace-context headers it sends.
pub struct Attempt {
    cx: Context,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Attempt {
    /// `traceparent` (and `tracestate`) for the upstream request.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The upstream answered with `status`.
    pub fn answered(&self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(""));
        }
    }

    /// The attempt failed before an answer (connect error, timeout, …): the error's code.
    pub fn failed(&self, code: &'static str) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", code));
        span.set_status(Status::error(""));
    }
}

/// Reads the upstream answer's `model` and `usage` (each SSE event, or the whole JSON body)
/// and ends the request's spans when the body is done.
pub struct Tap {
    server: Context,
    attempt: Option<Context>,
    buf: Vec<u8>,
    overflow: bool,
    response_model: Option<String>,
    usage: Option<(i64, i64)>,
    /// The answer broke off (the client got an error event or a cut body): its error code.
    broken: Option<&'static str>,
}

/// Largest JSON answer kept to read its `model` and `usage`.
const MAX_READ: usize = 4 * 1024 * 1024;

#[derive(serde::Deserialize)]
struct Answer {
    model: Option<String>,
    usage: Option<Usage>,
}

#[derive(serde::Deserialize)]
struct Usage {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    crate::gateway::relay::sse::find(haystack, needle).is_some()
}

impl Tap {
    /// A response that is not relayed: the spans end now.
    pub fn end_now(self) {
        drop(self);
    }

    fn read(&mut self, json: &[u8]) {
        let Ok(a) = serde_json::from_slice::<Answer>(json) else {
            return;
        };
        if self.response_model.is_none() {
            self.response_model = a.model;
        }
        if let Some(u) = a.usage {
            self.usage = Some((
                u.prompt_tokens.unwrap_or(0),
                u.completion_tokens.unwrap_or(0),
            ));
        }
    }
}

impl crate::gateway::relay::body::EventFilter for Tap {
    fn on_event(&mut self, event: &[u8]) -> crate::gateway::relay::body::EventAction {
        // Only the events that can tell something are parsed: the first (its model) and
        // the one with usage.
        let wanted = (self.response_model.is_none() && contains(event, b"\"model\""))
            || contains(event, b"\"usage\"");
        if wanted {
            if let Some(data) = event
                .strip_prefix(b"data:")
                .map(|d| d.strip_prefix(b" ").unwrap_or(d))
            {
                let end = data
                    .iter()
                    .position(|b| *b == b'\n' || *b == b'\r')
                    .unwrap_or(data.len());
                self.read(&data[..end]);
            }
        }
        crate::gateway::relay::body::EventAction::Keep
    }

    fn on_broken(&mut self, code: &'static str) {
        self.broken = Some(code);
    }
}

impl crate::gateway::relay::body::BodyObserver for Tap {
    fn on_chunk(&mut self, chunk: &[u8]) {
        if self.overflow {
            return;
        }
        if self.buf.len() + chunk.len() > MAX_READ {
            self.overflow = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(chunk);
    }

    fn on_end(&mut self) {
        if !self.overflow {
            let buf = std::mem::take(&mut self.buf);
            self.read(&buf);
        }
    }

    fn on_broken(&mut self, code: &'static str) {
        self.broken = Some(code);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let mut attrs = Vec::with_capacity(3);
        if let Some(m) = &self.response_model {
            attrs.push(KeyValue::new("gen_ai.response.model", m.clone()));
        }
        if let Some((input, output)) = self.usage {
            attrs.push(KeyValue::new("gen_ai.usage.input_tokens", input));
            attrs.push(KeyValue::new("gen_ai.usage.output_tokens", output));
        }
        // A 200 whose answer broke off is a failed request all the same.
        if let Some(code) = self.broken {
            attrs.push(KeyValue::new("error.type", code));
        }
        // The attempt first: a child ends before its parent.
        if let Some(a) = &self.attempt {
            if self.broken.is_some() {
                a.span().set_status(Status::error(""));
            }
            a.span().set_attributes(attrs.iter().cloned());
            a.span().end();
        }
        if self.broken.is_some() {
            self.server.span().set_status(Status::error(""));
        }
        self.server.span().set_attributes(attrs);
        self.server.span().end();
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut Vec<(HeaderName, HeaderValue)>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.push((n, v));
        }
    }
}

/// The trace-context headers a traced request sends in place of the client's own.
pub fn is_trace_context(name: &HeaderName) -> bool {
    matches!(name.as_str(), "traceparent" | "tracestate")
}
