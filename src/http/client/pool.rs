//! Pooled HTTP/1.1 connections to one upstream origin (plain TCP or TLS), driven inline by the
//! request that uses them.
//!
//! Why not reqwest (or hyper's client) here: a general client spawns a task per connection and
//! hands the answer over through channels. Every chunk then costs a wake-up of another task, the
//! end of a body is only seen after that task ran again (so the gateway wrote the last chunk and
//! the end of the response in two writes), and each connection carries fixed 8 KiB read and
//! write buffers plus a channel block. Here the request's own task writes the request (head and
//! body in one `writev`), reads the answer, and relays the body straight off the socket; the
//! wire format is in [`crate::http::wire`]. The read buffer starts small and grows only for answers
//! that fill it.
//!
//! Scope: `http://` and `https://` upstreams without a proxy (TLS in [`super::transport`]).
//! Proxied upstreams keep using reqwest (HTTP and SOCKS proxies), (the gateway's upstream module chooses).
//!
//! Pool rules: idle connections are reused newest first; one idle longer than the upstream's
//! `keepalive_timeout`, one the upstream closed or sent unasked-for bytes on, one whose answer
//! said `Connection: close` or was not read to the end is dropped, never reused. A request is
//! retried on a fresh connection only when a reused connection failed before any of the request
//! was written (so nothing can reach the upstream twice).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::transport::{TlsSetup, Transport};
use crate::http::body_decoder::{BodyDecoder, Decoded};
use crate::http::wire::{self, ProtoError};

/// First read size of a fresh connection: a usual answer head, or a few SSE events. Small
/// because a streaming answer holds its buffer for the whole stream; answers that fill it get
/// larger reads.
const FIRST_READ: usize = 1024;
/// Reads grow (doubling) up to this for answers that keep filling the buffer.
const MAX_READ: usize = 64 * 1024;
/// A buffer that grew past this is not kept while its connection idles.
const IDLE_KEEP: usize = 8 * 1024;

/// Why a request got no answer, or its body broke off.
#[derive(Debug)]
pub enum PoolError {
    /// The connection could not be made (refused, unreachable, DNS, TLS handshake or
    /// certificate).
    Connect(io::Error),
    /// The connection (TCP and, for `https://`, TLS) was not made within `connect_timeout`.
    ConnectTimeout,
    /// The answer's head did not arrive within the request's `first_byte_timeout`.
    FirstByteTimeout,
    /// Reading or writing the connection failed.
    Io(io::Error),
    /// The upstream's bytes were not a valid HTTP/1.x answer, or it closed mid-answer.
    Protocol(ProtoError),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) => write!(f, "connect failed: {e}"),
            PoolError::ConnectTimeout => f.write_str("connect timed out"),
            PoolError::FirstByteTimeout => f.write_str("no answer within the first-byte timeout"),
            PoolError::Io(e) => write!(f, "connection error: {e}"),
            PoolError::Protocol(e) => write!(f, "{e}"),
        }
    }
}

