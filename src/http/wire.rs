//! The HTTP/1.1 wire format of the pooled upstream client ([`super::client`]): request heads
//! out, response heads and body framing (RFC 9112 §6) in. The server side
//! ([`super::server`]) decodes request bodies with the same [`BodyDecoder`].
//!
//! Pure functions over byte buffers, no I/O: the connection code reads into a buffer and asks
//! this module what the bytes mean, so every way the network may split an answer can be tested
//! without a socket. Response heads are parsed by `httparse` (the parser hyper uses). The one
//! state is in [`super::headers`] (the name cache and the map pool).

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::headers::{connection_tokens, header_map, header_name, is_hop_by_hop};

/// Largest response head accepted (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Why an upstream's bytes could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    HeadTooLarge,
    BadHead(&'static str),
    BadHeader,
    SwitchingProtocols,
    /// More than [`MAX_INTERIM`] interim (1xx) answers before the real one.
    TooManyInterim,
    BadContentLength,
    BadChunk,
    /// The connection ended before the answer did.
    Incomplete,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::HeadTooLarge => write!(f, "response head larger than {MAX_HEAD} bytes"),
            ProtoError::BadHead(why) => write!(f, "invalid response head: {why}"),
            ProtoError::BadHeader => f.write_str("invalid response header"),
            ProtoError::SwitchingProtocols => f.write_str("unexpected 101 Switching Protocols"),
            ProtoError::TooManyInterim => {
                write!(f, "more than {MAX_INTERIM} interim (1xx) answers")
            }
            ProtoError::BadContentLength => f.write_str("invalid Content-Length"),
            ProtoError::BadChunk => f.write_str("invalid chunked encoding"),
            ProtoError::Incomplete => f.write_str("connection closed before the answer ended"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Whether `target` can be sent as an origin-form request target as it is: a path (and query)
/// of RFC 3986 characters only. Anything else (a script may build a path with spaces, say) goes
/// through reqwest, which percent-encodes it.
pub fn is_plain_target(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| TARGET_BYTES[usize::from(b)])
}

/// The bytes [`is_plain_target`] lets through, as a table (one load per byte instead of a
/// chain of comparisons).
const TARGET_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
                    | b'%'
            );
        i += 1;
    }
    table
};

