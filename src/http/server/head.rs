//! Request heads: parsed off the front of the read buffer (httparse), with the limits and
//! framing rules of RFC 9112 (431 past the size limits, 400 for malformed heads and for
//! ambiguous framing), as a [`HeadError`] the handler turns into its answer.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use crate::http::headers::{connection_tokens, header_map, header_name};
use crate::http::wire::{Framing, LengthFold};

/// Most header lines a request may have (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Largest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why a request head was refused: the status to answer with, a stable machine-readable code
/// and a message for the client. The connection closes after the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
}

impl HeadError {
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        HeadError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    fn too_large(code: &'static str, message: String) -> Self {
        HeadError {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for HeadError {}

/// A parsed request head and what it says about the connection.
pub(super) struct Head {
    pub(super) request: Request<()>,
    pub(super) body: Framing,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
}

/// Parses a request head off the front of `buf`. `Ok(None)`: not all there yet.
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, HeadError> {
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
                return Err(HeadError::bad_request(
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
            .map_err(|_| HeadError::bad_request("malformed_request", "Invalid HTTP method"))?;
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
        .map_err(|_| HeadError::bad_request("malformed_request", "Invalid request target"))?;
    let mut headers = header_map(count);
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut length = LengthFold::default();
    let mut hosts = 0usize;
    let mut host_ok = true;
    for &[n0, n1, v0, v1] in &spans[..count] {
        let name = header_name(&head[usize::from(n0)..usize::from(n1)])
            .map_err(|_| HeadError::bad_request("malformed_request", "Invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(usize::from(v0)..usize::from(v1)))
            .map_err(|_| HeadError::bad_request("malformed_request", "Invalid header value"))?;
        if name == header::CONNECTION {
            for token in connection_tokens(value.to_str().unwrap_or("")) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding counts: `gzip, chunked` is chunked, `chunked, gzip` is not.
            chunked = value
                .to_str()
                .ok()
                .and_then(|v| connection_tokens(v).last())
                .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::CONTENT_LENGTH {
            length.add(value.as_bytes());
        } else if name == header::HOST {
            hosts += 1;
            host_ok &= is_valid_host(value.as_bytes());
        }
        headers.append(name, value);
    }
    let body = if transfer_encoding {
        // RFC 9112 §6.1/§6.3: a request whose last coding is not chunked has no knowable
        // length, and one with both headers is how request smuggling starts: refuse both.
        if !chunked || version == Version::HTTP_10 {
            return Err(HeadError::bad_request(
                "invalid_transfer_encoding",
                "Transfer-Encoding must end with chunked (and needs HTTP/1.1)",
            ));
        }
        if length.is_given() {
            return Err(HeadError::bad_request(
                "invalid_framing",
                "A request may not have both Content-Length and Transfer-Encoding",
            ));
        }
        Framing::Chunked
    } else if length.is_given() {
        let n = length.get().map_err(|_| {
            HeadError::bad_request("invalid_content_length", "Invalid Content-Length")
        })?;
        Framing::Length(n)
    } else {
        Framing::Empty
    };
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, any request with more than one, or one
    // whose value is not a host and port, is 400 (HTTP/1.0 may leave it out).
    if hosts > 1 || !host_ok || (hosts == 0 && version == Version::HTTP_11) {
        return Err(HeadError::bad_request(
            "invalid_host",
            "The request needs exactly one valid Host header",
        ));
    }
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

/// A `Host` value: `uri-host [":" port]` (RFC 9110 §7.2), or empty (a target without an
/// authority). No user info, path, or bytes an authority cannot hold.
fn is_valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    if value.contains(&b'@') {
        return false;
    }
    if http::uri::Authority::try_from(value).is_err() {
        return false;
    }
    // The authority parser takes any port text; a Host's port is digits.
    let port = match value.strip_prefix(b"[") {
        Some(v6) => match v6.iter().position(|&b| b == b']') {
            Some(end) => &v6[end + 1..],
            None => return false,
        },
        None => match value.iter().rposition(|&b| b == b':') {
            Some(colon) if colon > 0 => &value[colon..],
            Some(_) => return false,
            None => &[],
        },
    };
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// [`parse_head`] for the criterion benches: the request as the pipeline gets it.
pub fn parse_request_head(buf: &mut BytesMut) -> Result<Option<Request<()>>, HeadError> {
    parse_head(buf).map(|head| head.map(|h| h.request))
}

/// A request head with what the connection loop acts on: the framing of its body, keep-alive,
/// `Expect: 100-continue`.
#[doc(hidden)]
pub type HeadParts = (Request<()>, Framing, bool, bool);

/// [`parse_head`] with the framing, keep-alive and `Expect: 100-continue` the connection loop
/// acts on: for the fuzz targets (through `sophgate::fuzzing`), not an API.
#[doc(hidden)]
pub fn parse_request_head_framing(buf: &mut BytesMut) -> Result<Option<HeadParts>, HeadError> {
    parse_head(buf).map(|head| head.map(|h| (h.request, h.body, h.keep_alive, h.expect_continue)))
}

fn head_too_large() -> HeadError {
    HeadError::too_large(
        "request_header_too_large",
        format!("The request head is larger than {MAX_HEAD_BYTES} bytes"),
    )
}

fn too_many_headers() -> HeadError {
    HeadError::too_large(
        "too_many_headers",
        format!("The request has more than {MAX_HEADERS} header lines"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Parses `text`, with a `Host` line added to an HTTP/1.1 head that has none (the rules
    /// under test are others; `host_is_required_once_and_valid` tests Host).
    fn parse(text: &str) -> Result<Option<Head>, HeadError> {
        let lower = text.to_ascii_lowercase();
        let text = match text.split_once("\r\n") {
            Some((line, rest)) if line.ends_with(" HTTP/1.1") && !lower.contains("\r\nhost:") => {
                format!("{line}\r\nHost: t\r\n{rest}")
            }
            _ => text.to_owned(),
        };
        parse_raw(&text)
    }

    fn parse_raw(text: &str) -> Result<Option<Head>, HeadError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf)
    }

    #[test]
    fn host_is_required_once_and_valid() {
        let code = |t: &str| match parse_raw(t) {
            Ok(Some(_)) => "accepted",
            Ok(None) => "incomplete",
            Err(e) => {
                assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{t:?}");
                e.code
            }
        };
        for good in [
            "GET / HTTP/1.1\r\nHost: gw\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: gw\r\n\r\n",
        ] {
            assert_eq!(code(good), "accepted", "{good:?}");
        }
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@gw\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw/path\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw:port\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a/b\r\n\r\n",
        ] {
            assert_eq!(code(bad), "invalid_host", "{bad:?}");
        }
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
}
