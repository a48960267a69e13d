//! Writing an answer: its head in one buffer with the first ready body frames, then the body
//! as it comes (chunked when its size is unknown), one write per ready batch.

use std::cell::RefCell;
use std::future::poll_fn;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header;
use http::{Response, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{lock, ReadSide};
use crate::http::{headers, wire};

/// Answer bytes gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;

/// How an answer's body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes one answer. Returns whether the connection can carry another request.
pub(super) async fn respond<R, W, B>(
    side: &Mutex<ReadSide<R>>,
    wr: &mut W,
    out: &mut Vec<u8>,
    resp: Response<B>,
    is_head: bool,
    version: Version,
    mut close: bool,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
{
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
        headers::connection_tokens(v.to_str().unwrap_or(""))
            .any(|t| t.eq_ignore_ascii_case("close"))
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
    headers::recycle_header_map(parts.headers);

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
async fn write_body<R, W, B>(
    side: &Mutex<ReadSide<R>>,
    wr: &mut W,
    out: &mut Vec<u8>,
    body: B,
    framing: Out,
) -> Sent
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
{
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
                            s.buf = bytes::BytesMut::new();
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

async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut Vec<u8>) -> io::Result<()> {
    let written = wr.write_all(out).await;
    out.clear();
    written
}

/// `n` in lower-case hex without leading zeros, written into the end of `buf`.
fn hex(n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let digits = ((usize::BITS - n.leading_zeros()).div_ceil(4).max(1)) as usize;
    let start = buf.len() - digits;
    wire::hex_into(&mut buf[start..], n as u64);
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
