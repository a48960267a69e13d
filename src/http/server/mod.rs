//! The HTTP/1.1 side of a client connection: read a request head, hand the request to the
//! [`Handler`], write its answer, and go again (keep-alive, pipelined requests in order).
//!
//! One straight loop over httparse and the body framing the upstream client uses too
//! ([`crate::http::wire`]), instead of hyper's dispatcher: no body channel, no per-request
//! timer, no fixed 8 KiB buffers per idle connection.
//!
//! - a request whose body came with its head (the usual chat request) reaches the handler
//!   with the body as a slice of the read buffer: no channel, no copy, no timer;
//! - a head that did not arrive whole within one read gets `Timeouts::header_read`, an idle
//!   keep-alive connection `Timeouts::keep_alive` (a coarse timer, not reset after every
//!   answer);
//! - heads over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] lines are 431, malformed heads and
//!   ambiguous framing (`Content-Length` with `Transfer-Encoding`, differing lengths) are 400:
//!   the handler's [`Handler::reject`] words the answer, and the connection closes after it;
//! - while the request runs and while its answer streams, the socket is watched: a client that
//!   goes away cancels the request (its future is dropped); one that stops reading is cut off
//!   once a write has been blocked for `Timeouts::send`;
//! - an answer of known size goes out in one write with its head; a streamed one is chunked,
//!   each batch of ready frames written as it comes (one write per SSE event when paced).
//!
//! Generic over the connection's IO ([`serve`] takes a read and a write half), so tests drive
//! it over `tokio::io::duplex`.

mod head;
mod respond;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::body_decoder::{BodyDecoder, Decoded};
use crate::http::send_timeout::SendTimeout;
use crate::http::wire::Framing;
use crate::http::BoxError;
#[doc(hidden)]
pub use head::parse_request_head_framing;
use head::{parse_head, Head};
pub use head::{parse_request_head, HeadError, MAX_HEADERS, MAX_HEAD_BYTES};
use respond::respond;

/// What a head read reserves: a chat request's head and body fit.
const HEAD_READ: usize = 4 * 1024;
/// Largest single read of a request body.
const BODY_READ: usize = 64 * 1024;
/// Bytes read ahead (pipelined requests) while a request runs; past this the socket is left
/// alone until the answer is out.
const READ_AHEAD_LIMIT: usize = 64 * 1024;
/// A write buffer that grew past this is not kept for the next request.
const KEEP_WRITE_BUFFER: usize = 16 * 1024;
/// Nor a read buffer (a large request body grows it).
const KEEP_READ_BUFFER: usize = 16 * 1024;
/// After an answer that left part of the request body unread, how long (and how much) the
/// rest is read and dropped before closing, so the client sees the answer instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// The connection's time limits (`limits.header_read_timeout`, `limits.keep_alive_timeout`,
/// `limits.send_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a request head to arrive whole once its first bytes came.
    pub header_read: Duration,
    /// For the next request to begin on an idle keep-alive connection.
    pub keep_alive: Duration,
    /// For a blocked write to the client to make progress; past it the connection ends.
    pub send: Duration,
}

