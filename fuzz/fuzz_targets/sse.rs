//! The relay's SSE framer on an arbitrary stream cut into arbitrary chunks: never panics, hands
//! out only whole events (each piece ends at an event boundary of the stream), loses and
//! reorders nothing, and frames the events as framing the whole stream at once does. The one
//! allowed difference: a blank line right after an event that was already handed out may be
//! held back with the next event (it is part of no event).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sophgate::fuzzing::{last_boundary, SseFramer};

#[path = "common.rs"]
mod common;

/// The framer's output: the pieces handed out, and what was held back at the end.
fn frame(input: &[u8], cuts: &[usize]) -> (Vec<Bytes>, Vec<u8>) {
    let mut framer = SseFramer::default();
    let mut out = Vec::new();
    let mut fed = 0;
    for &cut in cuts {
        let end = cut.max(fed);
        if let Some(piece) = framer.push(Bytes::copy_from_slice(&input[fed..end])) {
            assert!(!piece.is_empty(), "an empty piece");
            out.push(piece);
        }
        fed = end;
    }
    let rest = framer.take_rest().map(|b| b.to_vec()).unwrap_or_default();
    assert!(!framer.has_partial());
    (out, rest)
}

fuzz_target!(|data: &[u8]| {
    let (cuts, input) = common::cuts(data);
    let (whole, whole_rest) = frame(input, &[input.len()]);
    let (split, split_rest) = frame(input, &cuts);
    for (pieces, rest) in [(&whole, &whole_rest), (&split, &split_rest)] {
        let mut all: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        all.extend_from_slice(rest);
        assert_eq!(all, input, "bytes lost or reordered");
        let mut at = 0;
        for p in pieces {
            at += p.len();
            // A CR-only blank line ends an event only once the next byte shows it is no CRLF:
            // look one byte past the piece.
            let seen = &input[..(at + 1).min(input.len())];
            let ends_here = last_boundary(&input[..at]) == Some(at)
                || (last_boundary(seen) == Some(at) && input[..at].ends_with(b"\r\r"));
            assert!(ends_here, "a piece ends mid-event");
        }
    }
    let whole_out: Vec<u8> = whole.iter().flat_map(|p| p.iter().copied()).collect();
    let split_out: Vec<u8> = split.iter().flat_map(|p| p.iter().copied()).collect();
    assert!(
        whole_out.starts_with(&split_out),
        "more handed out in pieces than at once"
    );
    let held = &whole_out[split_out.len()..];
    assert!(
        held.iter().all(|&b| b == b'\r' || b == b'\n'),
        "an event held back by the cuts {cuts:?}: {:?}",
        String::from_utf8_lossy(held)
    );
});
