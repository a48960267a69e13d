//! The HTTP/1.1 server side, black box: raw bytes over a loopback socket. Keep-alive,
//! pipelining, HTTP/1.0, `Connection: close`, chunked request bodies, request-smuggling guards,
//! malformed and oversized heads (JSON errors), `Expect: 100-continue`, HEAD, unread bodies,
//! response framing, a stalled second head, and a client that resets mid-stream.
//!
//! Every read is bounded (5 s), so a server that hangs fails a test instead of stalling the run.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use sophgate::tools::mock::MockOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any single read may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/1.x response as read off the wire.
struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    version: String,
    status: u16,
    /// Names lowercased, in wire order, duplicates kept.
    headers: Vec<(String, String)>,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// The body bytes exactly as they came (chunk framing included).
    raw_body: Vec<u8>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("version", &self.version)
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("raw_body", &String::from_utf8_lossy(&self.raw_body))
            .finish()
    }
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// Asserts the body is an OpenAI-shaped error and returns `error.type`.
    fn error_type(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: error body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        });
        let e = &v["error"];
        assert!(e["message"].is_string(), "error.message in {v}");
        assert!(e["type"].is_string(), "error.type in {v}");
        assert!(e["code"].is_string(), "error.code in {v}");
        e["type"].as_str().unwrap().to_owned()
    }

    /// A `Date` header in IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`).
    fn assert_date(&self) {
        let date = self
            .header("date")
            .unwrap_or_else(|| panic!("no date header on a {} response", self.status));
        assert!(
            date.len() == 29 && date.ends_with(" GMT") && date.as_bytes()[3] == b',',
            "date header {date:?} is not an IMF-fixdate"
        );
    }
}

