//! Server-sent-event framing for the relay: forwards complete events as soon as they arrive
//! and holds back only a trailing partial event, so a stream that breaks never hands the
//! client half an event followed by our error event.
//!
//! In the common case (the upstream writes whole events per chunk) a chunk passes through as
//! the same `Bytes` — no copy, no coalescing.

use bytes::{Bytes, BytesMut};

#[derive(Debug, Default)]
pub struct SseFramer {
    pending: BytesMut,
}

/// Most bytes held back waiting for an event's end. An upstream that never ends an event (or
/// ends lines in a way the framer does not see) is passed on as it comes past this, rather
/// than buffered without bound.
pub const MAX_PENDING: usize = 1024 * 1024;

/// Index just past the last event terminator in `buf`, if any: an empty line after a line
/// ending, with LF, CRLF or CR line endings (`\n\n`, `\n\r\n`, `\r\r`). A CR at the very end
/// may be the first half of a CRLF: it ends nothing until the next byte is known.
pub fn last_boundary(buf: &[u8]) -> Option<usize> {
    let mut i = buf.len();
    while i >= 2 {
        i -= 1;
        match buf[i] {
            b'\n' if buf[i - 1] == b'\n' => return Some(i + 1),
            b'\n' if i >= 3 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n' => return Some(i + 1),
            b'\r' if buf[i - 1] == b'\r' && buf.get(i + 1).is_some_and(|&b| b != b'\n') => {
                return Some(i + 1)
            }
            _ => {}
        }
    }
    None
}

impl SseFramer {
    /// Takes a chunk from upstream; returns the complete events it finishes, if any.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.pending.is_empty() {
            match last_boundary(&chunk) {
                Some(end) if end == chunk.len() => Some(chunk),
                Some(end) => {
                    self.pending.extend_from_slice(&chunk[end..]);
                    Some(chunk.slice(..end))
                }
                None => {
                    self.pending.extend_from_slice(&chunk);
                    None
                }
            }
        } else {
            self.pending.extend_from_slice(&chunk);
            let end = match last_boundary(&self.pending) {
                Some(end) => end,
                None if self.pending.len() > MAX_PENDING => self.pending.len(),
                None => return None,
            };
            Some(self.pending.split_to(end).freeze())
        }
    }

    /// Whatever is held back (an unterminated last event).
    pub fn take_rest(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            None
        } else {
            Some(self.pending.split().freeze())
        }
    }

    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// The final event sent when a stream fails after the response has started: `kind` is the
/// error's `type` (`upstream_error` when the upstream failed, `script_error` when an `on_event`
/// hook did).
pub fn error_event(message: &str, kind: &str, code: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    });
    Bytes::from(format!("data: {body}\n\n"))
}

/// Where `needle` first occurs in `haystack`. Looks for the needle's first two bytes eight
/// positions at a time and compares whole needles only there: every event of every stream is
/// scanned (for usage, and with metrics on for its first content).
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let last_start = haystack.len().checked_sub(needle.len())?;
    let matches_at = |i: usize| haystack[i] == first && haystack[i + 1..].starts_with(rest);
    let word_at = |i: usize| {
        haystack
            .get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_le_bytes)
    };
    let mut i = 0;
    if let Some(&second) = rest.first() {
        // Positions i..i + 8 all may start the needle, so the word at i + 1 is in the text.
        while i + 8 <= last_start + 1 {
            let (Some(at_first), Some(at_second)) = (word_at(i), word_at(i + 1)) else {
                break;
            };
            let mut hits = bytes_equal(at_first, first) & bytes_equal(at_second, second);
            while hits != 0 {
                let at = i + (hits.trailing_zeros() / 8) as usize;
                if matches_at(at) {
                    return Some(at);
                }
                hits &= hits - 1;
            }
            i += 8;
        }
    }
    (i..=last_start).find(|&i| matches_at(i))
}

/// The high bit of each byte of `word` (eight bytes, little-endian) equal to `b`. A bit above
/// a real one may be a false alarm (a borrow); a byte equal to `b` is never missed.
fn bytes_equal(word: u64, b: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (ONES * u64::from(b));
    x.wrapping_sub(ONES) & !x & HIGH
}

/// The JSON after `data:` of one event, if it is a single-line data event.
pub fn event_data(event: &[u8]) -> Option<&[u8]> {
    let text = event.strip_prefix(b"data:")?;
    let text = text.strip_prefix(b" ").unwrap_or(text);
    let end = text
        .iter()
        .position(|b| *b == b'\n' || *b == b'\r')
        .unwrap_or(text.len());
    Some(&text[..end])
}

