//! Stage 7: the in-flight record of a request, finished when the response body is (or dropped,
//! if the client went away), so latency, time to first byte and bytes are the real ones. It
//! becomes the access log line (when on) and the end record of [`crate::observe::finished`]
//! (always: the status page's live statistics read every request).
//! It never holds a key or an `Authorization` value: only the principal's label.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TARGET: &str = "sophgate::access";

#[derive(Debug)]
pub struct AccessLog {
    pub enabled: bool,
    pub request_id: crate::gateway::request_id::RequestId,
    /// When the request began.
    pub start: Option<Instant>,
    /// The record has gone to the log and the end record's consumers.
    pub done: bool,
    pub client_ip: Option<IpAddr>,
    pub principal: Option<Arc<str>>,
    pub method: http::Method,
    pub path: String,
    pub model: Option<String>,
    pub status: u16,
    pub stream: bool,
    pub first_byte: Option<Duration>,
    pub bytes: u64,
    /// How the request ended (see [`outcome`]); `None` until it is known: a record dropped
    /// with none is a client that left before the answer began.
    pub outcome: Option<&'static str>,
    /// The `error.code` of an error the gateway answered or ended a stream with.
    pub error: Option<&'static str>,
    /// The answer has no body to send (HEAD, 204, 304): the server drops it unread, which is
    /// not a client leaving.
    pub bodiless: bool,
    /// The generation has metrics on: the end record goes to them.
    pub metrics: bool,
    /// The `route` label (see `observe::finished::route`).
    pub route: &'static str,
    /// The upstream whose answer the client got.
    pub upstream: Option<Arc<str>>,
    /// Streams: arrival to the first content event (plain answers use `first_byte`).
    pub first_token: Option<Duration>,
    pub token_gaps: Option<crate::observe::histogram::LocalHistogram>,
    pub usage: Option<crate::observe::finished::Usage>,
    /// What the usage taps read of the answer (when no stream tap did).
    pub tally: Option<Arc<crate::gateway::relay::usage::UsageTally>>,
    /// Keeps `sophgate_inflight_requests` up until the record is dropped.
    pub inflight: Option<crate::observe::metrics::Inflight>,
}

/// The values of the access log's `outcome` field (docs/operations.md, "Logging").
pub mod outcome {
    /// A 2xx/3xx answer, delivered whole.
    pub const OK: &str = "ok";
    /// The client left before the answer ended (`status=0`: before it began).
    pub const CLIENT_GONE: &str = "client_gone";
    /// A 4xx the gateway answered itself (the code is in `error`).
    pub const REJECTED: &str = "rejected";
    /// The upstream answered 4xx/5xx (passed through), could not be reached or used (502), or
    /// broke off its answer.
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    /// The upstream did not answer in time (504), or went silent or ran over the total time
    /// mid-answer.
    pub const TIMEOUT: &str = "timeout";
    /// A script failed: 500 `script_error`, or an `on_event` hook ended a stream.
    pub const SCRIPT_ERROR: &str = "script_error";
    /// Any other 5xx the gateway answered itself.
    pub const ERROR: &str = "error";

    /// The outcome of an answer that reached the client's side whole, by its status.
    pub fn of_status(status: u16) -> &'static str {
        if status < 400 {
            OK
        } else {
            UPSTREAM_ERROR
        }
    }
}

impl AccessLog {
    pub fn new(
        enabled: bool,
        request_id: crate::gateway::request_id::RequestId,
        method: http::Method,
        path: &str,
    ) -> Self {
        AccessLog {
            enabled,
            request_id,
            start: Some(Instant::now()),
            done: false,
            client_ip: None,
            principal: None,
            method,
            // Nothing to copy for a record that is never written.
            path: if enabled {
                path.chars().take(256).collect()
            } else {
                String::new()
            },
            model: None,
            status: 0,
            stream: false,
            first_byte: None,
            bytes: 0,
            outcome: None,
            error: None,
            bodiless: false,
            metrics: false,
            route: crate::observe::finished::route::OTHER,
            upstream: None,
            first_token: None,
            token_gaps: None,
            usage: None,
            tally: None,
            inflight: None,
        }
    }

    /// The record of a `route` request; with `metrics` on it goes to them when it ends, and
    /// counts as in flight until then.
    pub fn metered(mut self, metrics: bool, route: &'static str) -> Self {
        self.route = route;
        if route != crate::observe::finished::route::ADMIN {
            // Paired with the live statistics' `record` when the record ends (see
            // `observe::finished::finished`).
            crate::observe::live::started();
        }
        if metrics {
            self.metrics = true;
            self.inflight = Some(crate::observe::metrics::Inflight::enter(route));
        }
        self
    }

    /// Whether the record is still to go out (it goes once, when the request ends).
    pub fn wanted(&self) -> bool {
        !self.done
    }

    /// Takes what a stream tap saw of the answer.
    pub fn absorb(&mut self, tap: crate::observe::stream_tap::StreamTap) {
        self.first_token = tap.first_token;
        self.token_gaps = tap.token_gaps;
        self.usage = tap.usage;
    }

    /// Called for every body frame sent to the client.
    pub fn on_bytes(&mut self, n: usize) {
        if self.first_byte.is_none() {
            self.first_byte = self.start.map(|s| s.elapsed());
        }
        self.bytes += n as u64;
    }

    pub fn emit(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let (log, metrics) = (self.enabled, self.metrics);
        let duration = self.start.map(|s| s.elapsed()).unwrap_or_default();
        if log {
            self.write_line(duration);
        }
        crate::observe::finished::finished(&crate::observe::finished::Finished {
            request_id: self.request_id.as_str(),
            route: self.route,
            method: &self.method,
            path: &self.path,
            client_ip: self.client_ip,
            key: self.principal.as_ref(),
            model: self.model.as_deref(),
            upstream: self.upstream.as_ref(),
            status: self.status,
            outcome: self.outcome.unwrap_or(outcome::CLIENT_GONE),
            error: self.error,
            stream: self.stream,
            duration,
            ttft: if self.stream {
                self.first_token
            } else {
                self.first_byte
            },
            token_gaps: self.token_gaps.as_ref(),
            usage: self.usage.or_else(|| {
                let (input, output) = self.tally.as_ref()?.get();
                (input + output > 0).then_some(crate::observe::finished::Usage { input, output })
            }),
            bytes: self.bytes,
            metrics,
        });
        self.inflight = None;
    }

    fn write_line(&self, latency: Duration) {
        // Numbers, so a JSON log holds numbers (rounded to the microsecond); no time to first
        // byte (nothing was sent) leaves the field out.
        let ms = |d: Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        let latency_ms = ms(latency);
        let ttfb_ms = self.first_byte.map(ms);
        tracing::info!(
            target: TARGET,
            request_id = %self.request_id,
            client_ip = %self.client_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            key = %self.principal.as_deref().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            model = %self.model.as_deref().unwrap_or("-"),
            status = self.status,
            stream = self.stream,
            latency_ms,
            ttfb_ms,
            bytes = self.bytes,
            outcome = self.outcome.unwrap_or(outcome::CLIENT_GONE),
            error = self.error.unwrap_or("-"),
            "request"
        );
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.emit();
    }
}
