//! The HTTP/1.1 side of a client connection: read a request head, hand the request to the
//! gateway, write its answer, and go again (keep-alive, pipelined requests in order).
//!
//! Why not hyper's server: on the tiny-request path hyper's dispatcher was about a third of all
//! instructions the gateway spent per request (the request head into a `HeaderMap`, a body
//! channel, the dispatch state machine, a header-read timer armed for every request), and it
//! keeps an 8 KiB read and an 8 KiB write buffer for every open connection. This is one
//! straight loop over the same parser (httparse) and the body framing the upstream client
//! already uses ([`crate::pipeline::http1`]):
//!
//! - a request whose body came with its head (the usual chat request) reaches the pipeline
//!   with the body as a slice of the read buffer: no channel, no copy, no timer;
//! - a head that did not arrive whole within one read gets `limits.header_read_timeout`, an
//!   idle keep-alive connection `limits.keep_alive_timeout` (a coarse timer, not reset after
//!   every answer);
//! - heads over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] lines are 431, malformed heads and
//!   ambiguous framing (`Content-Length` with `Transfer-Encoding`, differing lengths) are 400,
//!   both in the OpenAI error shape, and the connection closes after them;
//! - while the request runs and while its answer streams, the socket is watched: a client that
//!   goes away cancels the request (its upstream exchange is dropped), as hyper did;
//! - an answer of known size goes out in one write with its head; a streamed one is chunked,
//!   each batch of ready frames written as it comes (one write per SSE event when paced).
//!
//! HTTP/2 (h2c) connections stay on hyper ([`super`]).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body::ResponseBody;
use crate::error::{ErrorKind, GatewayError};
use crate::pipeline::http1::{self as wire, BodyDecoder, Decoded, Framing};
use crate::pipeline::{hex_into, RequestId, REQUEST_ID};

/// Most header lines a request may have (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Largest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// What a head read reserves: a chat request's head and body fit.
const HEAD_READ: usize = 4 * 1024;
/// Largest single read of a request body.
const BODY_READ: usize = 64 * 1024;
/// Bytes read ahead (pipelined requests) while a request runs; past this the socket is left
/// alone until the answer is out.
const READ_AHEAD_LIMIT: usize = 64 * 1024;
/// Answer bytes gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;
/// A write buffer that grew past this is not kept for the next request.
const KEEP_WRITE_BUFFER: usize = 16 * 1024;
/// Nor a read buffer (a large request body grows it).
const KEEP_READ_BUFFER: usize = 16 * 1024;
/// After an answer that left part of the request body unread, how long (and how much) the
/// rest is read and dropped before closing, so the client sees the answer instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// The connection's time limits (`limits.header_read_timeout`, `limits.keep_alive_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a request head to arrive whole once its first bytes came.
    pub header_read: Duration,
    /// For the next request to begin on an idle keep-alive connection.
    pub keep_alive: Duration,
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

/// The gateway's answer to one request.
pub type Handled<'c> = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send + 'c>>;

/// What runs a request (the pipeline, or the admin endpoint).
pub trait Handler {
    fn handle<'c>(&self, req: Request<RequestBody<'c>>) -> Handled<'c>;
}

/// The reading half of a connection: the socket, what was read and not used yet, and where
/// the current request's body stands. Shared by the connection loop and the request body (one
/// task; the mutex is never contended, it only makes the sharing `Sync`).
struct ReadSide {
    io: OwnedReadHalf,
    buf: BytesMut,
    body: BodyDecoder,
    /// The body's bytes broke the framing, or the connection ended inside it.
    body_failed: bool,
}

impl ReadSide {
    /// Reads once into the buffer, reserving `want` bytes of room.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
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

fn lock(side: &Mutex<ReadSide>) -> MutexGuard<'_, ReadSide> {
    side.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request's body as the pipeline reads it: whole when it came with the head, else read
/// from the connection as the pipeline asks for it.
pub struct RequestBody<'c> {
    inner: Inner<'c>,
}

