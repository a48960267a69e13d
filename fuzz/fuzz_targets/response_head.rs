//! The upstream response head parser (`http::wire::parse_response_head`) on arbitrary bytes:
//! never panics; what it takes off is whole heads (interim 1xx answers are taken even while
//! the final head is not complete), every proper prefix of a final head waits for more, HEAD/204/304 have no body, a `Close` body never
//! keeps the connection, and the header map holds no hop-by-hop header.
#![no_main]

use bytes::BytesMut;
use http::{header, Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use sophgate::fuzzing::{parse_response_head, Framing};

fuzz_target!(|data: &[u8]| {
    let Some((&m, data)) = data.split_first() else {
        return;
    };
    let method = match m % 4 {
        0 => Method::POST,
        1 => Method::GET,
        2 => Method::HEAD,
        _ => Method::DELETE,
    };
    let mut buf = BytesMut::from(data);
    let parsed = parse_response_head(&mut buf, &method);
    let consumed = data.len() - buf.len();
    match parsed {
        // Interim (1xx) answers before an incomplete final head are taken off: whole heads.
        Ok(None) => assert!(
            consumed == 0
                || data[..consumed].ends_with(b"\n\n")
                || data[..consumed].ends_with(b"\n\r\n"),
            "{consumed} bytes taken from a partial head"
        ),
        Err(_) => {}
        Ok(Some(head)) => {
            assert!(consumed > 0);
            assert!(!head.status.is_informational());
            if method == Method::HEAD
                || head.status == StatusCode::NO_CONTENT
                || head.status == StatusCode::NOT_MODIFIED
            {
                assert_eq!(head.framing, Framing::Empty);
            }
            if head.framing == Framing::Close {
                assert!(!head.keep_alive);
            }
            for name in [
                header::CONNECTION,
                header::TRANSFER_ENCODING,
                header::UPGRADE,
                header::TE,
                header::TRAILER,
                header::PROXY_AUTHENTICATE,
            ] {
                assert!(!head.headers.contains_key(&name), "{name} kept");
            }
            let step = (consumed / 64).max(1);
            for cut in (0..consumed).step_by(step) {
                let mut part = BytesMut::from(&data[..cut]);
                let r = parse_response_head(&mut part, &method);
                // A prefix may end inside an interim (1xx) answer's successor: the 1xx part
                // is taken then, so only "no final head yet" is asked for.
                assert!(
                    matches!(r, Ok(None)),
                    "prefix of {cut} bytes: {:?}",
                    r.err()
                );
            }
        }
    }
});
