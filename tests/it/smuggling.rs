//! Request smuggling, black box: the client-side inputs of the issue 17 probe (CL+TE in both
//! orders, duplicate and malformed `Content-Length`, `Transfer-Encoding` variants, obs-fold,
//! bare CR/LF, NUL, chunk framing the strict decoder refuses, chunk-size overflow, pipelined
//! mis-framed bodies), each sent on its own connection to a gateway in front of the raw-socket
//! upstream. Each case states the exact statuses the client gets, whether the connection is
//! closed after them, and the exact bytes of every request that reached the upstream (none for
//! a refused request; a pipelined request after a refused one is never read).

use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any single read may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn body() -> String {
    chat_body("m", false)
}

/// A chat request head (header lines in `extra` go before the end of the head), without its
/// body; `id` is its `X-Request-Id`, so the upstream's copy is predictable.
fn head(id: &str, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\nX-Request-Id: {id}\r\n{extra}\r\n"
    )
}

/// A complete chat request with a correct `Content-Length`.
fn chat(id: &str) -> String {
    let b = body();
    format!(
        "{}{b}",
        head(id, &format!("Content-Length: {}\r\n", b.len()))
    )
}

/// `text` in chunked encoding, pieces of 16 bytes, no trailers.
fn chunked(text: &str) -> String {
    let mut out = String::new();
    for c in text.as_bytes().chunks(16) {
        out.push_str(&format!(
            "{:x}\r\n{}\r\n",
            c.len(),
            std::str::from_utf8(c).unwrap()
        ));
    }
    out + "0\r\n\r\n"
}

/// What the upstream reads for a forwarded chat request: the gateway's own head (its framing,
/// the upstream's credential), never the client's bytes.
fn forwarded(up: &Upstream, id: &str) -> Vec<u8> {
    let b = body();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         authorization: Bearer {UPSTREAM_KEY}\r\nx-request-id: {id}\r\ncontent-length: {}\r\n\r\n{b}",
        up.addr,
        b.len()
    )
    .into_bytes()
}

/// Sends `wire` on a new connection; the statuses of the first `want` answers (fewer if the
/// connection closes first or nothing more comes within [`IO_TIMEOUT`]), and whether the
/// connection is closed after them.
async fn exchange(env: &Env, wire: &[u8], want: usize) -> (Vec<u16>, bool) {
    let mut s = TcpStream::connect(env.gateway.addr).await.unwrap();
    // A server may answer and close before it read everything: the answer is still there.
    let _ = tokio::time::timeout(IO_TIMEOUT, s.write_all(wire)).await;
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let mut eof = false;
    loop {
        // Every complete answer in the buffer (all carry a Content-Length here).
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) else {
                break;
            };
            let body_len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .expect("answers carry a content-length");
            if buf.len() < len + body_len {
                break;
            }
            statuses.push(resp.code.unwrap());
            buf.drain(..len + body_len);
        }
        if statuses.len() >= want || eof {
            break;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk)).await {
            // No answer (the gateway waits for more): the case fails on its statuses.
            Err(_) => return (statuses, false),
            Ok(Ok(0)) | Ok(Err(_)) => eof = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(
        buf.is_empty(),
        "bytes after the answers: {:?}",
        String::from_utf8_lossy(&buf)
    );
    if !eof {
        let mut chunk = [0u8; 1024];
        eof = match tokio::time::timeout(Duration::from_millis(500), s.read(&mut chunk)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            // More than was asked for (an answer to a request that should not have been
            // read): its status is reported with the others, and the case fails on it.
            Ok(Ok(n)) => {
                let status = std::str::from_utf8(chunk[..n].get(9..12).unwrap_or(b"0"))
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                statuses.push(status);
                false
            }
        };
    }
    (statuses, eof)
}

struct Case {
    what: &'static str,
    wire: Vec<u8>,
    statuses: Vec<u16>,
    closed: bool,
    /// The request ids whose forwarded copies the upstream must have read, in order.
    upstream: Vec<&'static str>,
}

fn refused(what: &'static str, wire: impl Into<Vec<u8>>) -> Case {
    Case {
        what,
        wire: wire.into(),
        statuses: vec![400],
        closed: true,
        upstream: vec![],
    }
}

