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
use tokio::sync::OwnedSemaphorePermit;

use crate::pipeline::access_log::AccessLog;
use crate::pipeline::sse::{error_event, SseFramer};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type UpstreamStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// Relays an upstream body to the client as it arrives.
pub struct Relay {
    stream: UpstreamStream,
    /// Present for `text/event-stream` answers.
    sse: Option<SseFramer>,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    /// Holds the upstream concurrency slot until the body is finished or dropped.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Relay {
    pub fn new(
        stream: UpstreamStream,
        sse: bool,
        idle_timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Relay {
            stream,
            sse: sse.then(SseFramer::default),
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            done: false,
            _permit: permit,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, RelayError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = tokio::time::Instant::now() + self.idle_timeout;
                    self.idle.as_mut().reset(deadline);
                    match self.sse.as_mut() {
                        None => return Poll::Ready(Some(Ok(chunk))),
                        Some(f) => match f.push(chunk) {
                            Some(events) => return Poll::Ready(Some(Ok(events))),
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
                    // An unterminated last event is passed on as it came.
                    let rest = self.sse.as_mut().and_then(|f| f.take_rest());
                    return Poll::Ready(rest.map(Ok));
                }
                Poll::Pending => {
                    if self.idle.as_mut().poll(cx).is_ready() {
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

enum RelayError {
    Broken,
    Idle,
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

    pub fn empty() -> Self {
        ResponseBody {
            inner: Inner::Full(None),
            log: None,
        }
    }

    pub fn relay(relay: Relay) -> Self {
        ResponseBody {
            inner: Inner::Relay(Box::new(relay)),
            log: None,
        }
    }

    pub fn is_event_stream(&self) -> bool {
        matches!(&self.inner, Inner::Relay(r) if r.sse.is_some())
    }

    pub fn set_log(&mut self, log: Box<AccessLog>) {
        self.log = Some(log);
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
                match r.poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => None,
                    Poll::Ready(Some(Ok(b))) => Some(Ok(b)),
                    Poll::Ready(Some(Err(kind))) => {
                        let (msg, code) = match kind {
                            RelayError::Broken => (
                                "The upstream connection broke before the answer was complete",
                                "upstream_stream_broken",
                            ),
                            RelayError::Idle => (
                                "The upstream stopped sending before the answer was complete",
                                "upstream_idle_timeout",
                            ),
                        };
                        if let Some(log) = this.log.as_mut() {
                            log.outcome = code;
                        }
                        if is_sse {
                            // Headers are gone already: the error travels as the last event.
                            Some(Ok(error_event(msg, code)))
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
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Some(Err(e)) => {
                if let Some(mut log) = this.log.take() {
                    log.emit();
                }
                Poll::Ready(Some(Err(e)))
            }
            None => {
                if let Some(mut log) = this.log.take() {
                    log.emit();
                }
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
        if let Some(log) = self.log.as_mut() {
            if log.enabled {
                let unfinished = match &self.inner {
                    Inner::Full(b) => b.is_some(),
                    Inner::Relay(r) => !r.done,
                };
                if unfinished {
                    log.outcome = "client_disconnected";
                }
            }
        }
    }
}
