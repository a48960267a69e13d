//! The response body type of the gateway: a fixed buffer, or a relay of the upstream body
//! (with SSE framing and an idle timeout for event streams). It carries the access-log record
//! so the log line is written when the last byte leaves, or when the client disconnects.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};

use crate::gateway::relay::access_log::{outcome, AccessLog};
use crate::gateway::relay::sse::{error_event, SseFramer};
use crate::http::client::pool::PooledBody;
use crate::observe::stream_tap::StreamTap;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a relayed body comes from.
// The relay holding this is boxed already; boxing the large variant too would cost a second
// allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum UpstreamStream {
    /// Read off a pooled connection, plain or TLS (no extra task, no channel hop).
    Pooled(PooledBody),
    /// reqwest's body stream (proxied upstreams, unusual targets) or any other stream of chunks.
    Stream(Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>),
}

impl UpstreamStream {
    /// The next chunk; errors become their text (they are only logged).
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, String>>> {
        match self {
            UpstreamStream::Pooled(b) => b
                .poll_chunk(cx)
                .map(|o| o.map(|r| r.map_err(|e| e.to_string()))),
            UpstreamStream::Stream(s) => s.as_mut().poll_next(cx).map(|o| {
                o.map(|r| r.map_err(|e| crate::gateway::upstream::errors::upstream_error_text(&e)))
            }),
        }
    }
}

/// Something that must live exactly as long as the response: a concurrency permit, a pooled
/// key's in-flight lease, …
pub type Guard = Box<dyn std::any::Any + Send>;

/// What an [`EventFilter`] does with one SSE event.
pub enum EventAction {
    Keep,
    Drop,
    Replace(Bytes),
    /// Send `event` in place of the event, then end the stream (e.g. an error event); the
    /// access log gets `outcome` and the error `code`.
    Stop {
        event: Bytes,
        outcome: &'static str,
        code: &'static str,
    },
}

/// Looks at (and may change or drop) each complete SSE event of a streamed answer.
/// `event` is one event including its terminating blank line.
pub trait EventFilter: Send {
    fn on_event(&mut self, event: &[u8]) -> EventAction;

    /// The stream broke off before its end (upstream gone, idle or total timeout); `code`
    /// is the error code the client's last event carries.
    fn on_broken(&mut self, _code: &'static str) {}
}

/// Sees every byte of a non-streamed answer (e.g. to read its `usage`).
pub trait BodyObserver: Send {
    fn on_chunk(&mut self, chunk: &[u8]);
    fn on_end(&mut self);

    /// The body broke off before its end (upstream gone, idle or total timeout); `code` as
    /// for [`EventFilter::on_broken`].
    fn on_broken(&mut self, _code: &'static str) {}
}

/// Relays an upstream body to the client as it arrives.
pub struct Relay {
    stream: UpstreamStream,
    /// Present for `text/event-stream` answers.
    sse: Option<SseFramer>,
    idle_timeout: Duration,
    /// Armed only when the relay first has to wait: most non-streamed answers arrive in one
    /// poll and never pay for a timer.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the last chunk arrived; the idle deadline counts from here.
    last_chunk: tokio::time::Instant,
    /// The upstream's `Content-Length` (plain bodies): the client side stops polling once that
    /// many bytes went out, so the relay has to notice the end by counting.
    expected_len: Option<u64>,
    relayed: u64,
    /// Whole-answer deadline (`timeouts.total`), if any.
    total: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    /// A filter ended the stream: the access log's outcome and error code.
    stopped: Option<(&'static str, &'static str)>,
    filters: Vec<Box<dyn EventFilter>>,
    observers: Vec<Box<dyn BodyObserver>>,
    /// Reads the answer for the end record (first token, token gaps, usage).
    tap: Option<Box<StreamTap>>,
    /// The upstream it comes from, for the end record.
    upstream: Option<std::sync::Arc<str>>,
    /// Released when the body is finished or dropped.
    _guards: Vec<Guard>,
}

impl Relay {
    pub fn new(stream: UpstreamStream, sse: bool, idle_timeout: Duration) -> Self {
        Relay {
            stream,
            sse: sse.then(SseFramer::default),
            idle_timeout,
            idle: None,
            last_chunk: tokio::time::Instant::now(),
            expected_len: None,
            relayed: 0,
            total: None,
            done: false,
            stopped: None,
            filters: Vec::new(),
            observers: Vec::new(),
            tap: None,
            upstream: None,
            _guards: Vec::new(),
        }
    }

    pub fn with_total_timeout(mut self, total: Option<Duration>) -> Self {
        self.total = total.map(|d| Box::pin(tokio::time::sleep(d)));
        self
    }

    /// The upstream announced this body length (ignored for event streams).
    pub fn with_expected_len(mut self, len: Option<u64>) -> Self {
        self.expected_len = len;
        self
    }

    pub fn guard(&mut self, guard: Guard) {
        self._guards.push(guard);
    }

    pub fn is_sse(&self) -> bool {
        self.sse.is_some()
    }