/// A raw client connection: bytes received but not yet consumed stay in `buf` for the next
/// response, so pipelined and kept-alive answers can be read one at a time.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    async fn open(env: &Env) -> Conn {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(env.gateway.addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes.as_ref()))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Like `send`, but a write error is ignored: a server may answer and close before it has
    /// read everything (an oversized head); the answer is still there to read.
    async fn send_lossy(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes.as_ref())).await;
    }

    /// Reads more bytes into `buf`; false at EOF (or a reset). Panics after `IO_TIMEOUT`.
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "nothing from the gateway within {IO_TIMEOUT:?}; unread so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Consumes one CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(
                self.fill().await,
                "connection ended inside a line: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Consumes exactly `n` bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "connection ended after {} of {n} body bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one response head (status line and headers); the body stays unread.
    async fn head(&mut self) -> Response {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill().await,
                "connection ended before a complete response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head: Vec<u8> = self.buf.drain(..end + 4).collect();
        let head = String::from_utf8(head).expect("response head is not UTF-8");
        let mut lines = head[..end].split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap().to_owned();
        assert!(
            version == "HTTP/1.1" || version == "HTTP/1.0",
            "bad status line {status_line:?}"
        );
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {l:?}"));
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        Response {
            version,
            status,
            headers,
            body: Vec::new(),
            raw_body: Vec::new(),
        }
    }

    /// Reads the body of `resp`: none for HEAD / 1xx / 204 / 304, else chunked, else
    /// `content-length`, else up to EOF.
    async fn body(&mut self, resp: &mut Response, to_head_request: bool) {
        if to_head_request || resp.status < 200 || resp.status == 204 || resp.status == 304 {
            return;
        }
        if resp.is_chunked() {
            loop {
                let size_line = self.line().await;
                resp.raw_body.extend_from_slice(&size_line);
                resp.raw_body.extend_from_slice(b"\r\n");
                let text = String::from_utf8_lossy(&size_line);
                let hex = text.split(';').next().unwrap().trim();
                let size = usize::from_str_radix(hex, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {text:?}"));
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let t = self.line().await;
                        resp.raw_body.extend_from_slice(&t);
                        resp.raw_body.extend_from_slice(b"\r\n");
                        if t.is_empty() {
                            return;
                        }
                    }
                }
                let data = self.take(size + 2).await;
                assert_eq!(&data[size..], b"\r\n", "chunk not followed by CRLF");
                resp.body.extend_from_slice(&data[..size]);
                resp.raw_body.extend_from_slice(&data);
            }
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl
                .parse()
                .unwrap_or_else(|_| panic!("bad content-length {cl:?}"));
            resp.body = self.take(n).await;
            resp.raw_body = resp.body.clone();
        } else {
            while self.fill().await {}
            resp.body = std::mem::take(&mut self.buf);
            resp.raw_body = resp.body.clone();
        }
    }

    /// Reads one whole response to a non-HEAD request.
    async fn response(&mut self) -> Response {
        self.response_to(false).await
    }

    async fn response_to(&mut self, head_request: bool) -> Response {
        let mut resp = self.head().await;
        self.body(&mut resp, head_request).await;
        resp
    }

    /// Asserts nothing more is pending and the gateway closes the connection (EOF or reset)
    /// within `IO_TIMEOUT`.
    async fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "stray bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        if self.eof {
            return;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut chunk)).await {
            Err(_) => panic!("the gateway kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
            Ok(Ok(n)) => panic!(
                "expected the connection to close, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
        }
    }

    /// Asserts nothing more arrives for a moment and the connection is not closed.
    async fn expect_open_and_quiet(&mut self) {
        assert!(
            self.buf.is_empty(),
            "stray bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        assert!(!self.eof, "the connection was closed");
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(300), self.stream.read(&mut chunk)).await {
            Err(_) => {}
            Ok(Ok(0)) => panic!("the gateway closed a kept-alive connection"),
            Ok(Err(e)) => panic!("the kept-alive connection failed: {e}"),
            Ok(Ok(n)) => panic!(
                "unexpected bytes on an idle connection: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n")
}

fn get_with_id(path: &str, id: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\nX-Request-Id: {id}\r\n\r\n")
}

/// A complete chat POST with `content-length`; `extra` is extra header lines, each ending CRLF.
fn chat_request(key: &str, body: &str, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// Chunked encoding of `body` in pieces of `piece` bytes, the terminating chunk, no trailers.
fn chunked(body: &str, piece: usize) -> String {
    let mut out = String::new();
    for c in body.as_bytes().chunks(piece) {
        out.push_str(&format!("{:x}\r\n", c.len()));
        out.push_str(std::str::from_utf8(c).unwrap());
        out.push_str("\r\n");
    }
    out.push_str("0\r\n\r\n");
    out
}

fn assert_health(resp: &Response) {
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "{\"status\":\"ok\"}", "{resp:?}");
}

fn assert_chat_completion(resp: &Response) {
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("chat answer not JSON ({e}): {}", resp.text()));
    assert_eq!(v["object"], "chat.completion", "{v}");
}

/// A fresh connection still gets a normal answer.
async fn assert_still_serving(env: &Env) {
    let mut c = Conn::open(env).await;
    c.send(get("/health")).await;
    assert_health(&c.response().await);
}

// 1. Keep-alive.
#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    for _ in 0..2 {
        c.send(get("/health")).await;
        let resp = c.response().await;
        assert_health(&resp);
        assert_eq!(resp.version, "HTTP/1.1");
        assert!(
            !resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "{resp:?}"
        );
    }
    c.expect_open_and_quiet().await;
    // Still usable, for a chat request too.
    c.send(chat_request(
        CLIENT_KEY,
        &chat_body("mock-model", false),
        "",
    ))
    .await;
    assert_chat_completion(&c.response().await);
    c.expect_open_and_quiet().await;
}

// 2. Pipelining.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    let mut all = String::new();
    all.push_str(&get_with_id("/health", "pipe-1"));
    all.push_str(&chat_request(
        CLIENT_KEY,
        &chat_body("mock-model", true),
        "X-Request-Id: pipe-2\r\n",
    ));
    all.push_str(&chat_request(
        CLIENT_KEY,
        &chat_body("mock-model", false),
        "X-Request-Id: pipe-3\r\n",
    ));
    all.push_str(&get_with_id("/nope", "pipe-4"));
    c.send(all).await;

    let r1 = c.response().await;
    assert_health(&r1);
    assert_eq!(r1.header("x-request-id"), Some("pipe-1"));
    let r2 = c.response().await;
    assert_eq!(r2.status, 200);
    assert_eq!(r2.header("x-request-id"), Some("pipe-2"));
    assert!(r2.text().contains("data: [DONE]"), "{}", r2.text());
    let r3 = c.response().await;
    assert_chat_completion(&r3);
    assert_eq!(r3.header("x-request-id"), Some("pipe-3"));
    let r4 = c.response().await;
    assert_eq!(r4.status, 404);
    assert_eq!(r4.header("x-request-id"), Some("pipe-4"));
    c.expect_open_and_quiet().await;
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 2);
}

