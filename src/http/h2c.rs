//! One h2c connection (HTTP/2 with prior knowledge) on hyper's server, with the idle limit hyper
//! does not have: a connection with no request open for `limits.keep_alive_timeout` is sent a
//! GOAWAY and closed, as an idle HTTP/1.1 keep-alive connection is. Without it, every h2c client
//! that connected once (or a peer that only sent the preface) would hold a socket until the
//! process' open-file limit ran out.
//!
//! A request counts as open from the moment hyper hands it over until its answer's body is sent
//! whole or dropped (a client that resets the stream), so a long stream never looks idle.
//!
//! `limits.send_timeout` here: a client that stops reading does not block the socket (HTTP/2
//! flow control stops the sender first), so besides the socket's own write timeout the
//! connection is ended once hyper has owed an answer's body its next poll for that long (the
//! body handed over a frame and hyper, out of window, did not come back for another).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::server::{Handler, RequestBody};
use super::BoxError;

/// How long an idle connection told to go away may take to answer the GOAWAY's PING.
const GOAWAY_WAIT: Duration = Duration::from_secs(2);

/// The requests a connection has open, and when the last one ended.
struct Activity {
    /// When the connection began; the times below count from it.
    began: Instant,
    open: AtomicUsize,
    /// Milliseconds after `began` at which `open` last fell to zero (0: never had a request).
    idle_since_ms: AtomicU64,
    /// The answers' bodies hyper is sending.
    bodies: Mutex<Vec<Weak<Owed>>>,
}

/// Since when (milliseconds after [`Activity::began`]) hyper owes an answer's body its next
/// poll: the body handed over a frame and hyper has not asked for another. 0: nothing owed
/// (hyper waits for the body, or the body is done).
#[derive(Default)]
struct Owed(AtomicU64);

impl Activity {
    fn new() -> Self {
        Activity {
            began: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            bodies: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        (self.began.elapsed().as_millis() as u64).max(1)
    }

    /// Watches a new answer's body.
    fn track(&self) -> Arc<Owed> {
        let owed = Arc::new(Owed::default());
        let mut bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        bodies.retain(|b| b.strong_count() > 0);
        bodies.push(Arc::downgrade(&owed));
        owed
    }

    /// The longest time hyper has owed any body its next poll.
    fn stalled_for(&self) -> Duration {
        let now = self.now_ms();
        let bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = bodies
            .iter()
            .filter_map(Weak::upgrade)
            .map(|o| o.0.load(Ordering::Acquire))
            .filter(|&t| t != 0)
            .min();
        oldest.map_or(Duration::ZERO, |t| {
            Duration::from_millis(now.saturating_sub(t))
        })
    }

    fn begin(self: &Arc<Self>) -> OpenRequest {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenRequest(Arc::clone(self))
    }

    /// How long the connection has had no request open; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.began.elapsed().saturating_sub(since))
    }
}

/// One open request; dropped with the answer's body (or with the request, if it never got one).
struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let a = &self.0;
        // Stamped before the count falls: a check that sees zero open also sees this time.
        let now = a.began.elapsed().as_millis() as u64;
        a.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        a.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The handler's answer body, holding its request open until it is sent or dropped.
struct CountedBody<B> {
    body: B,
    open: OpenRequest,
    owed: Arc<Owed>,
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let owed = match &polled {
            Poll::Ready(Some(Ok(_))) => this.open.0.now_ms(),
            _ => 0,
        };
        this.owed.0.store(owed, Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves one h2c connection until the client closes it, it idles for `keep_alive`, hyper
/// owes an answer's body its next poll for `send` (the client stopped reading), or `stop`
/// turns true (then in-flight streams finish first: hyper's graceful shutdown).
pub async fn serve<H, I>(
    stream: I,
    builder: &http2::Builder<TokioExecutor>,
    keep_alive: Duration,
    send: Duration,
    mut stop: watch::Receiver<bool>,
    handler: H,
    peer: SocketAddr,
) where
    H: Handler + Clone + Send + Sync + 'static,
    H::Body: Unpin + 'static,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let counter = Arc::clone(&activity);
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let open = counter.begin();
        // The handler boxes the request's future: hyper keeps room for this one in every
        // stream, so it stays small.
        let handled = handler.handle(req.map(RequestBody::incoming));
        async move {
            let resp = handled.await;
            let owed = open.0.track();
            Ok::<_, std::convert::Infallible>(resp.map(|body| CountedBody { body, open, owed }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async { stop.wait_for(|&s| s).await.map(|_| ()) };
    tokio::pin!(stopping);
    let idle_check = tokio::time::sleep(keep_alive);
    tokio::pin!(idle_check);
    let stall_check = tokio::time::sleep(send / 4);
    tokio::pin!(stall_check);
    let served = loop {
        tokio::select! {
            served = conn.as_mut() => break served,
            _ = &mut stopping => {
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
            _ = idle_check.as_mut() => {
                let next = match activity.idle_for() {
                    Some(idle) if idle >= keep_alive => {
                        tracing::debug!(%peer, "closing an idle h2c connection");
                        // GOAWAY, then a PING whose answer tells that no request is on its way;
                        // a peer that never answers is not waited for longer than this.
                        conn.as_mut().graceful_shutdown();
                        match tokio::time::timeout(GOAWAY_WAIT, conn.as_mut()).await {
                            Ok(served) => break served,
                            Err(_) => return,
                        }
                    }
                    Some(idle) => keep_alive - idle,
                    // Busy: look again a whole timeout later (a wake-up per timeout, not per
                    // request).
                    None => keep_alive,
                };
                idle_check.as_mut().reset(tokio::time::Instant::now() + next);
            }
            _ = stall_check.as_mut() => {
                if activity.stalled_for() >= send {
                    tracing::debug!(%peer, "closing an h2c connection whose client stopped reading");
                    return;
                }
                stall_check.as_mut().reset(tokio::time::Instant::now() + send / 4);
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}
