//! The HTTP/1.1 message heads of the pooled upstream client ([`super::client`]): request heads
//! out, response heads in, and the body framing a head chooses (RFC 9112 §6); the body itself
//! is read by [`super::body_decoder`].
//!
//! Pure functions over byte buffers, no I/O: the connection code reads into a buffer and asks
//! this module what the bytes mean, so every way the network may split an answer can be tested
//! without a socket. Response heads are parsed by `httparse` (the parser hyper uses). The one
//! state is in [`super::headers`] (the name cache and the map pool).

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::headers::{connection_tokens, header_map, header_name, is_hop_by_hop};

/// Largest response head accepted (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer line accepted.
pub(crate) const MAX_LINE: usize = 4096;

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

/// Writes the low `out.len()` lower-case hex digits of `v` into `out`.
pub fn hex_into(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