/// The idle deadline of a keep-alive connection. Moved forward only when it would otherwise
/// end more than a little early (1/8 of the timeout, at most 1 s): a reset is a timer-wheel
/// update, and doing one after every answer costs more than the precision is worth. Idle
/// connections close between `timeout - slack` and `timeout` after their last answer.
#[derive(Default)]
struct IdleTimer {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimer {
    /// Whether the connection has been idle for `timeout`. `idle_began`: the first poll of
    /// this idle wait, which sets the deadline (later polls of the same wait keep it).
    fn poll_expired(&mut self, cx: &mut Context<'_>, timeout: Duration, idle_began: bool) -> bool {
        if idle_began {
            let deadline = tokio::time::Instant::now() + timeout;
            let slack = (timeout / 8).min(Duration::from_secs(1));
            match &mut self.sleep {
                Some(sleep) if sleep.deadline() + slack < deadline => {
                    sleep.as_mut().reset(deadline)
                }
                Some(_) => {}
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

/// The answer to one request, as a boxed future: allocated only while the request runs.
pub type Handled<'c, B> = Pin<Box<dyn Future<Output = Response<B>> + Send + 'c>>;

/// What the server calls: the one seam between the HTTP layer and whatever answers requests.
/// HTTP/1.1 ([`serve`]) and h2c ([`super::h2c`]) call the same handler.
pub trait Handler {
    /// The answers' body.
    type Body: Body<Data = Bytes, Error = BoxError> + Send;

    /// Runs one request. The future is dropped (cancelling the request) when the client goes
    /// away before the answer is complete.
    fn handle<'c>(&self, req: Request<RequestBody<'c>>) -> Handled<'c, Self::Body>;

    /// The answer to a head the server refused; the connection closes after it.
    fn reject(&self, error: HeadError) -> Response<Self::Body>;
}

/// The request body source [`RequestBody`] reads from: the connection's read side, whatever
/// its IO type.
trait BodySource: Send + Sync {
    fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>>;
    fn is_done(&self) -> bool;
}

impl<R: AsyncRead + Unpin + Send> BodySource for Mutex<ReadSide<R>> {
    fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        lock(self).poll_body(cx)
    }

    fn is_done(&self) -> bool {
        lock(self).body.is_done()
    }
}

/// The reading half of a connection: the socket, what was read and not used yet, and where
/// the current request's body stands. Shared by the connection loop and the request body (one
/// task; the mutex is never contended, it only makes the sharing `Sync`).
struct ReadSide<R> {
    io: R,
    buf: BytesMut,
    body: BodyDecoder,
    /// The body's bytes broke the framing, or the connection ended inside it.
    body_failed: bool,
    /// Where the request's `Expect: 100-continue` stands.
    expect: Expect,
}

/// `Expect: 100-continue` (RFC 9110 §10.1.1): the client waits for `100 Continue` before it
/// sends the body. The interim answer goes out only once the handler first reads the body, so a
/// request it refuses first (ACL, auth) gets its final answer without ever inviting the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing to send: no `Expect`, the body came with the head, or it was sent.
    Nothing,
    /// Asked for; the body was not read yet.
    Asked,
    /// The body was read: `100 Continue` is due.
    Due,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl<R: AsyncRead + Unpin> ReadSide<R> {
    /// Reads once into the buffer, reserving `want` bytes of room.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.expect == Expect::Asked {
            // The connection loop writes it (this task, right after this poll).
            self.expect = Expect::Due;
        }
        loop {
            if self.body_failed {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the request body's framing is broken",
                ))));
            }
            match self.body.decode(&mut self.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Done) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    self.body_failed = true;
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))));
                }
            }
            match std::task::ready!(self.poll_fill(cx, BODY_READ)) {
                Ok(0) => {
                    self.body_failed = true;
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    self.body_failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    /// Drops what is left of the request body from the buffer, without reading: whether the
    /// connection is then at the next request's start.
    fn skip_buffered_body(&mut self) -> bool {
        if self.body_failed {
            return false;
        }
        loop {
            match self.body.decode(&mut self.buf) {
                Ok(Decoded::Data(_)) => {}
                Ok(Decoded::Done) => return true,
                Ok(Decoded::NeedMore) | Err(_) => return false,
            }
        }
    }

    /// Whether the client has gone, checked without consuming anything a later request needs:
    /// bytes that arrive are kept (pipelined requests). Only once the body is fully read: until
    /// then the socket's bytes are the body's.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.body.is_done() {
            return false;
        }
        while self.buf.len() < READ_AHEAD_LIMIT {
            match self.poll_fill(cx, 512) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }
}

fn lock<R>(side: &Mutex<ReadSide<R>>) -> MutexGuard<'_, ReadSide<R>> {
    side.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request's body as the pipeline reads it: whole when it came with the head, else read
/// from the connection as the pipeline asks for it.
pub struct RequestBody<'c> {
    inner: Inner<'c>,
}

enum Inner<'c> {
    Whole(Option<Bytes>),
    Streamed(&'c dyn BodySource),
    /// An h2c stream's body (hyper's).
    Incoming(hyper::body::Incoming),
}

impl RequestBody<'static> {
    /// The body of an h2c request, for the same [`Handler`] as HTTP/1.1's.
    pub fn incoming(body: hyper::body::Incoming) -> Self {
        RequestBody {
            inner: Inner::Incoming(body),
        }
    }
}