enum Inner<'c> {
    Whole(Option<Bytes>),
    Streamed(&'c Mutex<ReadSide>),
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
            Inner::Streamed(side) => lock(side).poll_body(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Whole(bytes) => bytes.is_none(),
            Inner::Streamed(side) => lock(side).body.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Whole(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Whole(None) => SizeHint::with_exact(0),
            Inner::Streamed(_) => SizeHint::default(),
        }
    }
}

/// A parsed request head and what it says about the connection.
struct Head {
    request: Request<()>,
    body: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Parses a request head off the front of `buf`. `Ok(None)`: not all there yet.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, GatewayError> {
    // Where each name and value lies in `buf` (heads are under 64 KiB: `u16` offsets), so
    // the head can become one shared `Bytes` afterwards and the URI and header values slices
    // of it (no copies). Kept small: this array is zeroed for every request.
    let mut spans = [[0u16; 4]; MAX_HEADERS];
    let (len, method, target, minor, count) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(head_too_large())
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(too_many_headers()),
            Err(e) => {
                return Err(GatewayError::bad_request(
                    "malformed_request",
                    format!("Malformed HTTP request: {e}"),
                ))
            }
        };
        // Strictly below 64 KiB, so every offset fits in a `u16`.
        if len >= MAX_HEAD_BYTES {
            return Err(head_too_large());
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u16;
        for (slot, h) in spans.iter_mut().zip(req.headers.iter()) {
            let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
            *slot = [
                name,
                name + h.name.len() as u16,
                value,
                value + h.value.len() as u16,
            ];
        }
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| GatewayError::bad_request("malformed_request", "Invalid HTTP method"))?;
        let path = req.path.unwrap_or("");
        let target = offset(path.as_bytes()) as usize;
        (
            len,
            method,
            target..target + path.len(),
            req.version,
            req.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let version = match minor {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let uri = Uri::from_maybe_shared(head.slice(target))
        .map_err(|_| GatewayError::bad_request("malformed_request", "Invalid request target"))?;
    let mut headers = wire::header_map(count);
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut length = wire::LengthFold::default();
    for &[n0, n1, v0, v1] in &spans[..count] {
        let name = wire::header_name(&head[usize::from(n0)..usize::from(n1)])
            .map_err(|_| GatewayError::bad_request("malformed_request", "Invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(usize::from(v0)..usize::from(v1)))
            .map_err(|_| GatewayError::bad_request("malformed_request", "Invalid header value"))?;
        if name == header::CONNECTION {
            for token in wire::connection_tokens(value.to_str().unwrap_or("")) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding counts: `gzip, chunked` is chunked, `chunked, gzip` is not.
            chunked = value
                .to_str()
                .ok()
                .and_then(|v| wire::connection_tokens(v).last())
                .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::CONTENT_LENGTH {
            length.add(value.as_bytes());
        }
        headers.append(name, value);
    }
    let body = if transfer_encoding {
        // RFC 9112 §6.1/§6.3: a request whose last coding is not chunked has no knowable
        // length, and one with both headers is how request smuggling starts: refuse both.
        if !chunked || version == Version::HTTP_10 {
            return Err(GatewayError::bad_request(
                "invalid_transfer_encoding",
                "Transfer-Encoding must end with chunked (and needs HTTP/1.1)",
            ));
        }
        if length.is_given() {
            return Err(GatewayError::bad_request(
                "invalid_framing",
                "A request may not have both Content-Length and Transfer-Encoding",
            ));
        }
        Framing::Chunked
    } else if length.is_given() {
        let n = length.get().map_err(|_| {
            GatewayError::bad_request("invalid_content_length", "Invalid Content-Length")
        })?;
        Framing::Length(n)
    } else {
        Framing::Empty
    };
    let keep_alive = if version == Version::HTTP_11 {
        !close
    } else {
        keep_alive_token && !close
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        body,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11,
    }))
}

/// [`parse_head`] for the criterion benches: the request as the pipeline gets it.
pub fn parse_request_head(buf: &mut BytesMut) -> Result<Option<Request<()>>, GatewayError> {
    parse_head(buf).map(|head| head.map(|h| h.request))
}

fn head_too_large() -> GatewayError {
    GatewayError::new(
        ErrorKind::HeaderTooLarge,
        "request_header_too_large",
        format!("The request head is larger than {MAX_HEAD_BYTES} bytes"),
    )
}

fn too_many_headers() -> GatewayError {
    GatewayError::new(
        ErrorKind::HeaderTooLarge,
        "too_many_headers",
        format!("The request has more than {MAX_HEADERS} header lines"),
    )
}

/// How a connection's next head came (or did not).
enum NextHead {
    Head(Head),
    /// The head broke a rule: answer with this, then close.
    Refused(GatewayError),
    /// Closed, timed out, or the server is shutting down: close quietly.
    Close,
}

/// Waits for the next request head. An idle connection waits up to `keep_alive` (or until the
/// client closes it or the server shuts down); once a head has begun, it must be complete
/// within `header_read`.
async fn read_head(
    side: &Mutex<ReadSide>,
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
pub async fn serve<H: Handler>(
    stream: TcpStream,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) {
    let (io, mut wr) = stream.into_split();
    let side = Mutex::new(ReadSide {
        io,
        buf: BytesMut::new(),
        body: BodyDecoder::new(Framing::Empty),
        body_failed: false,
    });
    let mut out: Vec<u8> = Vec::new();
    let mut idle = IdleTimer::default();
    loop {
        let head = match read_head(&side, timeouts, &mut idle, &mut shutdown).await {
            NextHead::Head(head) => head,
            NextHead::Refused(e) => {
                tracing::debug!(error = %e, "refused a request head");
                let mut resp = e.into_response::<ResponseBody>();
                resp.headers_mut()
                    .insert(&REQUEST_ID, RequestId::of(&HeaderMap::new()).into_header());
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
            match framing {
                Framing::Length(n) if s.buf.len() as u64 >= n => {
                    s.body = BodyDecoder::new(Framing::Empty);
                    let whole = s.buf.split_to(n as usize).freeze();
                    RequestBody::whole(whole)
                }
                Framing::Length(_) | Framing::Chunked => {
                    s.body = BodyDecoder::new(framing);
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
        if expect_continue
            && matches!(body.inner, Inner::Streamed(_))
            && wr
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let mut handled = handler.handle(request.map(|()| body));
        let answered = poll_fn(|cx| {
            if let Poll::Ready(resp) = handled.as_mut().poll(cx) {
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
async fn linger(side: &Mutex<ReadSide>, wr: &mut OwnedWriteHalf) {
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

/// How an answer's body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes one answer. Returns whether the connection can carry another request.
async fn respond(
    side: &Mutex<ReadSide>,
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    resp: Response<ResponseBody>,
    is_head: bool,
    version: Version,
    mut close: bool,
) -> bool {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let given_length = wire::content_length(&parts.headers).ok();
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Out::None
    } else if let Some(n) = given_length {
        Out::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        Out::Length(n)
    } else if version == Version::HTTP_11 {
        Out::Chunked
    } else {
        Out::UntilClose
    };
    close |= framing == Out::UntilClose && !is_head;
    close |= parts.headers.get_all(header::CONNECTION).iter().any(|v| {
        wire::connection_tokens(v.to_str().unwrap_or("")).any(|t| t.eq_ignore_ascii_case("close"))
    });

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == "keep-alive"
            || (name == header::CONTENT_LENGTH && framing == Out::None)
        {
            continue;
        }
        has_date |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Out::Length(n) if given_length.is_none() => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(wire::decimal(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        with_http_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    wire::recycle_header_map(parts.headers);

    if is_head || framing == Out::None {
        // The body is not sent; dropping it ends the request's work (and its log record).
        drop(body);
        return wr.write_all(out).await.is_ok() && !close;
    }
    let sent = write_body(side, wr, out, body, framing).await;
    match (sent, framing) {
        (Sent::Complete(n), Out::Length(want)) => n == want && !close,
        (Sent::Complete(_), _) => !close,
        (Sent::Broken, _) => false,
    }
}

enum Sent {
    /// The body ended; this many bytes were sent.
    Complete(u64),
    /// The body failed, the client went away, or a write failed.
    Broken,
}

/// Streams the body after the head already in `out`: frames that are ready together go out
/// in one write; the head goes with the first of them.
async fn write_body(
    side: &Mutex<ReadSide>,
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    body: ResponseBody,
    framing: Out,
) -> Sent {
    enum Next {
        Data(Bytes),
        End,
        Failed,
        Flush,
        ClientGone,
    }
    let mut body = pin!(body);
    let mut sent: u64 = 0;
    let mut waited = false;
    // The body answered `Pending` (its wakers are set) and the task has not yielded since:
    // polling it again right after the flush would only find it pending once more.
    let mut body_armed = false;
    loop {
        let pending_out = !out.is_empty();
        let next = poll_fn(|cx| {
            let polled = if std::mem::take(&mut body_armed) {
                Poll::Pending
            } else {
                body.as_mut().poll_frame(cx)
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Next::Data(data)),
                    // Trailers: HTTP/1.1 answers here carry none.
                    Err(_) => Poll::Ready(Next::Data(Bytes::new())),
                },
                Poll::Ready(Some(Err(_))) => Poll::Ready(Next::Failed),
                Poll::Ready(None) => Poll::Ready(Next::End),
                Poll::Pending if pending_out => {
                    body_armed = true;
                    Poll::Ready(Next::Flush)
                }
                Poll::Pending => {
                    let mut s = lock(side);
                    if !waited {
                        waited = true;
                        // The answer waits for the upstream (a stream may last minutes): the
                        // connection needs no read buffer meanwhile; the client-gone watch makes
                        // a small one. An answer that is all there never gets here, so the next
                        // request reuses the buffer instead of allocating one.
                        if s.buf.is_empty() {
                            s.buf = BytesMut::new();
                        }
                    }
                    if s.poll_client_gone(cx) {
                        Poll::Ready(Next::ClientGone)
                    } else {
                        Poll::Pending
                    }
                }
            }
        })
        .await;
        match next {
            Next::Data(data) if data.is_empty() => {}
            Next::Data(mut data) => {
                if let Out::Length(want) = framing {
                    // More than announced would corrupt the next answer on this connection.
                    let room = want - sent;
                    if data.len() as u64 > room {
                        data.truncate(room as usize);
                    }
                }
                sent += data.len() as u64;
                if framing == Out::Chunked {
                    out.extend_from_slice(hex(data.len(), &mut [0; 16]));
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                } else if out.len() + data.len() <= WRITE_BATCH {
                    out.extend_from_slice(&data);
                } else {
                    if flush(wr, out).await.is_err() || wr.write_all(&data).await.is_err() {
                        return Sent::Broken;
                    }
                    continue;
                }
                if out.len() >= WRITE_BATCH && flush(wr, out).await.is_err() {
                    return Sent::Broken;
                }
            }
            Next::Flush => {
                let mut flushing = pin!(flush(wr, out));
                let mut yielded = false;
                let flushed = poll_fn(|cx| {
                    let r = flushing.as_mut().poll(cx);
                    yielded |= r.is_pending();
                    r
                })
                .await;
                if flushed.is_err() {
                    return Sent::Broken;
                }
                // A wake-up the body sent while the task waited on the write was taken by
                // the write: then the body must be polled again.
                body_armed = !yielded;
            }
            Next::End => {
                if framing == Out::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                return match flush(wr, out).await {
                    Ok(()) => Sent::Complete(sent),
                    Err(_) => Sent::Broken,
                };
            }
            Next::Failed => {
                // The answer cannot be completed: what was produced goes out, the missing
                // end (no last chunk, or fewer bytes than announced) tells the client.
                let _ = flush(wr, out).await;
                return Sent::Broken;
            }
            Next::ClientGone => return Sent::Broken,
        }
    }
}

async fn flush(wr: &mut OwnedWriteHalf, out: &mut Vec<u8>) -> io::Result<()> {
    let written = wr.write_all(out).await;
    out.clear();
    written
}

/// `n` in lower-case hex without leading zeros, written into the end of `buf`.
fn hex(n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let digits = ((usize::BITS - n.leading_zeros()).div_ceil(4).max(1)) as usize;
    let start = buf.len() - digits;
    hex_into(&mut buf[start..], n as u64);
    &buf[start..]
}

/// Calls `f` with the current time as an HTTP date (`Thu, 26 Nov 2026 23:12:05 GMT`),
/// formatted once per second per worker thread.
fn with_http_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes());
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Head>, GatewayError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf)
    }

    fn refused(text: &str) -> (StatusCode, &'static str) {
        match parse(text) {
            Err(e) => (e.status(), e.code),
            Ok(Some(_)) => panic!("accepted: {text:?}"),
            Ok(None) => panic!("incomplete: {text:?}"),
        }
    }

    #[test]
    fn a_head_with_its_body_behind_it() {
        let mut buf = BytesMut::from(
            &b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-Custom: v\r\n\r\n{}"[..],
        );
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri().path(), "/v1/chat/completions");
        assert_eq!(head.request.uri().query(), Some("x=1"));
        assert_eq!(head.request.headers()["x-custom"], "v");
        assert_eq!(head.body, Framing::Length(2));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"{}");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(parse("GET /health HTTP/1.1\r\nHost: a\r\n")
            .unwrap()
            .is_none());
        assert!(parse("GET /hea").unwrap().is_none());
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |t: &str| parse(t).unwrap().unwrap().keep_alive;
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn framing_rules() {
        let framing = |t: &str| parse(t).unwrap().unwrap().body;
        assert_eq!(framing("GET / HTTP/1.1\r\n\r\n"), Framing::Empty);
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Framing::Length(5)
        );
        let bad = [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for text in bad {
            assert_eq!(refused(text).0, StatusCode::BAD_REQUEST, "{text:?}");
        }
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        assert_eq!(refused("NOT HTTP\r\n\r\n").0, StatusCode::BAD_REQUEST);
        assert_eq!(
            refused("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").0,
            StatusCode::BAD_REQUEST
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            refused(&text),
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_many_headers"
            )
        );
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            refused(&big),
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_header_too_large"
            )
        );
    }

    /// Whatever the bytes, the parser answers (a head, "more", or an error) and never panics:
    /// every prefix of a real request, and every single-byte change of it.
    #[test]
    fn any_bytes_get_an_answer() {
        let sample = b"POST /v1/chat/completions?a=b HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer k\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, Upgrade\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for end in 0..=sample.len() {
            let _ = parse_head(&mut BytesMut::from(&sample[..end]));
        }
        for at in 0..sample.len() {
            for byte in [0u8, b'\r', b'\n', b':', b' ', 0x7f, 0xff, b'a'] {
                let mut changed = sample.to_vec();
                changed[at] = byte;
                let _ = parse_head(&mut BytesMut::from(&changed[..]));
            }
        }
    }

    #[test]
    fn expect_continue_only_on_http_1_1() {
        let e = |t: &str| parse(t).unwrap().unwrap().expect_continue;
        assert!(e(
            "POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"
        ));
        assert!(!e(
            "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
        ));
    }

    #[test]
    fn hex_and_dates() {
        assert_eq!(hex(0, &mut [0; 16]), b"0");
        assert_eq!(hex(0x1a2f, &mut [0; 16]), b"1a2f");
        assert_eq!(hex(usize::MAX, &mut [0; 16]), b"ffffffffffffffff");
        let mut date = Vec::new();
        with_http_date(|d| date.extend_from_slice(d));
        assert!(httpdate::parse_http_date(std::str::from_utf8(&date).unwrap()).is_ok());
    }
}