/// Whether a JSON event has a `"usage"` key holding an object (not `null`).
pub fn has_usage_object(event: &[u8]) -> bool {
    let mut rest = event;
    while let Some(i) = find(rest, b"\"usage\"") {
        rest = &rest[i + 7..];
        let after = rest.trim_ascii_start();
        if let Some(value) = after.strip_prefix(b":") {
            if value.trim_ascii_start().first() == Some(&b'{') {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_events_pass_through_unchanged() {
        let mut f = SseFramer::default();
        let c = Bytes::from_static(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        let out = f.push(c.clone()).unwrap();
        assert_eq!(out, c);
        assert_eq!(out.as_ptr(), c.as_ptr(), "no copy");
        assert!(!f.has_partial());
    }

    #[test]
    fn partial_events_are_held_until_complete() {
        let mut f = SseFramer::default();
        assert_eq!(f.push(Bytes::from_static(b"data: {\"a\"")), None);
        assert_eq!(
            f.push(Bytes::from_static(b":1}\n\ndata: x")).unwrap(),
            Bytes::from_static(b"data: {\"a\":1}\n\n")
        );
        assert!(f.has_partial());
        assert_eq!(
            f.push(Bytes::from_static(b"\r\n\r\n")).unwrap(),
            Bytes::from_static(b"data: x\r\n\r\n")
        );
        assert_eq!(f.take_rest(), None);
    }

    #[test]
    fn error_events_carry_their_type() {
        let ev = error_event("m", "script_error", "script_error");
        let text = std::str::from_utf8(&ev).unwrap();
        let data = text.strip_prefix("data: ").unwrap().trim_end();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["error"]["type"], "script_error");
        assert!(text.ends_with("\n\n"));
    }

    #[test]
    fn cr_only_line_endings_end_events() {
        let mut f = SseFramer::default();
        let out = f
            .push(Bytes::from_static(b"data: 1\r\rdata: 2\r\rdata: 3"))
            .unwrap();
        assert_eq!(out, Bytes::from_static(b"data: 1\r\rdata: 2\r\r"));
        assert!(f.has_partial());
        // A CR last in the buffer might begin a CRLF: nothing is cut there yet.
        assert_eq!(last_boundary(b"data: 1\r\n\r"), None);
        assert_eq!(last_boundary(b"data: 1\r\n\r\n"), Some(11));
    }

    #[test]
    fn a_stream_that_never_ends_an_event_is_not_buffered_without_bound() {
        let mut f = SseFramer::default();
        let piece = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut passed = 0;
        for _ in 0..40 {
            if let Some(out) = f.push(piece.clone()) {
                passed += out.len();
            }
        }
        assert!(passed > 0, "held back everything");
        assert!(f.pending.len() <= MAX_PENDING, "{}", f.pending.len());
    }

    #[test]
    fn boundary_split_across_chunks() {
        let mut f = SseFramer::default();
        assert_eq!(f.push(Bytes::from_static(b"data: 1\n")), None);
        assert_eq!(
            f.push(Bytes::from_static(b"\n")).unwrap(),
            Bytes::from_static(b"data: 1\n\n")
        );
    }

    #[test]
    fn find_agrees_with_a_plain_search() {
        let naive = |h: &[u8], n: &[u8]| {
            (!n.is_empty())
                .then(|| h.windows(n.len()).position(|w| w == n))
                .flatten()
        };
        // Every needle position and haystack length around the eight-byte steps, with the
        // needle's first bytes (and the bytes a borrow's false alarm flags) all around.
        for len in 0..40 {
            for at in 0..len {
                for filler in [b'x', b'c', b'b', b'o', b'n', 0u8, 1, 0xff] {
                    let mut h = vec![filler; len];
                    let needle: &[u8] = b"cont";
                    for (k, b) in needle.iter().enumerate() {
                        if let Some(slot) = h.get_mut(at + k) {
                            *slot = *b;
                        }
                    }
                    for n in [needle, b"c", b"co", b"\"usage\""] {
                        assert_eq!(find(&h, n), naive(&h, n), "{h:?} {n:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn finds_needles_and_usage_objects() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"abc", b""), None);
        assert!(has_usage_object(
            br#"data: {"choices":[],"usage": {"total_tokens":3}}"#
        ));
        assert!(has_usage_object(br#"{"usage":{"a":1}}"#));
        assert!(!has_usage_object(br#"{"usage":null,"x":"usage"}"#));
        assert!(!has_usage_object(br#"{"content":"no usage here"}"#));
    }
}