impl RequestBody<'_> {
    fn whole(bytes: Bytes) -> Self {
        RequestBody {
            inner: Inner::Whole((!bytes.is_empty()).then_some(bytes)),
        }
    }
}

impl Body for RequestBody<'_> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Streamed(side) => side.poll_body(cx),
            Inner::Incoming(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(io::Error::other))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Whole(bytes) => bytes.is_none(),
            Inner::Streamed(side) => side.is_done(),
            Inner::Incoming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Whole(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Whole(None) => SizeHint::with_exact(0),
            Inner::Streamed(_) => SizeHint::default(),
            Inner::Incoming(body) => body.size_hint(),
        }
    }
}

/// How a connection's next head came (or did not).
enum NextHead {
    Head(Head),
    /// The head broke a rule: answer with this, then close.
    Refused(HeadError),
    /// Closed, timed out, or the server is shutting down: close quietly.
    Close,
}

/// Waits for the next request head. An idle connection waits up to `keep_alive` (or until the
/// client closes it or the server shuts down); once a head has begun, it must be complete
/// within `header_read`.
async fn read_head<R: AsyncRead + Unpin>(
    side: &Mutex<ReadSide<R>>,
    timeouts: Timeouts,
    idle: &mut IdleTimer,
    shutdown: &mut watch::Receiver<bool>,
) -> NextHead {
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let started = {
            let mut s = lock(side);
            if !s.buf.is_empty() {
                match parse_head(&mut s.buf) {
                    Ok(Some(head)) => return NextHead::Head(head),
                    Ok(None) => {}
                    Err(e) => return NextHead::Refused(e),
                }
            }
            !s.buf.is_empty()
        };
        let read = if started {
            let sleep =
                deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeouts.header_read)));
            poll_fn(|cx| {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                lock(side).poll_fill(cx, HEAD_READ).map(Some)
            })
            .await
        } else {
            if *shutdown.borrow_and_update() {
                return NextHead::Close;
            }
            let mut changed = pin!(shutdown.changed());
            let mut idle_began = true;
            poll_fn(|cx| {
                if let Poll::Ready(r) = lock(side).poll_fill(cx, HEAD_READ) {
                    return Poll::Ready(Some(r));
                }
                // The server is shutting down (or gone), or the connection sat idle too long:
                // it just closes.
                let expired = idle.poll_expired(cx, timeouts.keep_alive, idle_began);
                idle_began = false;
                if changed.as_mut().poll(cx).is_ready() || expired {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        };
        match read {
            Some(Ok(n)) if n > 0 => {}
            _ => return NextHead::Close,
        }
    }
}

/// Serves one HTTP/1.1 connection until the client closes it, it breaks a rule, or the server
/// shuts down (the request in progress finishes first; its answer says `connection: close`).
/// `read`: bytes already read from the stream (the accept loop's look at the first ones).
pub async fn serve_tcp<H: Handler>(
    stream: TcpStream,
    read: BytesMut,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
    handler: H,
) {
    let (io, wr) = stream.into_split();
    serve_buffered(io, read, wr, timeouts, shutdown, handler).await
}

/// [`serve_tcp`] over any pair of read and write halves.
pub async fn serve<R, W, H>(
    io: R,
    wr: W,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
    H: Handler,
{
    serve_buffered(io, BytesMut::new(), wr, timeouts, shutdown, handler).await
}

/// [`serve`], with `read` already read from `io` (the start of the first request).
pub async fn serve_buffered<R, W, H>(
    io: R,
    read: BytesMut,
    wr: W,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
    H: Handler,
{
    // Every write to the client, the answers' and the `100 Continue`, fails once blocked
    // for `send`: the connection then ends, dropping its request.
    let mut wr = SendTimeout::new(wr, timeouts.send);
    let side = Mutex::new(ReadSide {
        io,
        buf: read,
        body: BodyDecoder::new(Framing::Empty),
        body_failed: false,
        expect: Expect::Nothing,
    });
    let mut out: Vec<u8> = Vec::new();
    let mut idle = IdleTimer::default();
    loop {
        let head = match read_head(&side, timeouts, &mut idle, &mut shutdown).await {
            NextHead::Head(head) => head,
            NextHead::Refused(e) => {
                tracing::debug!(error = %e, "refused a request head");
                let resp = handler.reject(e);
                out.clear();
                let _ = respond(
                    &side,
                    &mut wr,
                    &mut out,
                    resp,
                    false,
                    Version::HTTP_11,
                    true,
                )
                .await;
                linger(&side, &mut wr).await;
                return;
            }
            NextHead::Close => return,
        };
        let Head {
            request,
            body: framing,
            keep_alive,
            expect_continue,
        } = head;
        let is_head = request.method() == Method::HEAD;
        let version = request.version();
        let body = {
            let mut s = lock(&side);
            s.body_failed = false;
            s.expect = Expect::Nothing;
            match framing {
                Framing::Length(n) if s.buf.len() as u64 >= n => {
                    s.body = BodyDecoder::new(Framing::Empty);
                    let whole = s.buf.split_to(n as usize).freeze();
                    RequestBody::whole(whole)
                }
                Framing::Length(_) | Framing::Chunked => {
                    s.body = BodyDecoder::new(framing);
                    if expect_continue {
                        s.expect = Expect::Asked;
                    }
                    RequestBody {
                        inner: Inner::Streamed(&side),
                    }
                }
                Framing::Empty | Framing::Close => {
                    s.body = BodyDecoder::new(Framing::Empty);
                    RequestBody::whole(Bytes::new())
                }
            }
        };
        let mut handled = handler.handle(request.map(|()| body));
        // Bytes of `100 Continue` written so far (it goes out whole or not at all).
        let mut interim = 0usize;
        let mut ready = None;
        let answered = poll_fn(|cx| {
            if ready.is_none() {
                if let Poll::Ready(resp) = handled.as_mut().poll(cx) {
                    ready = Some(resp);
                }
            }
            // Due once the handler read the body; not begun when the answer is already here
            // (the client then never needs to send the body), finished when begun.
            let begun = interim > 0 && interim < CONTINUE.len();
            if begun || (ready.is_none() && lock(&side).expect == Expect::Due) {
                while interim < CONTINUE.len() {
                    match Pin::new(&mut wr).poll_write(cx, &CONTINUE[interim..]) {
                        Poll::Ready(Ok(n)) if n > 0 => interim += n,
                        Poll::Ready(_) => return Poll::Ready(None),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                match Pin::new(&mut wr).poll_flush(cx) {
                    Poll::Ready(Ok(())) => lock(&side).expect = Expect::Nothing,
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if let Some(resp) = ready.take() {
                return Poll::Ready(Some(resp));
            }
            if lock(&side).poll_client_gone(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        drop(handled);
        let Some(resp) = answered else {
            // The client left: dropping the request cancelled its upstream exchange.
            return;
        };
        out.clear();
        let close = !keep_alive || *shutdown.borrow();
        let kept = respond(&side, &mut wr, &mut out, resp, is_head, version, close).await;
        if !kept {
            linger(&side, &mut wr).await;
            return;
        }
        let at_next_request = {
            let mut s = lock(&side);
            let skipped = s.skip_buffered_body();
            if s.buf.is_empty() && s.buf.capacity() > KEEP_READ_BUFFER {
                // A large body grew it: an idle connection keeps only a head-sized buffer.
                s.buf = BytesMut::new();
            }
            skipped
        };
        if !at_next_request {
            // Part of the body is still on its way: the connection cannot carry another
            // request (reading it all might take long); close once the client saw the answer.
            linger(&side, &mut wr).await;
            return;
        }
        if out.capacity() > KEEP_WRITE_BUFFER {
            out = Vec::new();
        }
    }
}

/// Closes the connection gently: our side first (the client reads the answer and an end),
/// then what the client still sends is read and dropped for a moment, so its kernel does not
/// answer our close with a reset that could discard the answer before the client read it.
async fn linger<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    side: &Mutex<ReadSide<R>>,
    wr: &mut W,
) {
    let _ = wr.shutdown().await;
    let drain = async {
        let mut seen = 0usize;
        let mut scratch = vec![0u8; 16 * 1024];
        while seen < LINGER_BYTES {
            let n = poll_fn(|cx| {
                let mut read = ReadBuf::new(&mut scratch);
                match Pin::new(&mut lock(side).io).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => Poll::Ready(read.filled().len()),
                    Poll::Ready(Err(_)) => Poll::Ready(0),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            if n == 0 {
                return;
            }
            seen += n;
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests;
