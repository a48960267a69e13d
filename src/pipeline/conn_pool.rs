//! Pooled HTTP/1.1 connections to one plain-HTTP upstream origin, driven inline by the request
//! that uses them.
//!
//! Why not reqwest here: a general client spawns a task per connection and hands the response
//! body over through a channel. Every chunk then costs a wake-up of another task, and the end of
//! a body is only seen after that task ran again, so the gateway writes the last chunk and the
//! end of the response to the client in two separate writes. Profiled under load that was a
//! third of the gateway's CPU (see README, Performance). Here the request's own task polls the
//! connection while it waits for the answer and while it relays the body: a chunk and the end of
//! the body arrive in the same poll, and nothing else is scheduled.
//!
//! Scope: `http://` upstreams without a proxy. HTTPS and proxied upstreams keep using reqwest
//! (rustls, HTTP/2 by ALPN, HTTP and SOCKS proxies), see [`super::forward`].
//!
//! Pool rules: idle connections are reused newest first; one idle longer than the upstream's
//! `keepalive_timeout`, one the upstream closed, or one whose answer was not read to the end is
//! dropped, never reused. A request is retried on a fresh connection only when a reused
//! connection failed before the request was written (so nothing can reach the upstream twice).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Sender = http1::SendRequest<Full<Bytes>>;
type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Why a request got no answer.
#[derive(Debug)]
pub enum PoolError {
    /// The TCP connection could not be made (refused, unreachable, DNS).
    Connect(std::io::Error),
    /// The TCP connection was not made within `connect_timeout`.
    ConnectTimeout,
    /// The connection failed while sending or waiting for the answer's head.
    Http(hyper::Error),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) => write!(f, "connect failed: {e}"),
            PoolError::ConnectTimeout => f.write_str("connect timed out"),
            PoolError::Http(e) => f.write_str(&super::forward::error_chain(e)),
        }
    }
}

/// One HTTP/1.1 connection: the handle to send on and the state machine that does the I/O.
struct Conn {
    sender: Sender,
    driver: Driver,
    /// The driver finished (the connection is closed).
    finished: bool,
}

