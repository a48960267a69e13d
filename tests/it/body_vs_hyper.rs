//! Differential: sophgate's request body decoder (`http::body_decoder::BodyDecoder`) against hyper's,
//! on the same bytes cut at the same places. hyper's HTTP/1.1 server reads each body from an
//! in-process pipe (`tokio::io::duplex`); the inputs are random edits of chunked bodies and the
//! probe's hand-made ones (issue 17). Bounded and seeded: the same inputs on every run.
//!
//! Held here: where both accept, the bytes are the same; sophgate refuses nothing hyper accepts
//! beyond its documented limits and its stricter line endings (CRLF everywhere: hyper takes a
//! bare LF in some places, e.g. ending the trailers); and sophgate accepts nothing hyper
//! refuses.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sophgate::fuzzing::{BodyDecoder, Decoded, Framing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// xorshift64: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// sophgate's reading of a chunked body fed in the pieces `cuts` marks: the body, or `None`
/// for a refusal (including a body the input does not finish).
fn ours(payload: &[u8], cuts: &[usize]) -> Option<Vec<u8>> {
    let mut dec = BodyDecoder::new(Framing::Chunked);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let (mut fed, mut next) = (0, cuts.iter());
    loop {
        match dec.decode(&mut buf).ok()? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::Done => return Some(body),
            Decoded::NeedMore => {
                let end = *next.next()?;
                buf.extend_from_slice(&payload[fed..end]);
                fed = end;
            }
        }
    }
}

/// hyper's reading of the same body (`POST` with `transfer-encoding: chunked`), written to
/// its connection in the same pieces.
async fn theirs(payload: &[u8], cuts: &[usize]) -> Option<Vec<u8>> {
    let head = b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n";
    let slot: Arc<Mutex<Option<Option<Vec<u8>>>>> = Arc::default();
    let seen = slot.clone();
    let (client, server) = tokio::io::duplex(1 << 16);
    let (mut read, mut write) = tokio::io::split(client);
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let body = req.into_body().collect().await;
            let mut slot = seen.lock().unwrap();
            if slot.is_none() {
                *slot = Some(body.ok().map(|b| b.to_bytes().to_vec()));
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        // The end of input is signalled by closing the write side: without half-close, hyper
        // takes that for a client gone and drops a body it has not handed out yet.
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let writer = async move {
        let _ = write.write_all(head).await;
        let mut fed = 0;
        for &end in cuts {
            if write.write_all(&payload[fed..end]).await.is_err() {
                return;
            }
            fed = end;
            tokio::task::yield_now().await;
        }
        let _ = write.shutdown().await;
    };
    let reader = async move {
        let _ = read.read_to_end(&mut Vec::new()).await;
    };
    let _ = tokio::join!(conn, writer, reader);
    let answer = slot.lock().unwrap().take();
    answer.flatten()
}

/// Random cut points inside `len` (sorted, the last at `len`).
fn cuts(len: usize, rng: &mut Rng) -> Vec<usize> {
    let mut at: Vec<usize> = (0..rng.below(4)).map(|_| rng.below(len + 1)).collect();
    at.push(len);
    at.sort_unstable();
    at
}

/// The probe's inputs (issue 17 item 4 and around it) and random edits of good bodies.
fn inputs() -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = [
        &b"5\r\nhello\r\n0\r\n\r\n"[..],
        b"5;a=b;c=\"d e\"\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        b"7 zz\r\nabcdefg\r\n0\r\n\r\n",
        b"7\rX\nabcdefg\r\n0\r\n\r\n",
        b"2;\nxx\r\n0\r\n\r\n",
        b"2\nxx\n0\n\n",
        b"2\r\nxx\r\n0\r\n\r\r\n",
        b"2\r\nxx\r\n0\r\n\r\n",
        b"2 \r\nxx\r\n0\r\n\r\n",
        b"2\t;x\r\nxx\r\n0\r\n\r\n",
        b"0002\r\nxx\r\n0\r\n\r\n",
        b"2\r\nxx\r\n0\r\nbad trailer\r\n\r\n",
        b"2\r\nxxYY0\r\n\r\n",
        b"+2\r\nxx\r\n0\r\n\r\n",
        b"0x2\r\nxx\r\n0\r\n\r\n",
        b"ffffffffffffffff\r\nxx",
        b"10000000000000000\r\nxx",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    let bases: [&[u8]; 3] = [
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
        b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: yes\r\n\r\n",
        b"3\r\n{\"a\r\n2\r\n\":\r\n1\r\n1\r\n1\r\n}\r\n0\r\n\r\n",
    ];
    let tokens: [&[u8]; 14] = [
        b"\r", b"\n", b"\r\n", b" ", b"\t", b";", b"=", b"\"", b"0", b"f", b"z", b"\r\r\n", b":",
        b"\x00",
    ];
    let mut rng = Rng(0x51f1_5eed_0bad_cafe);
    for _ in 0..1500 {
        let mut text = bases[rng.below(bases.len())].to_vec();
        for _ in 0..1 + rng.below(2) {
            let at = rng.below(text.len() + 1);
            let token = tokens[rng.below(tokens.len())];
            match rng.below(3) {
                0 if at < text.len() => {
                    text.remove(at);
                }
                1 if at < text.len() => {
                    text.splice(at..at + 1, token.iter().copied());
                }
                _ => {
                    text.splice(at..at, token.iter().copied());
                }
            }
        }
        all.push(text);
    }
    all
}

/// How the two decoders disagree on one input.
#[derive(Debug, Default)]
struct Disagreements {
    /// Both accept, different bytes.
    bytes: Vec<String>,
    /// sophgate refuses, hyper accepts.
    stricter: Vec<String>,
    /// sophgate accepts, hyper refuses.
    laxer: Vec<String>,
}

/// Whether one of sophgate's documented limits explains a refusal: more than 16 size digits,
/// a line over 4 KiB, or a line ending that is not CRLF (a bare LF).
fn limit_explains(payload: &[u8]) -> bool {
    let bare_lf = payload
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || payload[i - 1] != b'\r'));
    bare_lf
        || payload.split(|&b| b == b'\n').any(|line| {
            line.len() >= 4096 || line.iter().take_while(|b| b.is_ascii_hexdigit()).count() > 16
        })
}

async fn compare() -> Disagreements {
    let mut found = Disagreements::default();
    let mut rng = Rng(0x0dec_0de5_1ced);
    for input in inputs() {
        let cuts = cuts(input.len(), &mut rng);
        let shown = format!("{:?} cut at {cuts:?}", String::from_utf8_lossy(&input));
        match (ours(&input, &cuts), theirs(&input, &cuts).await) {
            (Some(a), Some(b)) if a != b => found.bytes.push(shown),
            (None, Some(_)) if !limit_explains(&input) => found.stricter.push(shown),
            (Some(_), None) => found.laxer.push(shown),
            _ => {}
        }
    }
    found
}

#[tokio::test]
async fn decoder_agrees_with_hyper_where_both_accept() {
    let found = compare().await;
    assert!(
        found.bytes.is_empty(),
        "different bytes: {:#?}",
        found.bytes
    );
    assert!(
        found.stricter.is_empty(),
        "refused, hyper accepts: {:#?}",
        found.stricter
    );
}

#[tokio::test]
async fn decoder_is_as_strict_as_hyper() {
    let found = compare().await;
    assert!(
        found.laxer.is_empty(),
        "accepted, hyper refuses: {:#?}",
        found.laxer
    );
}
