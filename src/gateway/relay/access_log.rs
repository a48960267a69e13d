//! Stage 7: one line per request, written when the response body is finished (or dropped, if
//! the client went away), so latency, time to first byte and bytes are the real ones.
//! It never holds a key or an `Authorization` value: only the principal's label.
//! The same record feeds the status page's live statistics ([`crate::observe::live`]) when it
//! ends, whether or not the log line is written.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gateway::relay::usage::UsageTally;
use crate::gateway::routes::{route, Route};
use crate::observe::live;

pub const TARGET: &str = "sophgate::access";

#[derive(Debug)]
pub struct AccessLog {
    pub enabled: bool,
    pub request_id: crate::gateway::request_id::RequestId,
    /// When the request began.
    pub start: Option<Instant>,
    /// The route's name for the live statistics (`chat`, `models`, `passthrough`, …).
    pub route: &'static str,
    /// Real token usage, when the answer's usage is read (keys with `tpm`).
    pub usage: Option<Arc<UsageTally>>,
    /// Written (or, with the log off, counted) already.
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
}

/// The values of the access log's `outcome` field (README, "Logs").
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
        live::started();
        AccessLog {
            enabled,
            request_id,
            start: Some(Instant::now()),
            route: route_label(path),
            usage: None,
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
        }
    }

    /// Called for every body frame sent to the client.
    pub fn on_bytes(&mut self, n: usize) {
        if self.first_byte.is_none() {
            self.first_byte = self.start.map(|s| s.elapsed());
        }
        self.bytes += n as u64;
    }

    /// Not yet ended: the answer is still on its way.
    pub fn pending(&self) -> bool {
        !self.done
    }

    /// What the live statistics take of this record.
    fn finished(&self) -> live::Finished<'_> {
        let (input_tokens, output_tokens) = self.usage.as_ref().map_or((0, 0), |u| u.get());
        live::Finished {
            route: self.route,
            key: self.principal.as_deref(),
            model: self.model.as_deref(),
            status: self.status,
            error: self.error,
            request_id: self.request_id.as_str(),
            duration: self.start.map_or(Duration::ZERO, |s| s.elapsed()),
            ttft: self.first_byte,
            stream: self.stream,
            input_tokens,
            output_tokens,
        }
    }

    pub fn emit(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        live::record(&self.finished());
        if !self.enabled {
            return;
        }
        // Numbers, so a JSON log holds numbers (rounded to the microsecond); no time to first
        // byte (nothing was sent) leaves the field out.
        let ms = |d: Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        let latency_ms = self.start.map_or(0.0, |s| ms(s.elapsed()));
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

/// The route's name as the live statistics and metrics label it.
fn route_label(path: &str) -> &'static str {
    match route(path) {
        Route::ChatCompletions => "chat",
        Route::Models => "models",
        Route::V1(_) => "passthrough",
        Route::Health => "health",
        Route::NotFound => "other",
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.emit();
    }
}