/// Methods whose requests carry no body by convention: no `Content-Length: 0` is sent for them.
fn bodiless_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Writes a request head into `out` (cleared first). `headers` are the lines to send, already
/// filtered by the caller; framing is this function's: `Host` and `Content-Length` come from the
/// arguments and any framing header among `headers` is skipped, so the head always agrees with
/// the body that follows it.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &HeaderValue,
    headers: &[(&HeaderName, &HeaderValue)],
    body_len: usize,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for &(name, value) in headers {
        if *name == header::HOST
            || *name == header::CONTENT_LENGTH
            || *name == header::TRANSFER_ENCODING
            || *name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if body_len > 0 || !bodiless_method(method) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(decimal(body_len as u64, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n`, written into the end of `buf`.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// How the body of an answer is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this answer's body.
    pub keep_alive: bool,
}

/// Most interim (1xx) answers taken before the real one: an upstream that keeps sending them
/// would otherwise hold the request (and its slot) until the first-byte timeout.
pub const MAX_INTERIM: usize = 32;

/// Parses a response head from the front of `buf`, skipping interim (1xx) answers. `None`: the
/// head is not complete yet, read more. The head's bytes are consumed; the body's stay.
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ProtoError> {
    parse_response_head_counted(buf, method, &mut 0)
}

/// [`parse_response_head`] for a head read in several calls: `interim` counts the interim
/// answers skipped so far for this response (start at 0); past [`MAX_INTERIM`] it is an error.
pub fn parse_response_head_counted(
    buf: &mut BytesMut,
    method: &Method,
    interim: &mut usize,
) -> Result<Option<ResponseHead>, ProtoError> {
    loop {
        // Left uninitialised: filling 128 empty slots for every answer costs more than the parse.
        let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= MAX_HEAD {
                    Err(ProtoError::HeadTooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ProtoError::BadHead("too many headers"))
            }
            Err(_) => return Err(ProtoError::BadHead("not an HTTP/1.x response")),
        };
        if len > MAX_HEAD {
            return Err(ProtoError::HeadTooLarge);
        }
        let code = resp.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| ProtoError::BadHead("status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProtoError::SwitchingProtocols);
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints …: the real answer follows.
            *interim += 1;
            if *interim > MAX_INTERIM {
                return Err(ProtoError::TooManyInterim);
            }
            buf.advance(len);
            continue;
        }
        let http10 = resp.version == Some(0);
        let raw = &*resp.headers;
        // Framing and connection handling come from the raw lines; the map gets only what
        // passes a proxy (no hop-by-hop headers, none that `Connection` names).
        let mut close = false;
        let mut keep_alive_token = false;
        let mut listed: Vec<&str> = Vec::new();
        let mut chunked_last: Option<bool> = None;
        let mut length = LengthFold::default();
        for h in raw {
            if h.name.eq_ignore_ascii_case("connection") {
                let value = std::str::from_utf8(h.value).map_err(|_| ProtoError::BadHeader)?;
                for token in connection_tokens(value) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive_token = true;
                    } else {
                        listed.push(token);
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let value = std::str::from_utf8(h.value).map_err(|_| ProtoError::BadHeader)?;
                let last = value.rsplit(',').next().unwrap_or("").trim();
                chunked_last = Some(last.eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                length.add(h.value);
            }
        }
        // Names now; values are sliced out of the head once it is split off the buffer (no copy
        // per value: one list of positions instead of one allocation per header).
        let base = buf.as_ptr() as usize;
        let mut kept: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(raw.len());
        for h in raw {
            let name = header_name(h.name.as_bytes()).map_err(|_| ProtoError::BadHeader)?;
            if is_hop_by_hop(&name)
                || listed.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
                // With Transfer-Encoding the length does not describe the body (RFC 9112 §6.3).
                || (chunked_last.is_some() && name == header::CONTENT_LENGTH)
            {
                continue;
            }
            // Where the value sits in the head (an empty value may not point into it at all).
            let start = if h.value.is_empty() {
                0
            } else {
                (h.value.as_ptr() as usize)
                    .checked_sub(base)
                    .filter(|s| s + h.value.len() <= len)
                    .ok_or(ProtoError::BadHeader)?
            };
            kept.push((name, start, start + h.value.len()));
        }
        let head = buf.split_to(len).freeze();
        // One spare slot: the gateway adds `x-request-id`, which would otherwise grow (and
        // reallocate) the map on every answer.
        let mut headers = header_map(kept.len() + 1);
        for (name, start, end) in kept {
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| ProtoError::BadHeader)?;
            headers.append(name, value);
        }

        let mut keep_alive = if http10 { keep_alive_token } else { !close };
        let framing = if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Empty
        } else if let Some(chunked) = chunked_last {
            // Transfer-Encoding wins over Content-Length; an answer with both is suspect, so
            // its connection is not reused.
            if length.is_given() {
                keep_alive = false;
            }
            if chunked {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else if length.is_given() {
            Framing::Length(length.get()?)
        } else {
            Framing::Close
        };
        if framing == Framing::Close {
            keep_alive = false;
        }
        return Ok(Some(ResponseHead {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// The one length all `Content-Length` values agree on (`5, 5` is allowed, `5, 6` is not).
pub fn content_length(headers: &HeaderMap) -> Result<u64, ProtoError> {
    let mut length = LengthFold::default();
    for value in headers.get_all(header::CONTENT_LENGTH) {
        length.add(value.as_bytes());
    }
    length.get()
}

/// [`content_length`] folded line by line while a head is walked, so a parser that meets the
/// header anyway needs no map lookup (nor a text conversion) for it afterwards. A bad line
/// is remembered, not returned: the parser decides later what the header means for framing.
#[derive(Debug, Default, Clone, Copy)]
pub struct LengthFold {
    length: Option<u64>,
    bad: bool,
}

impl LengthFold {
    /// One `Content-Length` line: a number, or a comma-separated list of the same number.
    pub fn add(&mut self, value: &[u8]) {
        // The usual value is digits only; lists (and their spaces) take the longer way.
        if let Some(n) = digits(value) {
            self.agree(Some(n));
        } else {
            for part in value.split(|&b| b == b',') {
                self.agree(digits(part.trim_ascii()));
            }
        }
    }

    fn agree(&mut self, n: Option<u64>) {
        match (n, self.length) {
            (Some(n), Some(f)) if f != n => self.bad = true,
            (Some(n), _) => self.length = Some(n),
            (None, _) => self.bad = true,
        }
    }

    /// Whether any `Content-Length` line was added (valid or not).
    pub fn is_given(&self) -> bool {
        self.bad || self.length.is_some()
    }

    /// The length; an error when a line was bad, the lines disagree, or none was added.
    pub fn get(self) -> Result<u64, ProtoError> {
        match self.length {
            Some(n) if !self.bad => Ok(n),
            _ => Err(ProtoError::BadContentLength),
        }
    }
}

/// A non-empty run of ASCII digits as a `u64`; `None` for anything else or an overflow.
fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// What the next bytes of a body are.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// Nothing decodable in the buffer yet: read more.
    NeedMore,
    /// The body ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    /// After the last chunk: trailer lines (discarded) up to the empty line; the count is the
    /// trailer bytes seen so far.
    Trailers(usize),
    Close,
    Done,
}

/// Takes one body's bytes off the front of a connection's read buffer. Data comes out as
/// slices of the buffer (no copy); bytes after the body stay in the buffer.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        BodyDecoder { state }
    }

    /// The whole body has been taken (the connection is at the next answer's start).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtoError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Length(left) | State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), n) => State::Length(n),
                        (_, 0) => State::ChunkDataEnd,
                        (_, n) => State::ChunkData(n),
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(len) = line_len(buf, MAX_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&buf[..len])?;
                    buf.advance(len);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkDataEnd => {
                    // Exactly CRLF after the data (RFC 9112 §7.1): a bare LF, or a CR followed
                    // by anything else, is a framing another parser may read differently.
                    match (buf.first(), buf.get(1)) {
                        (None, _) | (Some(b'\r'), None) => return Ok(Decoded::NeedMore),
                        (Some(b'\r'), Some(b'\n')) => buf.advance(2),
                        _ => return Err(ProtoError::BadChunk),
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(len) = line_len(buf, MAX_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let line = crlf_line(&buf[..len])?;
                    let blank = line.is_empty();
                    if !blank && !is_field_line(line) {
                        return Err(ProtoError::BadChunk);
                    }
                    buf.advance(len);
                    if blank {
                        self.state = State::Done;
                        return Ok(Decoded::Done);
                    }
                    let seen = seen + len;
                    if seen > MAX_HEAD {
                        return Err(ProtoError::BadChunk);
                    }
                    self.state = State::Trailers(seen);
                }
            }
        }
    }

    /// The connection reached its end: fine for a close-delimited body (which ends here), an
    /// error for any other body that has not ended yet.
    pub fn eof(&mut self) -> Result<(), ProtoError> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(ProtoError::Incomplete),
        }
    }
}

/// The length of the line (through its `\n`) at the front of `buf`; `None` if it is not all
/// there. Read in place and skipped with `advance`: splitting it off as its own `BytesMut`
/// cost a reference count (and, the first time, an allocation) per chunk.
fn line_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtoError> {
    match buf.iter().take(max + 1).position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() > max => Err(ProtoError::BadChunk),
        None => Ok(None),
    }
}

/// A line (through its `\n`, as [`line_len`] found it) without its ending, which must be
/// CRLF; a CR anywhere else in it is refused too (RFC 9112 §7.1: CRLF everywhere).
fn crlf_line(line: &[u8]) -> Result<&[u8], ProtoError> {
    match line {
        [text @ .., b'\r', b'\n'] if !text.contains(&b'\r') => Ok(text),
        _ => Err(ProtoError::BadChunk),
    }
}

/// Whether a trailer line is a header field: a token, `:`, then a value of visible bytes,
/// spaces and tabs (no obs-fold, no control bytes).
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || b == b' ' || (b > 0x20 && b != 0x7f))
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The size of a chunk-size line (`1a;ext=1\r\n`), read as hyper reads it: hex digits, then
/// optional spaces or tabs, then either the end or `;` and extensions (ignored) up to a CRLF
/// that ends the line. Anything else after the size (`7 zz`, `7\rX\n`), a line not ending in
/// CRLF, or a size over 64 bits is refused.
fn chunk_size(line: &[u8]) -> Result<u64, ProtoError> {
    let line = crlf_line(line)?;
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 {
        return Err(ProtoError::BadChunk);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(ProtoError::BadChunk)?;
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len())..];
    match rest.first() {
        None | Some(b';') => Ok(size),
        Some(_) => Err(ProtoError::BadChunk),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Feeds `wire` to a fresh decoder in pieces of `step` bytes; the body, or the first error.
    fn decode_in_steps(
        framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), ProtoError> {
        let mut dec = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Done => return Ok((body, buf.to_vec())),
                Decoded::NeedMore if fed < wire.len() => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
                Decoded::NeedMore => {
                    dec.eof()?;
                    return Ok((body, buf.to_vec()));
                }
            }
        }
    }

    #[test]
    fn chunked_body_decodes_the_same_at_every_split() {
        let wire = b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (body, rest) = decode_in_steps(Framing::Chunked, wire, step).unwrap();
            assert_eq!(body, b"hello 0123456789abcdef", "step {step}");
            // Bytes after the body are not taken (they belong to whatever comes next).
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn length_body_stops_at_its_length() {
        for step in 1..12 {
            let (body, rest) = decode_in_steps(Framing::Length(5), b"hello", step).unwrap();
            assert_eq!(
                (body.as_slice(), rest.as_slice()),
                (&b"hello"[..], &b""[..])
            );
        }
        let mut dec = BodyDecoder::new(Framing::Length(3));
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert!(dec.is_done(), "done as soon as the last byte is out");
        assert_eq!(&buf[..], b"def");
    }

    #[test]
    fn a_body_cut_short_is_an_error_but_a_close_delimited_one_ends() {
        assert_eq!(
            decode_in_steps(Framing::Length(10), b"hello", 2),
            Err(ProtoError::Incomplete)
        );
        assert_eq!(
            decode_in_steps(Framing::Chunked, b"5\r\nhel", 2),
            Err(ProtoError::Incomplete)
        );
        let (body, _) = decode_in_steps(Framing::Close, b"all of it", 4).unwrap();
        assert_eq!(body, b"all of it");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\nhello\r\n",
            b"11111111111111111\r\n",
        ] {
            assert_eq!(
                decode_in_steps(Framing::Chunked, wire, 3),
                Err(ProtoError::BadChunk),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        let endless = vec![b'1'; MAX_LINE + 10];
        assert_eq!(
            decode_in_steps(Framing::Chunked, &endless, 512),
            Err(ProtoError::BadChunk)
        );
    }

    /// The five framings issue 17 found accepted (hyper refuses each), and their kin.
    const NOT_CRLF_CHUNKED: [&[u8]; 12] = [
        b"7 zz\r\nabcdefg\r\n0\r\n\r\n", // junk after the size
        b"7\rX\nabcdefg\r\n0\r\n\r\n",   // CR not followed by LF
        b"2;\nxx\r\n0\r\n\r\n",          // LF inside the extensions
        b"2\nxx\r\n0\r\n\r\n",           // bare-LF size line
        b"2\r\nxx\n0\r\n\r\n",           // bare-LF data end
        b"2\r\nxx\r\n0\r\n\r\r\n",       // CR CR LF ending the trailers
        b"2\r\nxx\r\n0\n\r\n",           // bare-LF last-chunk line
        b"2\r\nxx\r\n0\r\n\n",           // bare-LF end of trailers
        b"2\r\nxx\r\n0\r\nx-t: 1\n\r\n", // bare-LF trailer line
        b"2;a\rb\r\nxx\r\n0\r\n\r\n",    // CR inside the extensions
        b"2\r\nxxX\r\n0\r\n\r\n",        // data longer than its size
        b" 2\r\nxx\r\n0\r\n\r\n",        // space before the size
    ];

    /// Valid chunked bodies and what they decode to.
    const VALID_CHUNKED: [(&[u8], &[u8]); 6] = [
        (b"0\r\n\r\n", b""),
        (b"2\r\nxx\r\n0\r\n\r\n", b"xx"),
        (b"2 \t;a=b\r\nxx\r\n0\r\n\r\n", b"xx"),
        (b"2;a=\"x y\";b\r\nxx\r\n0;z\r\n\r\n", b"xx"),
        (
            b"A\r\n0123456789\r\n0\r\nx-t: 1\r\ny:\r\n\r\n",
            b"0123456789",
        ),
        (b"00000000000000000001\r\nx\r\n0\r\n\r\n", b"x"),
    ];

    #[test]
    fn chunked_framing_requires_crlf_everywhere() {
        for wire in NOT_CRLF_CHUNKED {
            for step in [1, 3, wire.len()] {
                assert_eq!(
                    decode_in_steps(Framing::Chunked, wire, step),
                    Err(ProtoError::BadChunk),
                    "step {step}: {:?}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
        for (wire, body) in VALID_CHUNKED {
            for step in 1..=wire.len() {
                let (got, rest) = decode_in_steps(Framing::Chunked, wire, step).unwrap();
                assert_eq!((got.as_slice(), rest.as_slice()), (body, &b""[..]));
            }
        }
    }

    #[test]
    fn trailers_must_be_header_fields() {
        for wire in [
            &b"0\r\nno colon\r\n\r\n"[..],
            b"0\r\n folded: 1\r\n\r\n",
            b"0\r\nx-t: a\x00b\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
        ] {
            assert_eq!(
                decode_in_steps(Framing::Chunked, wire, 2),
                Err(ProtoError::BadChunk),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    /// What hyper's HTTP/1.1 server makes of a chunked request body: the body, or `None` when
    /// it refuses the framing.
    async fn hyper_decodes(chunked: &[u8]) -> Option<Vec<u8>> {
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let tx = tx.lock().unwrap().take();
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .ok()
                        .map(|b| b.to_bytes().to_vec());
                    if let Some(tx) = tx {
                        let _ = tx.send(body);
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                        Bytes,
                    >::new(
                    )))
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let served = tokio::spawn(conn);
        let (rd, mut wr) = tokio::io::split(client);
        let mut wire = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        wire.extend_from_slice(chunked);
        wr.write_all(&wire).await.unwrap();
        // The connection stays open until the service saw the body (at the end of input
        // hyper would drop a request it is still reading). A body hyper still waits on after a
        // moment (it read `0\r\n\n` as the start of a trailer line) is not one it accepts:
        // the input ends there.
        let mut rx = rx;
        let body = match tokio::time::timeout(std::time::Duration::from_millis(500), &mut rx).await
        {
            Ok(body) => body.ok().flatten(),
            Err(_) => {
                wr.shutdown().await.unwrap();
                rx.await.ok().flatten()
            }
        };
        drop((rd, wr));
        let _ = served.await;
        body
    }

    /// The decoder accepts and refuses what hyper's does, with the same bytes out.
    #[tokio::test]
    async fn chunked_decoding_agrees_with_hyper() {
        let mut inputs: Vec<&[u8]> = NOT_CRLF_CHUNKED.to_vec();
        inputs.extend(VALID_CHUNKED.iter().map(|(w, _)| *w));
        inputs.extend([
            &b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\n"[..],
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\nx\r\n0\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
        ]);
        for wire in inputs {
            let ours = decode_in_steps(Framing::Chunked, wire, 2)
                .ok()
                .map(|(b, _)| b);
            let theirs = hyper_decodes(wire).await;
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(wire));
        }
    }

    fn head(wire: &str, method: Method) -> Result<Option<ResponseHead>, ProtoError> {
        parse_response_head(&mut BytesMut::from(wire.as_bytes()), &method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
            Method::POST,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(12), true));
        let h = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            Method::POST,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        // Both: chunked wins, the length is dropped, the connection is not reused.
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            Method::POST,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        let h = head("HTTP/1.1 200 OK\r\n\r\n", Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = head("HTTP/1.1 204 No Content\r\n\r\n", Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let h = head(
            "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(7));
    }

    #[test]
    fn interim_answers_are_skipped_and_partial_heads_wait() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nhi"[..],
        );
        let h = parse_response_head(&mut buf, &Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(&buf[..], b"hi");
        assert!(head("HTTP/1.1 200 OK\r\ncontent-len", Method::GET)
            .unwrap()
            .is_none());
    }

    #[test]
    fn interim_answers_are_capped_across_reads() {
        let interim = "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n";
        let done = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        // Up to the cap, in one buffer, the real answer is found.
        let mut buf = BytesMut::from(format!("{}{done}", interim.repeat(MAX_INTERIM)).as_bytes());
        let h = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        // One more is an error.
        let mut buf =
            BytesMut::from(format!("{}{done}", interim.repeat(MAX_INTERIM + 1)).as_bytes());
        assert_eq!(
            parse_response_head(&mut buf, &Method::GET).unwrap_err(),
            ProtoError::TooManyInterim
        );
        // The count carries over reads: one interim answer per read still ends.
        let mut count = 0;
        let mut buf = BytesMut::new();
        let mut result = Ok(None);
        for _ in 0..=MAX_INTERIM {
            buf.extend_from_slice(interim.as_bytes());
            result = parse_response_head_counted(&mut buf, &Method::GET, &mut count);
            if result.is_err() {
                break;
            }
            assert!(result.as_ref().unwrap().is_none());
        }
        assert_eq!(result.unwrap_err(), ProtoError::TooManyInterim);
    }

    #[test]
    fn content_length_lines_must_agree() {
        let fold = |lines: &[&str]| {
            let mut f = LengthFold::default();
            for l in lines {
                f.add(l.as_bytes());
            }
            f.get()
        };
        assert_eq!(fold(&["0"]), Ok(0));
        assert_eq!(fold(&["42"]), Ok(42));
        assert_eq!(fold(&["5, 5", "5"]), Ok(5));
        assert_eq!(fold(&[" 7 ,\t7"]), Ok(7));
        assert_eq!(fold(&["18446744073709551615"]), Ok(u64::MAX));
        for bad in [
            &[][..],
            &[""],
            &["5, 6"],
            &["5", "6"],
            &["5,"],
            &["+5"],
            &["-1"],
            &["0x10"],
            &["1 2"],
            &["18446744073709551616"],
            &["٣"],
        ] {
            assert_eq!(fold(bad), Err(ProtoError::BadContentLength), "{bad:?}");
        }
        let mut map = HeaderMap::new();
        map.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        map.append(header::CONTENT_LENGTH, HeaderValue::from_static("3, 3"));
        assert_eq!(content_length(&map), Ok(3));
        map.append(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        assert_eq!(content_length(&map), Err(ProtoError::BadContentLength));
    }

    #[test]
    fn bad_heads_are_refused() {
        assert_eq!(
            head(
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
                Method::GET
            )
            .unwrap_err(),
            ProtoError::BadContentLength
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", Method::GET).unwrap_err(),
            ProtoError::BadContentLength
        );
        assert_eq!(
            head("HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET).unwrap_err(),
            ProtoError::SwitchingProtocols
        );
        assert!(matches!(
            head("SSH-2.0-OpenSSH\r\n\r\n", Method::GET),
            Err(ProtoError::BadHead(_))
        ));
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            head(&huge, Method::GET).unwrap_err(),
            ProtoError::HeadTooLarge
        );
    }

    #[test]
    fn request_head_sets_its_own_framing() {
        let (ct, cl, te, host_name) = (
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::HOST,
        );
        let json = HeaderValue::from_static("application/json");
        let (len, chunked, client_host) = (
            HeaderValue::from_static("999"),
            HeaderValue::from_static("chunked"),
            HeaderValue::from_static("client.example"),
        );
        let lines = [
            (&ct, &json),
            (&cl, &len),
            (&te, &chunked),
            (&host_name, &client_host),
        ];
        let mut out = Vec::new();
        let host = HeaderValue::from_static("127.0.0.1:8080");
        encode_request_head(
            &mut out,
            &Method::POST,
            "/v1/chat/completions?a=1",
            &host,
            &lines,
            1234,
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /v1/chat/completions?a=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\
             content-type: application/json\r\ncontent-length: 1234\r\n\r\n"
        );
        encode_request_head(&mut out, &Method::GET, "/v1/models", &host, &[], 0);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\r\n"
        );
        encode_request_head(&mut out, &Method::POST, "/", &host, &[], 0);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("content-length: 0\r\n\r\n"));
    }

    #[test]
    fn header_values_survive_the_buffer_moving_on() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nx-empty:\r\nx-a: one two \r\nset-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: 4\r\n\r\nbody"[..],
        );
        let h = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        // The buffer is reused for what comes next; the values must not change with it.
        buf.clear();
        buf.extend_from_slice(&[b'#'; 256]);
        assert_eq!(h.headers["x-empty"], "");
        assert_eq!(h.headers["x-a"], "one two");
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h.framing, Framing::Length(4));
    }

    #[test]
    fn response_map_has_no_hop_by_hop_headers() {
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nConnection: keep-alive, X-Hop\r\n\
             keep-alive: timeout=5\r\nx-hop: 1\r\ntransfer-encoding: chunked\r\nupgrade: h2c\r\n\
             trailer: x-t\r\nx-kept: 2\r\n\r\n",
            Method::POST,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-kept"]);
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
    }

    #[test]
    fn only_plain_targets_are_sent_as_they_are() {
        assert!(is_plain_target("/v1/chat/completions?x=%20&y=a:b"));
        assert!(!is_plain_target("/v1/a b"));
        assert!(!is_plain_target("/v1/\"quoted\""));
        assert!(!is_plain_target("v1/no-slash"));
        assert!(!is_plain_target("/v1/\u{e9}"));
        assert!(!is_plain_target("/v1/a#frag"));
    }
}