impl Conn {
    /// Lets the connection do whatever I/O is ready; `Err` once it failed.
    fn drive(&mut self, cx: &mut Context<'_>) -> Result<(), hyper::Error> {
        if !self.finished {
            match Pin::new(&mut self.driver).poll(cx) {
                Poll::Ready(Ok(())) => self.finished = true,
                Poll::Ready(Err(e)) => {
                    self.finished = true;
                    return Err(e);
                }
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Ready for another request: open, idle, and wanting one. Polls the driver once (without
    /// a waker of interest) so a close the upstream sent meanwhile is noticed now.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx).is_ok() && !self.finished && self.sender.is_ready()
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// The pool for one upstream origin.
pub struct ConnPool {
    /// `host:port` to connect to.
    addr: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
    /// Whether the task that closes expired idle connections runs (started on first use,
    /// inside the runtime; it ends when the pool is dropped).
    sweeper: AtomicBool,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ConnPool {
    /// `addr` is `host:port`.
    pub fn new(
        addr: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: Option<usize>,
    ) -> Self {
        ConnPool {
            addr,
            connect_timeout,
            idle_timeout,
            max_idle: max_idle.unwrap_or(usize::MAX),
            idle: Mutex::new(Vec::new()),
            sweeper: AtomicBool::new(false),
        }
    }

    /// Closes idle connections older than `idle_timeout`, so a burst's connections do not stay
    /// open (or half-closed by the upstream) after traffic stops.
    fn start_sweeper(self: &Arc<Self>) {
        // A plain read on every request; the write happens once.
        if self.sweeper.load(Ordering::Relaxed) || self.sweeper.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<ConnPool> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.drop_expired();
            }
        });
    }

    fn drop_expired(&self) {
        let expired: Vec<Idle> = {
            let Ok(mut list) = self.idle.lock() else {
                return;
            };
            let now = Instant::now();
            let n = list
                .iter()
                .take_while(|i| now.duration_since(i.since) >= self.idle_timeout)
                .count();
            list.drain(..n).collect()
        };
        // Closed outside the lock.
        drop(expired);
    }

    /// The newest idle connection still fit for use; stale ones met on the way are dropped.
    fn checkout(&self) -> Option<Box<Conn>> {
        loop {
            let idle = {
                let mut list = self.idle.lock().ok()?;
                list.pop()?
            };
            let mut conn = idle.conn;
            if idle.since.elapsed() < self.idle_timeout && conn.reusable() {
                return Some(conn);
            }
        }
    }

    fn checkin(&self, mut conn: Box<Conn>) {
        if self.max_idle == 0 || !conn.reusable() {
            return;
        }
        let Ok(mut list) = self.idle.lock() else {
            return;
        };
        // Oldest first: make room from the front.
        let evicted = (list.len() >= self.max_idle).then(|| list.remove(0));
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
        drop(list);
        drop(evicted);
    }

    async fn connect(&self) -> Result<Box<Conn>, PoolError> {
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
        {
            Err(_) => return Err(PoolError::ConnectTimeout),
            Ok(Err(e)) => return Err(PoolError::Connect(e)),
            Ok(Ok(s)) => s,
        };
        // Small writes (request heads, SSE events) go out now, not after Nagle's delay.
        let _ = tcp.set_nodelay(true);
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(PoolError::Http)?;
        // Boxed once here: the pool and the bodies then move a pointer, not ~700 bytes.
        Ok(Box::new(Conn {
            sender,
            driver,
            finished: false,
        }))
    }

    /// Sends `req` (origin-form URI, `Host` set) and waits for the answer's head. The returned
    /// body owns the connection and gives it back to the pool once read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, PoolError> {
        self.start_sweeper();
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(c) => (c, true),
                // Boxed: connecting is rare, and its large future would otherwise be part of
                // (and moved with) every request's state.
                None => (Box::pin(self.connect()).await?, false),
            };
            match exchange(&mut conn, req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = PooledBody {
                        body,
                        conn: Some(conn),
                        pool: Arc::clone(self),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: safe to try again, on a new connection this time.
                    Some(back) if reused => req = back,
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }
}

/// Sends the request and drives the connection until the answer's head is in.
async fn exchange(
    conn: &mut Conn,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Full<Bytes>>>> {
    let mut answer = std::pin::pin!(conn.sender.try_send_request(req));
    std::future::poll_fn(|cx| {
        // Errors of the driver reach `answer` too (with the request, if it was not written).
        let _ = conn.drive(cx);
        answer.as_mut().poll(cx)
    })
    .await
}

/// An answer's body read straight off its pooled connection.
pub struct PooledBody {
    body: Incoming,
    /// `None` once the body ended (the connection went back to the pool) or failed.
    conn: Option<Box<Conn>>,
    pool: Arc<ConnPool>,
}

impl PooledBody {
    /// The next chunk of the body; `None` at its end.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, PoolError>>> {
        loop {
            if let Some(conn) = self.conn.as_mut() {
                if conn.drive(cx).is_err() {
                    // The body sees the failure itself on the next poll.
                    self.conn = None;
                }
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => return Poll::Ready(Some(Ok(data))),
                    // Empty chunks and trailers carry nothing to relay.
                    _ => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(PoolError::Http(e))));
                }
                Poll::Ready(None) => {
                    if let Some(conn) = self.conn.take() {
                        self.pool.checkin(conn);
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for PooledBody {
    /// The client side stops polling once it has sent `Content-Length` bytes, so a body can be
    /// complete without its end ever being polled: such a connection is still fit for reuse.
    /// One that is dropped part-way (client gone, error, timeout) is closed.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.body.is_end_stream() {
                self.pool.checkin(conn);
            }
        }
    }
}