// 3a. HTTP/1.0 closes by default.
#[tokio::test]
async fn http10_without_keep_alive_gets_one_response_then_eof() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    // A second request right behind the first: it must not be answered.
    c.send("GET /health HTTP/1.0\r\n\r\nGET /health HTTP/1.0\r\n\r\n")
        .await;
    let resp = c.response().await;
    assert_health(&resp);
    assert_ne!(
        resp.header("connection")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Some("keep-alive")
    );
    c.expect_closed().await;
}

// 3b. HTTP/1.0 with keep-alive.
#[tokio::test]
async fn http10_with_keep_alive_keeps_the_connection() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    for _ in 0..2 {
        c.send("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let resp = c.response().await;
        assert_health(&resp);
        assert_eq!(
            resp.header("connection").map(|v| v.to_ascii_lowercase()),
            Some("keep-alive".to_owned()),
            "{resp:?}"
        );
        assert!(resp.header("content-length").is_some(), "{resp:?}");
        assert!(!resp.is_chunked(), "chunked answer to HTTP/1.0: {resp:?}");
    }
    c.expect_open_and_quiet().await;
    // Without keep-alive now: answered, then closed.
    c.send("GET /health HTTP/1.0\r\n\r\n").await;
    assert_health(&c.response().await);
    c.expect_closed().await;
}

fn chat_request_10(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\n\
         Authorization: Bearer {CLIENT_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

// 3c. HTTP/1.0 has no chunked encoding: a JSON chat answer is framed by its length (so the
// connection is kept), an SSE answer otherwise (by closing the connection).
#[tokio::test]
async fn http10_chat_answers_are_never_chunked() {
    // An upstream that sends its JSON answers with a content-length (the mock chunks them).
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "").await;
    let mut c = Conn::open(&env).await;
    for _ in 0..2 {
        c.send(chat_request_10(&chat_body("m", false))).await;
        let resp = c.response().await;
        assert_chat_completion(&resp);
        assert!(!resp.is_chunked(), "chunked answer to HTTP/1.0: {resp:?}");
        assert!(resp.header("content-length").is_some(), "{resp:?}");
        assert_eq!(
            resp.header("connection").map(|v| v.to_ascii_lowercase()),
            Some("keep-alive".to_owned()),
            "{resp:?}"
        );
    }
    c.expect_open_and_quiet().await;

    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    c.send(chat_request_10(&chat_body("mock-model", true)))
        .await;
    let resp = c.response().await;
    assert_eq!(resp.status, 200);
    assert!(!resp.is_chunked(), "chunked answer to HTTP/1.0: {resp:?}");
    assert!(resp.text().ends_with("data: [DONE]\n\n"), "{}", resp.text());
}

// 4. Connection: close.
#[tokio::test]
async fn connection_close_is_honoured() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    c.send(
        "GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n\
         GET /health HTTP/1.1\r\nHost: gw\r\n\r\n",
    )
    .await;
    let resp = c.response().await;
    assert_health(&resp);
    assert_eq!(
        resp.header("connection").map(|v| v.to_ascii_lowercase()),
        Some("close".to_owned()),
        "{resp:?}"
    );
    c.expect_closed().await;
}

