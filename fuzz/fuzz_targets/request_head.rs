//! The request head parser (`http::server`'s, through `fuzzing::parse_request_head_framing`)
//! on arbitrary bytes: never panics; a head it takes ends at an empty line, every proper
//! prefix of it waits for more (the connection loop parses again as bytes arrive), and its
//! framing agrees with the head's `Content-Length` / `Transfer-Encoding` lines.
#![no_main]

use bytes::BytesMut;
use http::header;
use libfuzzer_sys::fuzz_target;
use sophgate::fuzzing::{parse_request_head_framing, Framing};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let parsed = parse_request_head_framing(&mut buf);
    let consumed = data.len() - buf.len();
    match parsed {
        Ok(None) => assert_eq!(consumed, 0, "nothing is taken from a partial head"),
        Err(e) => {
            assert!(
                e.status == 400 || e.status == 431,
                "refusal with status {}",
                e.status
            );
        }
        Ok(Some((request, framing, _keep_alive, _expect))) => {
            let head = &data[..consumed];
            assert!(
                head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
                "{head:?}"
            );
            // Proper prefixes wait: try a few cuts (all of them for short heads).
            let step = (consumed / 64).max(1);
            for cut in (0..consumed).step_by(step) {
                let mut part = BytesMut::from(&data[..cut]);
                let r = parse_request_head_framing(&mut part);
                assert!(
                    matches!(r, Ok(None)),
                    "prefix of {cut} bytes of a good head: {:?}",
                    r.err()
                );
                assert_eq!(part.len(), cut);
            }
            let headers = request.headers();
            let te = headers.contains_key(header::TRANSFER_ENCODING);
            let cl = headers.get_all(header::CONTENT_LENGTH).iter().count();
            match framing {
                Framing::Chunked => assert!(te && cl == 0),
                Framing::Length(n) => {
                    assert!(!te && cl > 0);
                    for v in headers.get_all(header::CONTENT_LENGTH) {
                        for part in v.as_bytes().split(|&b| b == b',') {
                            let text = std::str::from_utf8(part.trim_ascii()).unwrap_or("x");
                            assert!(text.bytes().all(|b| b.is_ascii_digit()));
                            assert_eq!(text.parse::<u64>().ok(), Some(n));
                        }
                    }
                }
                Framing::Empty => assert!(!te && cl == 0),
                Framing::Close => panic!("a request framed until close"),
            }
        }
    }
});
