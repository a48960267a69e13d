//! The request body decoder (`http::body_decoder::BodyDecoder`, chunked or by length) on arbitrary
//! bytes cut at arbitrary places: it never panics, and what it makes of the bytes (accept or
//! the error, the body, what is left after it) does not depend on how the network split them.
//! `body_hyper` compares it with hyper's decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (framing, data) = common::framing(data, false);
    let (cuts, payload) = common::cuts(data);
    let whole = common::decode(framing, payload, &[payload.len()]);
    let split = common::decode(framing, payload, &cuts);
    if whole.result.is_ok() {
        assert_eq!(whole, split, "cuts {cuts:?}");
    } else {
        // Bytes handed out before the error depend on the cuts; the verdict may not.
        assert_eq!(whole.result, split.result, "cuts {cuts:?}");
    }
    if let Ok(()) = whole.result {
        assert!(whole.rest.len() <= payload.len());
        assert!(payload.ends_with(&whole.rest));
    }
});