// 5a. Chunked request body with an extension and a trailer.
#[tokio::test]
async fn chunked_request_body_with_extension_and_trailer_is_accepted() {
    let env = start("", MockOptions::default()).await;
    let body = chat_body("mock-model", false);
    let (a, b) = body.split_at(10);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x};foo=bar\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nX-Trailer: yes\r\n\r\n",
        a.len(),
        b.len()
    );
    let mut c = Conn::open(&env).await;
    c.send(&req).await;
    assert_chat_completion(&c.response().await);
    let seen = env.mock.stats.last_request().unwrap();
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    let got: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(got["messages"], sent["messages"]);
    // The trailer was consumed: the connection carries on with the next request.
    c.send(get("/health")).await;
    assert_health(&c.response().await);
    c.expect_open_and_quiet().await;
}

// 5b. Malformed chunk size.
#[tokio::test]
async fn malformed_chunk_size_is_400() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        chat_body("mock-model", false)
    ))
    .await;
    let resp = c.response().await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
    // The framing is lost: nothing more may be read from this connection.
    c.expect_closed().await;
    assert_still_serving(&env).await;
}

// 6. Request smuggling guards.
#[tokio::test]
async fn ambiguous_framing_is_400_and_the_connection_closes() {
    let env = start("", MockOptions::default()).await;
    let body = chat_body("mock-model", false);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\n"
    );
    let cases = [
        (
            "content-length and chunked",
            format!(
                "{head}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{}{smuggled}",
                body.len(),
                chunked(&body, 16)
            ),
        ),
        (
            "chunked and content-length",
            format!(
                "{head}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{}{smuggled}",
                chunked(&body, 16)
            ),
        ),
        (
            "two different content-lengths",
            format!(
                "{head}Content-Length: {}\r\nContent-Length: {}\r\n\r\n{body}{smuggled}",
                body.len(),
                body.len() + smuggled.len()
            ),
        ),
        (
            "non-numeric content-length",
            format!("{head}Content-Length: abc\r\n\r\n{body}{smuggled}"),
        ),
        (
            "signed content-length",
            format!(
                "{head}Content-Length: +{}\r\n\r\n{body}{smuggled}",
                body.len()
            ),
        ),
    ];
    // Every case is tried; the failures are reported together.
    let mut failures = Vec::new();
    for (what, req) in cases {
        let mut c = Conn::open(&env).await;
        c.send(&req).await;
        let resp = c.response().await;
        if resp.status != 400 {
            failures.push(format!("{what}: status {} (want 400)", resp.status));
            continue;
        }
        // The smuggled request is never answered: the connection just closes.
        c.expect_closed().await;
        assert_still_serving(&env).await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
}

// 7. Garbage request line.
#[tokio::test]
async fn garbage_request_line_is_a_json_400() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    c.send("NOT HTTP\r\n\r\n").await;
    let resp = c.response().await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.error_type(), "invalid_request_error");
    assert_still_serving(&env).await;
}

// 7b. RFC 9112 §3.2: Host is required once on HTTP/1.1, and must be a host.
#[tokio::test]
async fn a_missing_repeated_or_malformed_host_is_400() {
    let env = start("", MockOptions::default()).await;
    for head in [
        "GET /health HTTP/1.1\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: gw\r\nhost: other\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: user@gw\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: gw/x\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: a b\r\n\r\n",
    ] {
        let mut c = Conn::open(&env).await;
        c.send(head).await;
        let resp = c.response().await;
        assert_eq!(resp.status, 400, "{head:?}: {resp:?}");
        assert_eq!(resp.error_type(), "invalid_request_error");
        assert!(resp.text().contains("invalid_host"), "{resp:?}");
        c.expect_closed().await;
    }
    // HTTP/1.0 may leave it out.
    let mut c = Conn::open(&env).await;
    c.send("GET /health HTTP/1.0\r\n\r\n").await;
    assert_health(&c.response().await);
    assert_still_serving(&env).await;
}

// 8a. Oversized header section.
#[tokio::test]
async fn a_header_section_over_64_kib_is_431() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    let huge = "a".repeat(70 * 1024);
    c.send_lossy(format!(
        "GET /health HTTP/1.1\r\nHost: gw\r\nX-Huge: {huge}\r\n\r\n"
    ))
    .await;
    let resp = c.response().await;
    assert_eq!(resp.status, 431, "{resp:?}");
    resp.error_type();
    assert_still_serving(&env).await;
}