/// One HTTP/1.1 connection and what was read off it but not used yet.
struct Conn {
    io: Transport,
    /// Bytes read and not yet consumed; answer bodies are handed out as slices of it.
    buf: BytesMut,
    /// How much the next read asks room for.
    read_size: usize,
    /// The request head being written (kept to reuse its allocation).
    head: Vec<u8>,
    /// The first-byte deadline of the request on this connection, kept between requests: moving
    /// a registered timer later is one atomic update, where a fresh `tokio::time::timeout` per
    /// request registers a timer and removes it again.
    first_byte: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    fn new(io: Transport) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            head: Vec::new(),
            first_byte: None,
        }
    }

    /// Reads what the socket has into `buf`; `Ok(0)` at the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Every read gets the full size: a read into the tail of a block splits an answer over
        // two `recv`s. Cheap: once the chunks handed out are gone (written to the client), the
        // block is unique and `reserve` reuses it in place.
        if self.buf.capacity() - self.buf.len() < self.read_size {
            self.buf.reserve(self.read_size);
        }
        // `poll_read` (not `try_read`): a short read clears the socket's readiness, so the
        // reuse check after the answer costs no `recv` that could only say "nothing there".
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        // A read that filled the nominal size asks for more next time: a large answer is read
        // in fewer, larger calls.
        if n >= self.read_size && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Ready for another request: nothing unread, and neither a close nor stray bytes from the
    /// upstream since the last answer (checked without waiting).
    fn reusable(&mut self) -> bool {
        self.buf.is_empty() && self.io.idle_and_open()
    }

    /// Writes head and body, in one `writev` when the socket takes it all. `Err(true)`: failed
    /// before any byte was written.
    async fn write_request(&mut self, body: &Bytes) -> Result<(), (bool, io::Error)> {
        let total = self.head.len() + body.len();
        let mut written = 0;
        while written < total {
            let (h, b) = if written < self.head.len() {
                (&self.head[written..], &body[..])
            } else {
                (&[][..], &body[written - self.head.len()..])
            };
            let slices = [io::IoSlice::new(h), io::IoSlice::new(b)];
            match self.io.write_vectored(&slices).await {
                Ok(0) => {
                    return Err((
                        written == 0,
                        io::Error::new(io::ErrorKind::WriteZero, "upstream took no bytes"),
                    ))
                }
                Ok(n) => written += n,
                Err(e) => return Err((written == 0, e)),
            }
        }
        // TLS keeps what the socket did not take yet; plain TCP has nothing to flush.
        self.io.flush().await.map_err(|e| (false, e))
    }

    /// Reads until the answer's head is in.
    async fn read_head(&mut self, method: &Method) -> Result<wire::ResponseHead, PoolError> {
        // Interim answers seen so far, over every read of this head.
        let mut interim = 0;
        loop {
            if let Some(head) =
                wire::parse_response_head_counted(&mut self.buf, method, &mut interim)
                    .map_err(PoolError::Protocol)?
            {
                return Ok(head);
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(PoolError::Io)?;
            if n == 0 {
                return Err(PoolError::Protocol(ProtoError::Incomplete));
            }
        }
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// The request [`ConnPool::send`] writes.
pub struct PoolRequest<'a> {
    pub method: &'a Method,
    /// Origin-form target (path and query); see [`wire::is_plain_target`].
    pub target: &'a str,
    pub host: &'a HeaderValue,
    /// The header lines to send, already filtered (no hop-by-hop headers); `Host` and
    /// `Content-Length` are written from the other fields.
    pub headers: &'a [(&'a HeaderName, &'a HeaderValue)],
    pub body: &'a Bytes,
    /// For the answer's head to arrive, counted from the call (connecting included).
    pub first_byte_timeout: Duration,
}

/// An answer's head, and its body still on the connection.
pub struct PoolAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body's length when the answer gave one that frames it (`Content-Length`, no
    /// `Transfer-Encoding`), as the head parse found it.
    pub length: Option<u64>,
    pub body: PooledBody,
}

