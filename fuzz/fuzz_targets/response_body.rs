//! The upstream answer as the pooled client reads it: a response head, then its body through
//! the decoder in the framing the head chose (length, chunked, or until close), the bytes cut
//! at arbitrary places. Never panics, and the outcome does not depend on the cuts. Inputs that
//! are not a head get an arbitrary framing for the decoder instead.
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use sophgate::fuzzing::parse_response_head;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (picked, data) = common::framing(data, true);
    let (cuts, payload) = common::cuts(data);
    let mut buf = BytesMut::from(payload);
    let (framing, body) = match parse_response_head(&mut buf, &Method::POST) {
        Ok(Some(head)) => (head.framing, &payload[payload.len() - buf.len()..]),
        _ => (picked, payload),
    };
    let offset = payload.len() - body.len();
    let cuts: Vec<usize> = cuts.iter().map(|c| c.saturating_sub(offset)).collect();
    let whole = common::decode(framing, body, &[body.len()]);
    let split = common::decode(framing, body, &cuts);
    if whole.result.is_ok() {
        assert_eq!(whole, split, "cuts {cuts:?}");
    } else {
        assert_eq!(whole.result, split.result, "cuts {cuts:?}");
    }
});