// 8b. Too many header lines.
#[tokio::test]
async fn more_than_100_header_lines_is_431() {
    let env = start("", MockOptions::default()).await;
    let head = |lines: usize| {
        // `Host` plus `lines - 1` more.
        let mut h = String::from("GET /health HTTP/1.1\r\nHost: gw\r\n");
        for i in 1..lines {
            h.push_str(&format!("X-Header-{i}: v\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    // Exactly 100 lines are fine.
    let mut c = Conn::open(&env).await;
    c.send(head(100)).await;
    assert_health(&c.response().await);

    let mut c = Conn::open(&env).await;
    c.send_lossy(head(101)).await;
    let resp = c.response().await;
    assert_eq!(resp.status, 431, "{resp:?}");
    resp.error_type();
    assert_still_serving(&env).await;
}

// 9. Expect: 100-continue.
#[tokio::test]
async fn expect_100_continue_gets_an_interim_response_before_the_body() {
    let env = start("", MockOptions::default()).await;
    let body = chat_body("mock-model", false);
    let mut c = Conn::open(&env).await;
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    ))
    .await;
    let interim = c.head().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    assert_eq!(interim.version, "HTTP/1.1");
    assert!(c.buf.is_empty(), "bytes after 100 Continue before the body");
    c.send(&body).await;
    assert_chat_completion(&c.response().await);
    c.expect_open_and_quiet().await;
}

// 9b. A request refused before its body is read (auth) gets its answer, never 100 Continue.
#[tokio::test]
async fn expect_100_continue_is_not_sent_to_a_refused_request() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    c.send(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-wrong\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let resp = c.response().await;
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
}

// 10. HEAD.
#[tokio::test]
async fn head_has_no_body_and_the_connection_stays_in_sync() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    c.send("HEAD /health HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let resp = c.response_to(true).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // No body bytes follow the head.
    c.expect_open_and_quiet().await;
    c.send(get("/health")).await;
    assert_health(&c.response().await);
}

// 11. A rejected request's body, fully sent, is discarded and the connection kept.
#[tokio::test]
async fn an_unread_body_is_discarded_and_the_connection_kept() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;
    c.send(chat_request(
        "sk-wrong",
        &chat_body("mock-model", false),
        "",
    ))
    .await;
    let resp = c.response().await;
    assert_eq!(resp.status, 401, "{resp:?}");
    c.expect_open_and_quiet().await;
    c.send(chat_request(
        CLIENT_KEY,
        &chat_body("mock-model", false),
        "",
    ))
    .await;
    assert_chat_completion(&c.response().await);
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 1);
}

// 12a. A JSON answer whose length is known is framed by it. (The mock sends its JSON answers
// chunked, so the gateway cannot know their length without buffering; a raw upstream that
// sends a content-length is used instead.)
#[tokio::test]
async fn a_json_chat_answer_has_a_content_length() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "").await;
    let mut c = Conn::open(&env).await;
    for _ in 0..2 {
        c.send(chat_request(CLIENT_KEY, &chat_body("m", false), ""))
            .await;
        let json = c.response().await;
        assert_chat_completion(&json);
        assert!(!json.is_chunked(), "{json:?}");
        assert_eq!(
            json.header("content-length"),
            Some(json.body.len().to_string().as_str()),
            "{json:?}"
        );
        json.assert_date();
    }
    c.expect_open_and_quiet().await;
}