fn cases() -> Vec<Case> {
    let b = body();
    let n = b.len();
    let smuggled = chat("smuggled");
    let te = "Transfer-Encoding: chunked\r\n";
    let mut cases = vec![
        // Content-Length with Transfer-Encoding, in both orders.
        refused(
            "content-length then chunked",
            format!(
                "{}{}{smuggled}",
                head("a", &format!("Content-Length: {n}\r\n{te}")),
                chunked(&b)
            ),
        ),
        refused(
            "chunked then content-length",
            format!(
                "{}{}{smuggled}",
                head("a", &format!("{te}Content-Length: 3\r\n")),
                chunked(&b)
            ),
        ),
        // Duplicate and malformed Content-Length.
        refused(
            "two different content-lengths",
            format!(
                "{}{b}{smuggled}",
                head(
                    "a",
                    &format!(
                        "Content-Length: {n}\r\nContent-Length: {}\r\n",
                        n + smuggled.len()
                    )
                )
            ),
        ),
        refused(
            "a list of different content-lengths",
            format!(
                "{}{b}{smuggled}",
                head("a", &format!("Content-Length: {n}, {}\r\n", n + 1))
            ),
        ),
    ];
    for bad in [
        "abc",
        "+10",
        "-1",
        "0x10",
        "1_0",
        "",
        "99999999999999999999999",
        "10 10",
    ] {
        cases.push(refused(
            "malformed content-length",
            format!(
                "{}{b}{smuggled}",
                head("a", &format!("Content-Length: {bad}\r\n"))
            ),
        ));
    }
    // Transfer-Encoding variants that do not end in exactly one chunked coding.
    for coding in [
        "chunked, identity",
        "xchunked",
        "chunkedx",
        "identity",
        "",
        "\"chunked\"",
    ] {
        cases.push(refused(
            "transfer-encoding not ending in chunked",
            format!(
                "{}{}{smuggled}",
                head("a", &format!("Transfer-Encoding: {coding}\r\n")),
                chunked(&b)
            ),
        ));
    }
    cases.extend([
        refused(
            "chunked on HTTP/1.0",
            format!(
                "{}{}{smuggled}",
                head("a", te).replacen("HTTP/1.1", "HTTP/1.0", 1),
                chunked(&b)
            ),
        ),
        refused(
            "space before the colon",
            format!(
                "{}{}{smuggled}",
                head("a", "Transfer-Encoding : chunked\r\n"),
                chunked(&b)
            ),
        ),
        // obs-fold, bare CR, NUL.
        refused(
            "obs-fold of transfer-encoding",
            format!(
                "{}{}{smuggled}",
                head("a", "Transfer-Encoding:\r\n chunked\r\n"),
                chunked(&b)
            ),
        ),
        refused(
            "obs-fold of another header",
            format!(
                "{}{b}{smuggled}",
                head(
                    "a",
                    &format!("X-Folded: a\r\n b\r\nContent-Length: {n}\r\n")
                )
            ),
        ),
        refused(
            "bare CR in a header line",
            format!(
                "{}{b}{smuggled}",
                head("a", &format!("X-A: b\rContent-Length: {n}\r\n"))
            ),
        ),
        refused(
            "bare CR in the request line",
            format!(
                "{}{b}",
                head("a", &format!("Content-Length: {n}\r\n")).replacen(
                    " HTTP/1.1\r\n",
                    " HTTP/1.1\r\r\n",
                    1
                )
            ),
        ),
        refused(
            "NUL in a header value",
            format!(
                "{}{b}{smuggled}",
                head("a", &format!("X-A: b\0c\r\nContent-Length: {n}\r\n"))
            ),
        ),
        refused(
            "NUL in the request target",
            format!(
                "{}{b}",
                head("a", &format!("Content-Length: {n}\r\n")).replacen(
                    "/v1/chat",
                    "/v1/\0chat",
                    1
                )
            ),
        ),
        // Chunk framing: overflow, and what the strict decoder refuses (issue 17 item 4).
        refused(
            "chunk size over 64 bits",
            format!(
                "{}ffffffffffffffffff\r\n{b}\r\n0\r\n\r\n{smuggled}",
                head("a", te)
            ),
        ),
    ]);
    for (what, framing) in [
        ("junk after the chunk size", "7 zz\r\n"),
        ("CR without LF after the chunk size", "7\rX\n"),
        ("LF inside chunk extensions", "2;\nxx\r\n"),
        ("bare LF after the chunk size", "7\n"),
    ] {
        cases.push(refused(
            what,
            format!("{}{framing}{}{smuggled}", head("a", te), chunked(&b)),
        ));
    }
    cases.extend([
        refused(
            "bare LF after chunk data",
            format!("{}{n:x}\r\n{b}\n0\r\n\r\n{smuggled}", head("a", te)),
        ),
        refused(
            "CR CR LF ending the trailers",
            format!("{}{n:x}\r\n{b}\r\n0\r\n\r\r\n{smuggled}", head("a", te)),
        ),
        // Accepted: what is unambiguous is forwarded once, in the gateway's own framing.
        Case {
            what: "the same content-length twice",
            wire: format!(
                "{}{b}",
                head(
                    "a",
                    &format!("Content-Length: {n}\r\nContent-Length: {n}\r\n")
                )
            )
            .into(),
            statuses: vec![200],
            closed: false,
            upstream: vec!["a"],
        },
        Case {
            what: "a list of the same content-length",
            wire: format!("{}{b}", head("a", &format!("Content-Length: {n}, {n}\r\n"))).into(),
            statuses: vec![200],
            closed: false,
            upstream: vec!["a"],
        },
        // Chunked named twice (two lines, or a list) is read as one chunked coding, as hyper
        // reads it; the body goes upstream re-framed, so no one downstream reads it otherwise.
        Case {
            what: "transfer-encoding chunked on two lines",
            wire: format!("{}{}", head("a", &format!("{te}{te}")), chunked(&b)).into(),
            statuses: vec![200],
            closed: false,
            upstream: vec!["a"],
        },
        Case {
            what: "transfer-encoding chunked, chunked",
            wire: format!(
                "{}{}",
                head("a", "Transfer-Encoding: chunked, chunked\r\n"),
                chunked(&b)
            )
            .into(),
            statuses: vec![200],
            closed: false,
            upstream: vec!["a"],
        },
        Case {
            what: "bare LF ending the head's lines",
            wire: format!(
                "{}{b}",
                head("a", &format!("Content-Length: {n}\r\n")).replace("\r\n", "\n")
            )
            .into(),
            statuses: vec![200],
            closed: false,
            upstream: vec!["a"],
        },
        // Pipelined: the second request is the client's own, answered in order, never part of
        // the first one's body.
        Case {
            what: "pipelined after a content-length body",
            wire: format!("{}{smuggled}", chat("a")).into(),
            statuses: vec![200, 200],
            closed: false,
            upstream: vec!["a", "smuggled"],
        },
        Case {
            what: "pipelined after a chunked body",
            wire: format!("{}{}{smuggled}", head("a", te), chunked(&b)).into(),
            statuses: vec![200, 200],
            closed: false,
            upstream: vec!["a", "smuggled"],
        },
        // Mis-framed: a Content-Length shorter than the body leaves its rest to be read as the
        // next head (refused); a longer one takes the pipelined request into the body (which
        // then is not JSON). Neither reaches the upstream.
        Case {
            what: "content-length shorter than the body",
            wire: format!("{}{b}{smuggled}", head("a", "Content-Length: 10\r\n")).into(),
            statuses: vec![400, 400],
            closed: true,
            upstream: vec![],
        },
        Case {
            what: "content-length covering the pipelined request",
            wire: format!(
                "{}{b}{smuggled}",
                head("a", &format!("Content-Length: {}\r\n", n + smuggled.len()))
            )
            .into(),
            statuses: vec![400],
            closed: false,
            upstream: vec![],
        },
    ]);
    cases
}

#[tokio::test]
async fn smuggling_inputs_get_exact_answers_and_exact_upstream_bytes() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "").await;
    let mut failures = Vec::new();
    for case in cases() {
        let before = up.received().len();
        let (statuses, closed) = exchange(&env, &case.wire, case.statuses.len()).await;
        // Give a request the gateway might still forward a moment to arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reached: Vec<Vec<u8>> = up.received()[before..].to_vec();
        let want: Vec<Vec<u8>> = case.upstream.iter().map(|id| forwarded(&up, id)).collect();
        if statuses != case.statuses || closed != case.closed || reached != want {
            failures.push(format!(
                "{}: statuses {statuses:?} (want {:?}), closed {closed} (want {}), upstream read {:?} (want {:?})",
                case.what,
                case.statuses,
                case.closed,
                reached.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>(),
                want.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>(),
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Still serving.
    let (statuses, _) = exchange(&env, chat("last").as_bytes(), 1).await;
    assert_eq!(statuses, vec![200]);
}
