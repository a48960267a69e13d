//! Stage 7: one line per request, written when the response body is finished (or dropped, if
//! the client went away), so latency, time to first byte and bytes are the real ones.
//! It never holds a key or an `Authorization` value: only the principal's label.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TARGET: &str = "sophgate::access";

#[derive(Debug)]
pub struct AccessLog {
    pub enabled: bool,
    pub request_id: crate::gateway::request_id::RequestId,
    /// When the request began; read only for a record that is written.
    pub start: Option<Instant>,
    pub client_ip: Option<IpAddr>,
    pub principal: Option<Arc<str>>,
    pub method: http::Method,
    pub path: String,
    pub model: Option<String>,
    pub status: u16,
    pub stream: bool,
    pub first_byte: Option<Duration>,
    pub bytes: u64,
    pub outcome: &'static str,
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
            start: enabled.then(Instant::now),
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
            outcome: "ok",
        }
    }

    /// Called for every body frame sent to the client.
    pub fn on_bytes(&mut self, n: usize) {
        if self.first_byte.is_none() {
            self.first_byte = self.start.map(|s| s.elapsed());
        }
        self.bytes += n as u64;
    }

    pub fn emit(&mut self) {
        if !self.enabled {
            return;
        }
        self.enabled = false;
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
            outcome = self.outcome,
            "request"
        );
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.emit();
    }
}