    /// Adds a filter for SSE events (ignored for other bodies).
    pub fn filter(&mut self, f: Box<dyn EventFilter>) {
        self.filters.push(f);
    }

    /// Adds a filter that sees each event before the others do.
    pub fn filter_first(&mut self, f: Box<dyn EventFilter>) {
        self.filters.insert(0, f);
    }

    /// Adds an observer for non-SSE bodies (ignored for event streams).
    pub fn observe(&mut self, o: Box<dyn BodyObserver>) {
        self.observers.push(o);
    }

    /// Reads the answer for the end record; sees each event before the filters do.
    pub fn tap(&mut self, tap: StreamTap) {
        self.tap = Some(Box::new(tap));
    }

    /// Runs the filters over a block of complete events; `None` if every event was dropped.
    /// Until some event changes the block passes through as it is (no copy).
    fn apply_filters(&mut self, block: Bytes) -> Option<Bytes> {
        if self.filters.is_empty() && self.tap.is_none() {
            return Some(block);
        }
        let mut out: Option<bytes::BytesMut> = None;
        let mut start = 0;
        while start < block.len() && !self.done {
            let end = next_event_end(&block, start);
            let event = &block[start..end];
            let mut current: Option<Bytes> = None;
            if let Some(tap) = self.tap.as_mut() {
                tap.on_event(event);
            }
            let mut dropped = false;
            for f in self.filters.iter_mut() {
                match f.on_event(current.as_deref().unwrap_or(event)) {
                    EventAction::Keep => {}
                    EventAction::Drop => {
                        dropped = true;
                        break;
                    }
                    EventAction::Replace(b) => current = Some(b),
                    EventAction::Stop {
                        event,
                        outcome,
                        code,
                    } => {
                        current = Some(event);
                        self.done = true;
                        self.stopped = Some((outcome, code));
                        break;
                    }
                }
            }
            if dropped || current.is_some() {
                let buf = out.get_or_insert_with(|| bytes::BytesMut::from(&block[..start]));
                if let Some(b) = current.filter(|_| !dropped) {
                    buf.extend_from_slice(&b);
                }
            } else if let Some(buf) = out.as_mut() {
                buf.extend_from_slice(event);
            }
            start = end;
        }
        match out {
            None => Some(block),
            Some(buf) => (!buf.is_empty()).then(|| buf.freeze()),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, RelayError>>> {
        let next = self.poll_upstream(cx);
        if let Poll::Ready(Some(Err(kind))) = &next {
            let code = kind.code();
            for f in self.filters.iter_mut() {
                f.on_broken(code);
            }
            for o in self.observers.iter_mut() {
                o.on_broken(code);
            }
        }
        next
    }

    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, RelayError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.stream.poll_chunk(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.last_chunk = tokio::time::Instant::now();
                    match self.sse.as_mut() {
                        None => {
                            for o in self.observers.iter_mut() {
                                o.on_chunk(&chunk);
                            }
                            if let Some(t) = self.tap.as_mut() {
                                t.on_chunk(&chunk);
                            }
                            self.relayed += chunk.len() as u64;
                            if self.expected_len.is_some_and(|n| self.relayed >= n) {
                                self.done = true;
                                self.observers_end();
                            }
                            return Poll::Ready(Some(Ok(chunk)));
                        }
                        Some(f) => match f.push(chunk) {
                            Some(events) => match self.apply_filters(events) {
                                Some(out) => return Poll::Ready(Some(Ok(out))),
                                None => continue,
                            },
                            None => continue,
                        },
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    tracing::warn!(error = %e, "upstream body failed mid-way");
                    return Poll::Ready(Some(Err(RelayError::Broken)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    self.observers_end();
                    // An unterminated last event is passed on as it came.
                    let rest = self.sse.as_mut().and_then(|f| f.take_rest());
                    return Poll::Ready(rest.map(Ok));
                }
                Poll::Pending => {
                    if let Some(total) = self.total.as_mut() {
                        if total.as_mut().poll(cx).is_ready() {
                            self.done = true;
                            tracing::warn!("upstream answer exceeded the total timeout");
                            return Poll::Ready(Some(Err(RelayError::Total)));
                        }
                    }
                    // The timer is moved on only when it fires, not after every chunk: a
                    // stream's chunks would otherwise take a timer out of the wheel and put it
                    // back each time.
                    let deadline = self.last_chunk + self.idle_timeout;
                    let idle = self
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    while idle.as_mut().poll(cx).is_ready() {
                        if deadline > idle.deadline() {
                            idle.as_mut().reset(deadline);
                            continue;
                        }
                        self.done = true;
                        tracing::warn!(timeout = ?self.idle_timeout, "upstream went silent mid-body");
                        return Poll::Ready(Some(Err(RelayError::Idle)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Relay {
    fn observers_end(&mut self) {
        for o in self.observers.iter_mut() {
            o.on_end();
        }
        if let Some(t) = self.tap.as_mut() {
            t.on_end();
        }
    }
}

enum RelayError {
    Broken,
    Idle,
    Total,
}

impl RelayError {
    /// The error code the client (and the access log) gets.
    fn code(&self) -> &'static str {
        match self {
            RelayError::Broken => "upstream_stream_broken",
            RelayError::Idle => "upstream_idle_timeout",
            RelayError::Total => "upstream_total_timeout",
        }
    }
}

/// End offset of the event starting at `start` (just past its blank line), or the block's end.
fn next_event_end(block: &[u8], start: usize) -> usize {
    let mut i = start;
    while i + 1 < block.len() {
        if block[i] == b'\n' {
            if block[i + 1] == b'\n' {
                return i + 2;
            }
            if block[i + 1] == b'\r' && block.get(i + 2) == Some(&b'\n') {
                return i + 3;
            }
        }
        i += 1;
    }
    block.len()
}

enum Inner {
    Full(Option<Bytes>),
    Relay(Box<Relay>),
}

pub struct ResponseBody {
    inner: Inner,
    log: Option<Box<AccessLog>>,
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Full(if bytes.is_empty() { None } else { Some(bytes) }),
            log: None,
        }
    }

    /// The upstream whose answer this is.
    pub fn served_by(&mut self, upstream: std::sync::Arc<str>) {
        if let Inner::Relay(r) = &mut self.inner {
            r.upstream = Some(upstream);
        }
    }

    pub fn relay(relay: Relay) -> Self {
        ResponseBody {
            inner: Inner::Relay(Box::new(relay)),
            log: None,
        }
    }

    /// The relay inside, to attach filters, observers and guards.
    pub fn relay_mut(&mut self) -> Option<&mut Relay> {
        match &mut self.inner {
            Inner::Relay(r) => Some(r),
            Inner::Full(_) => None,
        }
    }

    pub fn is_event_stream(&self) -> bool {
        matches!(&self.inner, Inner::Relay(r) if r.sse.is_some())
    }

    pub fn set_log(&mut self, log: Box<AccessLog>) {
        self.log = Some(log);
    }

    /// Hands the tap's findings to the record and finishes it.
    fn end_log(&mut self) {
        if let Some(mut log) = self.log.take() {
            self.absorb_tap(&mut log);
            log.emit();
        }
    }

    fn absorb_tap(&mut self, log: &mut AccessLog) {
        if let Inner::Relay(r) = &mut self.inner {
            if let Some(tap) = r.tap.take() {
                log.absorb(*tap);
            }
            if let Some(upstream) = r.upstream.take() {
                log.upstream = Some(upstream);
            }
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(b: Bytes) -> Self {
        ResponseBody::full(b)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let out: Option<Result<Bytes, BoxError>> = match &mut this.inner {
            Inner::Full(b) => b.take().map(Ok),
            Inner::Relay(r) => {
                let is_sse = r.sse.is_some();
                let next = r.poll_next(cx);
                if let Some((outcome, code)) = r.stopped.take() {
                    if let Some(log) = this.log.as_mut() {
                        log.outcome = Some(outcome);
                        log.error = Some(code);
                    }
                }
                match next {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => None,
                    Poll::Ready(Some(Ok(b))) => Some(Ok(b)),
                    Poll::Ready(Some(Err(kind))) => {
                        let code = kind.code();
                        let (msg, ended) = match kind {
                            RelayError::Broken => (
                                "The upstream connection broke before the answer was complete",
                                outcome::UPSTREAM_ERROR,
                            ),
                            RelayError::Idle => (
                                "The upstream stopped sending before the answer was complete",
                                outcome::TIMEOUT,
                            ),
                            RelayError::Total => (
                                "The upstream answer took longer than the total time allowed",
                                outcome::TIMEOUT,
                            ),
                        };
                        if let Some(log) = this.log.as_mut() {
                            log.outcome = Some(ended);
                            log.error = Some(code);
                        }
                        if is_sse {
                            // Headers are gone already: the error travels as the last event.
                            Some(Ok(error_event(msg, "upstream_error", code)))
                        } else {
                            // A plain body cannot carry an error: abort so the client sees a
                            // truncated response rather than a silently short one.
                            Some(Err(msg.into()))
                        }
                    }
                }
            }
        };
        match out {
            Some(Ok(bytes)) => {
                if let Some(log) = this.log.as_mut() {
                    log.on_bytes(bytes.len());
                }
                if this.is_end_stream() {
                    // The last chunk (by Content-Length): the end may never be polled.
                    this.end_log();
                }
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Some(Err(e)) => {
                this.end_log();
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.end_log();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Relay(r) => r.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Relay(_) => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(mut log) = self.log.take() {
            self.absorb_tap(&mut log);
            self.log = Some(log);
        }
        if let Some(log) = self.log.as_mut() {
            if log.wanted() && !log.bodiless {
                let unfinished = match &self.inner {
                    Inner::Full(b) => b.is_some(),
                    Inner::Relay(r) => !r.done,
                };
                if unfinished {
                    log.outcome = Some(outcome::CLIENT_GONE);
                }
            }
        }
    }
}
