//! The end record of one request: what finished, delivered at one place ([`finished`]) when
//! its answer ends (the last byte sent, or the client gone). Every consumer that wants to know
//! about finished requests (metrics, status page, usage ledger, traces) reads this one record.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Token usage the upstream reported (`usage.prompt_tokens` / `usage.completion_tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

/// The `route` label: what kind of request this was.
pub mod route {
    pub const CHAT: &str = "chat";
    pub const MODELS: &str = "models";
    pub const PASSTHROUGH: &str = "passthrough";
    pub const ADMIN: &str = "admin";
    pub const HEALTH: &str = "health";
    pub const OTHER: &str = "other";
}

/// One finished request. Borrowed from the in-flight record: copy out what you keep.
#[derive(Debug)]
pub struct Finished<'a> {
    pub request_id: &'a str,
    /// One of [`route`].
    pub route: &'static str,
    pub method: &'a http::Method,
    /// The request path, at most 256 characters (empty when the access log is off).
    pub path: &'a str,
    pub client_ip: Option<IpAddr>,
    /// The key's label (never the key itself); `None` before auth.
    pub key: Option<&'a Arc<str>>,
    /// The model the client asked for (after `default_model`); `None` when none.
    pub model: Option<&'a str>,
    /// The upstream whose answer the client got; `None` when none did.
    pub upstream: Option<&'a Arc<str>>,
    /// The status the client got (0: the client left before the answer began).
    pub status: u16,
    /// The access log's outcome (`ok`, `rejected`, `upstream_error`, …).
    pub outcome: &'static str,
    /// The `error.code` the gateway answered or ended a stream with.
    pub error: Option<&'static str>,
    pub stream: bool,
    /// From arrival to the last byte (or the client leaving).
    pub duration: Duration,
    /// Streams: to the first event carrying content or a tool call; other answers: to the
    /// first byte.
    pub ttft: Option<Duration>,
    /// Streams: the gaps between content events (for `time_per_output_token`).
    pub token_gaps: Option<&'a super::histogram::LocalHistogram>,
    pub usage: Option<Usage>,
    pub bytes: u64,
    /// Whether the generation that served it has metrics on.
    pub metrics: bool,
}

/// The one fan-out for finished requests: the metrics (when on) and the status page's live
/// statistics (every request but the admin API's own, which the page itself polls).
pub fn finished(record: &Finished<'_>) {
    if record.metrics {
        super::metrics::request_finished(record);
    }
    if record.route != route::ADMIN {
        let (input_tokens, output_tokens) = record.usage.map_or((0, 0), |u| (u.input, u.output));
        super::live::record(&super::live::Finished {
            route: record.route,
            key: record.key.map(|k| &**k),
            model: record.model,
            status: record.status,
            error: record.error,
            request_id: record.request_id,
            duration: record.duration,
            ttft: record.ttft,
            stream: record.stream,
            input_tokens,
            output_tokens,
        });
    }
}
