//! The connection loop over `tokio::io::duplex`: no sockets, every byte the client sends and
//! gets under the test's control (as pingora tests its HTTP/1 session over mock IO).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use super::{serve, serve_buffered, Handled, Handler, HeadError, RequestBody, Timeouts};
use crate::http::BoxError;

type TestBody = BoxBody<Bytes, BoxError>;

fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).map_err(|e| match e {}).boxed()
}

/// Echoes the method, path and body; `/hang` never answers (and marks when it is dropped).
#[derive(Clone, Default)]
struct Echo {
    dropped: Arc<AtomicBool>,
    handled: Arc<AtomicUsize>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Handler for Echo {
    type Body = TestBody;

    fn handle<'c>(&self, req: Request<RequestBody<'c>>) -> Handled<'c, TestBody> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        let guard = SetOnDrop(self.dropped.clone());
        Box::pin(async move {
            let _guard = guard;
            let (head, body) = req.into_parts();
            if head.uri.path() == "/hang" {
                std::future::pending::<()>().await;
            }
            if head.uri.path() == "/refuse" {
                // Answers without reading the body (as the gateway does for a refused key).
                let mut resp = Response::new(full("refused"));
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                return resp;
            }
            let body = body.collect().await.unwrap().to_bytes();
            let text = format!(
                "{} {} {}",
                head.method,
                head.uri.path(),
                String::from_utf8_lossy(&body)
            );
            Response::new(full(text))
        })
    }

    fn reject(&self, error: HeadError) -> Response<TestBody> {
        let mut resp = Response::new(full(error.code));
        *resp.status_mut() = error.status;
        resp
    }
}

const TIMEOUTS: Timeouts = Timeouts {
    header_read: Duration::from_secs(5),
    keep_alive: Duration::from_secs(5),
    send: Duration::from_secs(5),
};

/// Serves one connection over a duplex pipe; returns the client's end.
fn connect(
    handler: Echo,
) -> (
    DuplexStream,
    tokio::task::JoinHandle<()>,
    watch::Sender<bool>,
) {
    let (client, server) = duplex(64 * 1024);
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(async move {
        let (r, w) = tokio::io::split(server);
        serve(r, w, TIMEOUTS, stop, handler).await;
    });
    (client, task, stop_tx)
}

/// Reads until `n` complete answers (by their `content-length`) have arrived.
async fn read_answers(client: &mut DuplexStream, n: usize) -> Vec<(u16, String)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let mut chunk = [0u8; 4096];
        let got = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
            .await
            .expect("answer within 5 s")
            .unwrap();
        assert!(got > 0, "connection closed after {} answers", out.len());
        buf.extend_from_slice(&chunk[..got]);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) else {
                break;
            };
            let body_len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap_or(0);
            if buf.len() < len + body_len {
                break;
            }
            let status = resp.code.unwrap();
            let body = String::from_utf8_lossy(&buf[len..len + body_len]).into_owned();
            buf.drain(..len + body_len);
            out.push((status, body));
        }
    }
    out
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (mut client, _task, _stop) = connect(Echo::default());
    client
        .write_all(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none\
              GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthree",
        )
        .await
        .unwrap();
    let answers = read_answers(&mut client, 3).await;
    assert_eq!(
        answers,
        vec![
            (200, "POST /a one".to_string()),
            (200, "GET /b ".to_string()),
            (200, "POST /c three".to_string()),
        ]
    );
}