// 12b. A stream is chunked, ends with the last chunk, and every response carries a Date.
#[tokio::test]
async fn streams_are_chunked_and_every_response_has_a_date() {
    let env = start("", MockOptions::default()).await;
    let mut c = Conn::open(&env).await;

    c.send(chat_request(CLIENT_KEY, &chat_body("mock-model", true), ""))
        .await;
    let sse = c.response().await;
    assert_eq!(sse.status, 200);
    assert!(sse.is_chunked(), "{sse:?}");
    assert!(sse.header("content-length").is_none(), "{sse:?}");
    assert!(sse.text().ends_with("data: [DONE]\n\n"), "{}", sse.text());
    assert!(sse.raw_body.ends_with(b"\r\n0\r\n\r\n"), "{sse:?}");
    sse.assert_date();

    c.send(chat_request(
        CLIENT_KEY,
        &chat_body("mock-model", false),
        "",
    ))
    .await;
    let json = c.response().await;
    assert_chat_completion(&json);
    json.assert_date();

    c.send(get("/health")).await;
    let health = c.response().await;
    assert_health(&health);
    health.assert_date();

    c.send(get("/nope")).await;
    let not_found = c.response().await;
    assert_eq!(not_found.status, 404);
    not_found.assert_date();

    c.send(chat_request("sk-wrong", "{}", "")).await;
    let unauthorized = c.response().await;
    assert_eq!(unauthorized.status, 401);
    unauthorized.assert_date();
    c.expect_open_and_quiet().await;

    // Errors the HTTP layer makes itself too.
    let mut c = Conn::open(&env).await;
    c.send("NOT HTTP\r\n\r\n").await;
    let bad = c.response().await;
    assert_eq!(bad.status, 400);
    bad.assert_date();
}

// 13. The header timeout covers later heads on a kept-alive connection too (the first head's
// stall is in tests/it/server.rs).
#[tokio::test]
async fn a_stalled_second_head_is_closed_after_the_header_timeout() {
    let env = start(
        "limits:\n  header_read_timeout: 0.5\n",
        MockOptions::default(),
    )
    .await;
    let mut c = Conn::open(&env).await;
    c.send(get("/health")).await;
    assert_health(&c.response().await);
    let t0 = Instant::now();
    c.send("GET /health HTTP/1.1\r\nHost: gw\r\nX-Half: ").await;
    c.expect_closed().await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took <= Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert_still_serving(&env).await;
}

// 14. A client that resets its socket mid-stream (the graceful close is in tests/it/cancel.rs).
#[tokio::test]
async fn a_client_reset_mid_stream_leaves_the_gateway_serving() {
    let opts = MockOptions {
        itl: Duration::from_millis(100),
        tokens: 100,
        ..MockOptions::default()
    };
    let env = start("", opts).await;
    let mut c = Conn::open(&env).await;
    c.send(chat_request(CLIENT_KEY, &chat_body("mock-model", true), ""))
        .await;
    let head = c.head().await;
    assert_eq!(head.status, 200);
    while !String::from_utf8_lossy(&c.buf).contains("data:") {
        assert!(c.fill().await, "stream ended early");
    }
    c.stream.set_zero_linger().unwrap();
    drop(c);
    let stats = env.mock.stats.clone();
    assert!(
        eventually(3.0, || stats.streams_cancelled.load(Ordering::SeqCst) == 1).await,
        "the upstream stream outlived the reset client"
    );
    assert_still_serving(&env).await;
    let mut c = Conn::open(&env).await;
    c.send(chat_request(
        CLIENT_KEY,
        &chat_body("mock-model", false),
        "",
    ))
    .await;
    assert_chat_completion(&c.response().await);
}

// 15. `limits.keep_alive_timeout`: an idle keep-alive connection is closed after it; a stream
// that lasts longer than it is not cut, and the connection serves again right after.
#[tokio::test]
async fn idle_connections_close_after_the_keep_alive_timeout_but_streams_outlast_it() {
    let opts = MockOptions {
        itl: Duration::from_millis(150),
        tokens: 6,
        ..MockOptions::default()
    };
    let env = start("limits:\n  keep_alive_timeout: 0.4\n", opts).await;
    let mut c = Conn::open(&env).await;
    c.send(get("/health")).await;
    assert_health(&c.response().await);
    // ~0.9 s of stream: more than twice the idle timeout.
    let started = Instant::now();
    c.send(chat_request(CLIENT_KEY, &chat_body("mock-model", true), ""))
        .await;
    let stream = c.response().await;
    assert_eq!(stream.status, 200, "{stream:?}");
    assert!(stream.text().contains("data: [DONE]"), "{stream:?}");
    assert!(started.elapsed() > Duration::from_millis(600));
    c.send(get("/health")).await;
    assert_health(&c.response().await);

    let idle_since = Instant::now();
    c.expect_closed().await;
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(300) && idle < Duration::from_secs(3),
        "closed after {idle:?} idle (timeout 0.4 s)"
    );
}
