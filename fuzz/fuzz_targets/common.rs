//! Shared by the targets: cutting an input into the pieces a network might deliver, and
//! feeding pieces to the body decoder.
#![allow(dead_code)]

use bytes::BytesMut;
use sophgate::fuzzing::{BodyDecoder, Decoded, Framing, ProtoError};

/// Splits `data` into (cut positions, payload): the first byte says how many cuts (0–15), the
/// next ones where (each a fraction of the payload, in 256ths), the rest is the payload. The
/// cuts come back sorted, inside the payload, last one at its end.
pub fn cuts(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (vec![0], data);
    };
    let n = usize::from(n % 16).min(rest.len());
    let (spec, payload) = rest.split_at(n);
    let mut at: Vec<usize> = spec
        .iter()
        .map(|&f| payload.len() * usize::from(f) / 255)
        .collect();
    at.push(payload.len());
    at.sort_unstable();
    (at, payload)
}

/// What a decoder made of a body: the outcome, the body bytes, and what was left after it
/// (bytes of the buffer plus those not fed yet).
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<(), ProtoError>,
    pub body: Vec<u8>,
    pub rest: Vec<u8>,
}

/// Feeds `payload` to a fresh decoder in the pieces `cuts` marks (as a connection reads it),
/// calling `eof` when all is fed and the decoder still wants more.
pub fn decode(framing: Framing, payload: &[u8], cuts: &[usize]) -> Outcome {
    let mut dec = BodyDecoder::new(framing);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    let mut next = cuts.iter();
    loop {
        match dec.decode(&mut buf) {
            Err(e) => {
                return Outcome {
                    result: Err(e),
                    body,
                    rest: Vec::new(),
                }
            }
            Ok(Decoded::Data(d)) => {
                assert!(!d.is_empty(), "Data with no bytes");
                body.extend_from_slice(&d);
            }
            Ok(Decoded::Done) => {
                assert!(dec.is_done());
                let mut rest = buf.to_vec();
                rest.extend_from_slice(&payload[fed..]);
                return Outcome {
                    result: Ok(()),
                    body,
                    rest,
                };
            }
            Ok(Decoded::NeedMore) => match next.next() {
                Some(&end) => {
                    let end = end.max(fed);
                    buf.extend_from_slice(&payload[fed..end]);
                    fed = end;
                }
                None => {
                    let result = dec.eof();
                    return Outcome {
                        result,
                        body,
                        rest: buf.to_vec(),
                    };
                }
            },
        }
    }
}

/// The framing a target's first byte picks: mostly chunked (where the parsing is), a length
/// from the next two bytes, or (for responses) until the connection closes.
pub fn framing(data: &[u8], with_close: bool) -> (Framing, &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return (Framing::Chunked, data);
    };
    match mode % 4 {
        2 if rest.len() >= 2 => (
            Framing::Length(u64::from(u16::from_le_bytes([rest[0], rest[1]]) % 2048)),
            &rest[2..],
        ),
        3 if with_close => (Framing::Close, rest),
        _ => (Framing::Chunked, rest),
    }
}
