//! Body framing in: the decoder of a message body delimited by length, chunked (RFC 9112
//! §7.1, CRLF required everywhere, trailer lines checked and dropped) or by the connection's
//! end. The server decodes request bodies with it, the pooled client answers' bodies. Pure,
//! over a byte buffer the caller fills, so every split of the input can be tested.

use bytes::{Buf, Bytes, BytesMut};

use super::wire::{Framing, ProtoError, MAX_HEAD, MAX_LINE};

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
}