/// The pool for one upstream origin.
pub struct ConnPool {
    /// `host:port` to connect to.
    addr: String,
    /// For `https://` upstreams.
    tls: Option<TlsSetup>,
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
    /// `addr` is `host:port`; `tls` set: every connection speaks TLS.
    pub fn new(
        addr: String,
        tls: Option<TlsSetup>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: Option<usize>,
    ) -> Self {
        ConnPool {
            addr,
            tls,
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
        if conn.buf.capacity() > IDLE_KEEP {
            // A large answer grew it; an idle connection should not hold on to that.
            conn.buf = BytesMut::new();
            conn.read_size = FIRST_READ;
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

    /// TCP connect, and the TLS handshake for `https://`, within `connect_timeout` together.
    async fn connect(&self) -> Result<Box<Conn>, PoolError> {
        let open = async {
            let tcp = TcpStream::connect(&self.addr).await?;
            // Small writes (request heads) go out now, not after Nagle's delay.
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Transport::Plain(tcp)),
                Some(tls) => tls.connect(tcp).await,
            }
        };
        let io = match tokio::time::timeout(self.connect_timeout, open).await {
            Err(_) => return Err(PoolError::ConnectTimeout),
            Ok(Err(e)) => return Err(PoolError::Connect(e)),
            Ok(Ok(io)) => io,
        };
        // Boxed once here: the pool and the bodies then move a pointer.
        Ok(Box::new(Conn::new(io)))
    }

    /// Sends the request and waits for the answer's head, within `req.first_byte_timeout`.
    /// The returned body owns the connection and gives it back to the pool once read to the
    /// end.
    pub async fn send(self: &Arc<Self>, req: PoolRequest<'_>) -> Result<PoolAnswer, PoolError> {
        self.start_sweeper();
        let deadline = tokio::time::Instant::now() + req.first_byte_timeout;
        let (mut conn, reused) = match self.checkout() {
            Some(c) => (c, true),
            None => (self.connect_by(deadline).await?, false),
        };
        // Taken out while the exchange borrows the connection; it goes back into whichever
        // connection carried the request.
        let mut timer = conn.first_byte.take();
        let sleep = match &mut timer {
            Some(sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let head = {
            let exchange = self.exchange(&mut conn, reused, &req, deadline);
            let mut exchange = std::pin::pin!(exchange);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(head) = exchange.as_mut().poll(cx) {
                    return Poll::Ready(head);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(PoolError::FirstByteTimeout)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await?
        };
        // The timer stays registered until the next request moves it. It keeps a waker that
        // wakes nothing, not this task's: that would hold the task's memory until the deadline
        // (or the next request on this connection) and wake it for nothing then.
        if let Some(sleep) = timer.as_mut() {
            let _ = sleep
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()));
        }
        conn.first_byte = timer;
        let length = match head.framing {
            wire::Framing::Length(n) => Some(n),
            _ => None,
        };
        let mut body = PooledBody {
            conn: Some(conn),
            decoder: BodyDecoder::new(head.framing),
            keep_alive: head.keep_alive,
            pool: Arc::clone(self),
        };
        if body.decoder.is_done() {
            body.finish();
        }
        Ok(PoolAnswer {
            status: head.status,
            headers: head.headers,
            length,
            body,
        })
    }

    /// Writes the request and reads the answer's head. A reused connection the upstream closed
    /// before any of the request was written is replaced by a new one (in `conn`).
    async fn exchange(
        &self,
        conn: &mut Box<Conn>,
        mut reused: bool,
        req: &PoolRequest<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<wire::ResponseHead, PoolError> {
        loop {
            wire::encode_request_head(
                &mut conn.head,
                req.method,
                req.target,
                req.host,
                req.headers,
                req.body.len(),
            );
            match conn.write_request(req.body).await {
                Ok(()) => break,
                // Never written on a reused connection (the upstream closed it meanwhile):
                // safe to try again, on a new connection this time.
                Err((true, _)) if reused => {
                    *conn = self.connect_by(deadline).await?;
                    reused = false;
                }
                Err((_, e)) => return Err(PoolError::Io(e)),
            }
        }
        conn.read_head(req.method).await
    }

    /// [`Self::connect`], cut short at the request's first-byte deadline too.
    async fn connect_by(&self, deadline: tokio::time::Instant) -> Result<Box<Conn>, PoolError> {
        match tokio::time::timeout_at(deadline, self.connect_boxed()).await {
            Ok(conn) => conn,
            Err(_) => Err(PoolError::FirstByteTimeout),
        }
    }

    /// Boxed: connecting is rare, and its large future would otherwise be part of (and moved
    /// with) every request's state.
    async fn connect_boxed(&self) -> Result<Box<Conn>, PoolError> {
        Box::pin(self.connect()).await
    }
}

/// An answer's body read straight off its pooled connection.
pub struct PooledBody {
    /// `None` once the body ended (the connection went back to the pool) or failed.
    conn: Option<Box<Conn>>,
    decoder: BodyDecoder,
    keep_alive: bool,
    pool: Arc<ConnPool>,
}

impl PooledBody {
    /// The next chunk of the body; `None` at its end.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, PoolError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder.decode(&mut conn.buf) {
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(PoolError::Protocol(e))));
                }
                Ok(Decoded::Data(data)) => {
                    if self.decoder.is_done() {
                        // Back to the pool with the last chunk, not one poll later: the client
                        // side stops polling once it has sent `Content-Length` bytes.
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Decoded::Done) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => match conn.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => {
                        // The end of the connection: the end of a close-delimited body, or an
                        // answer cut short. Either way the connection is done.
                        self.conn = None;
                        return match self.decoder.eof() {
                            Ok(()) => Poll::Ready(None),
                            Err(e) => Poll::Ready(Some(Err(PoolError::Protocol(e)))),
                        };
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(PoolError::Io(e))));
                    }
                },
            }
        }
    }

    /// The body ended: the connection goes back to the pool if the answer allows it.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self.pool.checkin(conn);
            }
        }
    }
}

impl Drop for PooledBody {
    /// A body dropped part-way (client gone, error, timeout) closes its connection: the rest of
    /// the answer is still on it.
    fn drop(&mut self) {
        if self.decoder.is_done() {
            self.finish();
        }
    }
}