#[tokio::test]
async fn a_body_that_comes_after_its_head_is_read_from_the_connection() {
    let (mut client, _task, _stop) = connect(Echo::default());
    client
        .write_all(b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.write_all(b" world").await.unwrap();
    let answers = read_answers(&mut client, 1).await;
    assert_eq!(answers, vec![(200, "POST /late hello world".to_string())]);

    // Chunked, split inside a chunk.
    client
        .write_all(
            b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.write_all(b"cd\r\n0\r\n\r\n").await.unwrap();
    let answers = read_answers(&mut client, 1).await;
    assert_eq!(answers, vec![(200, "POST /chunked abcd".to_string())]);
}

#[tokio::test]
async fn a_client_gone_mid_request_cancels_it() {
    let handler = Echo::default();
    let dropped = handler.dropped.clone();
    let (mut client, task, _stop) = connect(handler);
    client
        .write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !dropped.load(Ordering::SeqCst),
        "still running while the client waits"
    );
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the connection ends once the client is gone")
        .unwrap();
    assert!(
        dropped.load(Ordering::SeqCst),
        "the request's future was dropped"
    );
}

#[tokio::test]
async fn a_refused_head_gets_the_handlers_answer_and_the_connection_closes() {
    let handler = Echo::default();
    let handled = handler.handled.clone();
    let (mut client, task, _stop) = connect(handler);
    client
        .write_all(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut all))
        .await
        .expect("closed within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "the handler never saw it"
    );
    task.await.unwrap();

    // Over the size limit: 431 from the same callback.
    let (mut client, _task, _stop) = connect(Echo::default());
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let _ = client.write_all(huge.as_bytes()).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with(&format!(
            "HTTP/1.1 {} ",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16()
        )),
        "{text}"
    );
}

#[tokio::test]
async fn shutdown_closes_an_idle_connection_and_lets_a_running_request_finish() {
    let (mut client, task, stop) = connect(Echo::default());
    client
        .write_all(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.send_replace(true);
    client.write_all(b"-there").await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut all))
        .await
        .expect("closed within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.ends_with("POST /a half-there"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    task.await.unwrap();
}

/// `Expect: 100-continue`: the interim answer goes out when the handler first reads the body,
/// and never when it answers without reading it.
#[tokio::test]
async fn continue_is_sent_only_when_the_body_is_read() {
    let (mut client, _task, _stop) = connect(Echo::default());
    client
        .write_all(b"POST /refuse HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let answers = read_answers(&mut client, 1).await;
    assert_eq!(
        answers,
        [(401, "refused".to_owned())],
        "no 100 before the refusal"
    );

    let (mut client, _task, _stop) = connect(Echo::default());
    client
        .write_all(
            b"POST /late HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .unwrap();
    let mut interim = vec![0u8; super::CONTINUE.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut interim))
        .await
        .expect("100 Continue within 5 s")
        .unwrap();
    assert_eq!(interim, super::CONTINUE);
    client.write_all(b"hello").await.unwrap();
    let answers = read_answers(&mut client, 1).await;
    assert_eq!(answers, [(200, "POST /late hello".to_owned())]);
}

/// Bytes the accept loop already read (its protocol sniff) are the start of the first request.
#[tokio::test]
async fn bytes_read_before_the_loop_begin_the_first_request() {
    let (mut client, server) = duplex(64 * 1024);
    let (_stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        let (r, w) = tokio::io::split(server);
        let read = bytes::BytesMut::from(&b"POST /seeded HTTP/1.1\r\nHost: x\r\nContent-"[..]);
        serve_buffered(r, read, w, TIMEOUTS, stop, Echo::default()).await;
    });
    client.write_all(b"Length: 2\r\n\r\nhi").await.unwrap();
    let answers = read_answers(&mut client, 1).await;
    assert_eq!(answers, vec![(200, "POST /seeded hi".to_string())]);
}

/// A client that stops reading a large answer is cut off once a write has been blocked for
/// `Timeouts::send`: the connection ends (and with it the request) instead of waiting forever.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let handler = Echo::default();
    let timeouts = Timeouts {
        send: Duration::from_millis(300),
        ..TIMEOUTS
    };
    let (mut client, server) = duplex(64 * 1024);
    let (_stop_tx, stop) = watch::channel(false);
    let served = handler.clone();
    let task = tokio::spawn(async move {
        let (r, w) = tokio::io::split(server);
        serve(r, w, timeouts, stop, served).await;
    });
    let body = vec![b'x'; 512 * 1024];
    let head = format!(
        "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body).await.unwrap();
    // The echo (larger than the pipe) now waits for the client to read; it never does.
    let began = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the connection ends after the send timeout")
        .unwrap();
    assert!(
        began.elapsed() >= Duration::from_millis(250),
        "{:?}",
        began.elapsed()
    );
    assert!(handler.dropped.load(Ordering::SeqCst));
}
