//! One strict pass over a JSON request body, without building a tree, for the two stages that
//! read it: the body stage's peek (stage 3: is it a JSON object, and what are its `model`,
//! `stream`, … values) and `field_aliases` (stage 4: where are the keys to rename). Walking the
//! text once for both halves what a chat body costs the gateway before it goes upstream (for a
//! 100 KB body the two walks cost about the same).
//!
//! The scan is at least as strict as serde_json: whatever it accepts, serde_json accepts with
//! the same values. Where it is unsure (a key that is not UTF-8, a wanted field given twice,
//! deep nesting) it gives up, and the caller falls back to serde_json, whose answer (and error
//! message) then decides.

/// Deeper than this, the scan gives up (serde_json's own limit is 128 too).
pub const MAX_DEPTH: usize = 128;

/// At most this many top-level keys can be asked for.
pub const MAX_WANTED: usize = 8;

/// A key to rename: the byte range of its string token and the new name.
pub type Rename<'k> = (usize, usize, &'k str);

/// What one pass found.
#[derive(Debug)]
pub struct Scan<'k> {
    /// Whether the text is an object (else `top` is empty).
    pub object: bool,
    /// The byte range of each wanted top-level key's value, by its index in `wanted`.
    pub top: [Option<(usize, usize)>; MAX_WANTED],
    /// The deepest nesting met (the top-level object or array is 1).
    pub depth: usize,
    /// The keys to rename, in text order; `None` when an in-place edit does not cover the
    /// case (a renamed key meets its target or a duplicate in the same object, aliases that
    /// chain, more than 64 aliases): the tree path decides.
    pub renames: Option<Vec<Rename<'k>>>,
}

/// Which alias names one open object has shown so far, one bit per alias pair: its keys
/// themselves are not kept. A second `from`, or a `from` and its `to` in one object, is a case
/// for the tree path (which keeps the last duplicate and overwrites the target).
#[derive(Clone, Copy)]
enum Frame {
    Object { from_seen: u64, to_seen: u64 },
    Array,
}

/// The open arrays and objects, innermost last: the first levels in place (a request rarely
/// nests deeper; an array of `MAX_DEPTH` would cost more to fill than the scan), deeper ones
/// in a list allocated only then.
struct Frames {
    inline: [Frame; 16],
    deeper: Vec<Frame>,
    len: usize,
    deepest: usize,
}

impl Frames {
    fn new() -> Self {
        Frames {
            inline: [Frame::Array; 16],
            deeper: Vec::new(),
            len: 0,
            deepest: 0,
        }
    }

    /// `None` past `MAX_DEPTH`.
    fn push(&mut self, frame: Frame) -> Option<()> {
        if self.len >= MAX_DEPTH {
            return None;
        }
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = frame,
            None => self.deeper.push(frame),
        }
        self.len += 1;
        self.deepest = self.deepest.max(self.len);
        Some(())
    }

    fn pop(&mut self) {
        if self.len > self.inline.len() {
            self.deeper.pop();
        }
        self.len = self.len.saturating_sub(1);
    }

    fn last_mut(&mut self) -> Option<&mut Frame> {
        let i = self.len.checked_sub(1)?;
        match i.checked_sub(self.inline.len()) {
            None => self.inline.get_mut(i),
            Some(d) => self.deeper.get_mut(d),
        }
    }
}

/// Scans `src` once: `None` when it is not valid JSON (or nests deeper than `MAX_DEPTH`, or
/// names one of the `wanted` top-level keys twice). `aliases` are the `field_aliases` pairs
/// whose keys to find; `wanted` (at most `MAX_WANTED`) the top-level keys whose values to
/// find.
pub fn scan<'k>(src: &[u8], aliases: &'k [(String, String)], wanted: &[&str]) -> Option<Scan<'k>> {
    if wanted.len() > MAX_WANTED {
        return None;
    }
    // Chains (a → b, b → c) are applied in order by the tree path; not redone here.
    let mut renames_ok = aliases.len() <= 64
        && !aliases
            .iter()
            .any(|(_, to)| aliases.iter().any(|(from, _)| from == to));
    let find_keys = renames_ok && !aliases.is_empty();
    let mut edits: Vec<Rename<'k>> = Vec::new();
    let mut top: [Option<(usize, usize)>; MAX_WANTED] = [None; MAX_WANTED];
    // The wanted key whose value is being read, and where that value starts.
    let mut pending: Option<(usize, usize)> = None;
    let mut stack = Frames::new();
    let mut i = skip_ws(src, 0);
    let object = src.get(i) == Some(&b'{');
    // Expecting a value (true) or, inside an object, a key (false).
    let mut want_value = true;
    loop {
        if want_value {
            match *src.get(i)? {
                b'{' => {
                    i = skip_ws(src, i + 1);
                    if src.get(i) == Some(&b'}') {
                        i += 1;
                    } else {
                        stack.push(Frame::Object {
                            from_seen: 0,
                            to_seen: 0,
                        })?;
                        want_value = false;
                        continue;
                    }
                }
                b'[' => {
                    i = skip_ws(src, i + 1);
                    if src.get(i) == Some(&b']') {
                        i += 1;
                    } else {
                        stack.push(Frame::Array)?;
                        continue;
                    }
                }
                b'"' => i = string_end(src, i)?.0,
                b't' if src[i..].starts_with(b"true") => i += 4,
                b'f' if src[i..].starts_with(b"false") => i += 5,
                b'n' if src[i..].starts_with(b"null") => i += 4,
                b'-' | b'0'..=b'9' => i = number_end(src, i)?,
                _ => return None,
            }
            // After a value: a separator, a closing bracket, or the end.
            loop {
                if stack.len == 1 {
                    if let Some((field, start)) = pending.take() {
                        top[field] = Some((start, i));
                    }
                }
                i = skip_ws(src, i);
                let Some(&mut frame) = stack.last_mut() else {
                    return (i == src.len()).then(|| Scan {
                        object,
                        top,
                        depth: stack.deepest,
                        renames: renames_ok.then_some(edits),
                    });
                };
                match (frame, *src.get(i)?) {
                    (Frame::Array, b',') => {
                        i = skip_ws(src, i + 1);
                        break;
                    }
                    (Frame::Object { .. }, b',') => {
                        i = skip_ws(src, i + 1);
                        want_value = false;
                        break;
                    }
                    (Frame::Array, b']') => {
                        i += 1;
                        stack.pop();
                    }
                    (Frame::Object { from_seen, to_seen }, b'}') => {
                        if from_seen & to_seen != 0 {
                            renames_ok = false;
                        }
                        i += 1;
                        stack.pop();
                    }
                    _ => return None,
                }
            }
        } else {
            // A key, then a colon.
            if src.get(i) != Some(&b'"') {
                return None;
            }
            let start = i;
            let (end, escaped) = string_end(src, i)?;
            let at_top = object && stack.len == 1;
            let mut wanted_here = false;
            if (find_keys && renames_ok) || (at_top && !wanted.is_empty()) {
                let raw = &src[start + 1..end - 1];
                let decoded;
                let key: &[u8] = if escaped {
                    decoded = serde_json::from_slice::<String>(&src[start..end]).ok()?;
                    decoded.as_bytes()
                } else {
                    if !raw.is_ascii() {
                        std::str::from_utf8(raw).ok()?;
                    }
                    raw
                };
                if at_top {
                    if let Some(field) = wanted.iter().position(|w| w.as_bytes() == key) {
                        // serde_json refuses a struct's field given twice.
                        if top[field].is_some() {
                            return None;
                        }
                        pending = Some((field, 0));
                        wanted_here = true;
                    }
                }
                if let (true, Some(Frame::Object { from_seen, to_seen })) =
                    (find_keys && renames_ok, stack.last_mut())
                {
                    // The first pair with this `from` renames it (as in the tree path).
                    let mut renamed = false;
                    for (a, (from, to)) in aliases.iter().enumerate() {
                        let bit = 1u64 << a;
                        if !renamed && key == from.as_bytes() {
                            if *from_seen & bit != 0 {
                                renames_ok = false;
                            }
                            *from_seen |= bit;
                            edits.push((start, end, to.as_str()));
                            renamed = true;
                        } else if key == to.as_bytes() {
                            *to_seen |= bit;
                        }
                    }
                }
            }
            i = skip_ws(src, end);
            if src.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(src, i + 1);
            if let (true, Some((_, start))) = (wanted_here, pending.as_mut()) {
                *start = i;
            }
            want_value = true;
        }
    }
}

fn skip_ws(src: &[u8], mut i: usize) -> usize {
    while i < src.len() && matches!(src[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Index just past the number token starting at `start`: `-? (0 | [1-9][0-9]*) (. [0-9]+)?
/// ([eE] [+-]? [0-9]+)?` (RFC 8259 §6), `None` for anything else.
fn number_end(src: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| -> Option<usize> {
        let first = i;
        while src.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > first).then_some(i)
    };
    let mut i = start;
    if src.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match src.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if src.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(src.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(src.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

/// Index just past the string token starting at `start` (its opening quote), and whether the
/// string has escapes; `None` for an unterminated string, a control byte, or a bad escape.
pub fn string_end(src: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut i = start + 1;
    let mut escaped = false;
    loop {
        // Most of a chat body is string text: skip it eight bytes at a time, up to the next
        // byte that ends the run (a quote, a backslash, or a control byte, which is invalid).
        while let Some(chunk) = src.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
            let found = string_stops(u64::from_le_bytes(chunk));
            if found != 0 {
                i += (found.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match *src.get(i)? {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                i = escape_end(src, i)?;
                escaped = true;
            }
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
}

/// Index just past the escape starting at `start` (its backslash). A `\u` escape needs four hex
/// digits and nothing more: like serde_json where it skips a value, a lone surrogate passes
/// (where serde_json decodes a string — a top-level key, `model` — the peek decodes it with
/// serde_json too, which refuses it).
fn escape_end(src: &[u8], start: usize) -> Option<usize> {
    match *src.get(start + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(start + 2),
        b'u' => hex4(src, start + 2).map(|_| start + 6),
        _ => None,
    }
}

/// The four hex digits at `at` as a number.
fn hex4(src: &[u8], at: usize) -> Option<u16> {
    let digits = src.get(at..at + 4)?;
    digits.iter().try_fold(0u16, |n, &b| {
        let d = (b as char).to_digit(16)?;
        Some(n << 4 | d as u16)
    })
}

/// The high bit of each byte of `v` (eight bytes, little-endian) that is `"`, `\\` or below
/// 0x20. Bits above the lowest may be false alarms (a borrow carries into the next byte); the
/// lowest is always exact, and only the lowest is used.
fn string_stops(v: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = zero_byte(v ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(v ^ (ONES * u64::from(b'\\')));
    let control = v.wrapping_sub(ONES * 0x20) & !v;
    (quote | backslash | control) & HIGH
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether serde_json reads `src` as JSON (any value).
    fn serde_valid(src: &[u8]) -> bool {
        serde_json::from_slice::<serde::de::IgnoredAny>(src).is_ok()
    }

    fn valid(src: &[u8]) -> bool {
        scan(src, &[], &[]).is_some()
    }

    /// The eight-at-a-time string scan ends every string where a byte-by-byte scan does.
    #[test]
    fn string_scan_matches_a_byte_scan() {
        fn byte_scan(src: &[u8], start: usize) -> Option<(usize, bool)> {
            let mut i = start + 1;
            while i < src.len() {
                match src[i] {
                    b'"' => return Some((i + 1, src[start..i].contains(&b'\\'))),
                    b'\\' => i = escape_end(src, i)?,
                    c if c < 0x20 => return None,
                    _ => i += 1,
                }
            }
            None
        }
        // Bytes that stop the scan, bytes next to them in value, and UTF-8 lead/continuation.
        let alphabet = [
            b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x23, 0x5b, 0x5d, b'a', b'n', 0x7f, 0x80, 0xc3,
            0xe6, 0xff,
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..40 {
            for _ in 0..200 {
                let mut src = vec![b'"'];
                for _ in 0..len {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Mostly plain text, so strings run long enough to use whole words.
                    let b = if seed % 4 == 0 {
                        alphabet[(seed >> 8) as usize % alphabet.len()]
                    } else {
                        b'a'
                    };
                    src.push(b);
                }
                assert_eq!(string_end(&src, 0), byte_scan(&src, 0), "{src:?}");
            }
        }
    }

    #[test]
    fn accepts_what_json_allows() {
        for src in [
            r#"{}"#,
            r#" [ ] "#,
            r#""s""#,
            r#"0"#,
            r#"-0.5e+10"#,
            r#"1E-3"#,
            r#"{"a":[1,2.5,-3,true,false,null,"x",{"b":{}}]}"#,
            r#""\" \\ \/ \b \f \n \r \t \u00e9 \uD83D\uDE00""#,
            "{\"k\":\"ünï\"}\n",
            // Lone surrogates: serde_json skips them in a value it does not decode.
            r#""\uDE00""#,
            r#"["\uD83D", "\uD83Dx", "\uD83D\u0041"]"#,
        ] {
            assert!(valid(src.as_bytes()), "{src}");
            assert!(serde_valid(src.as_bytes()), "{src}");
        }
    }

    #[test]
    fn refuses_what_json_does_not() {
        for src in [
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "1e+",
            "-",
            "--1",
            "1.5.3",
            "tru",
            "truex",
            "nul",
            "NaN",
            "Infinity",
            "\"a",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12G4\"",
            "\"a\u{1}\"",
            "{} {}",
            "[1] x",
        ] {
            assert!(!valid(src.as_bytes()), "{src:?}");
        }
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(!valid(deep.as_bytes()));
    }

    #[test]
    fn finds_the_values_of_wanted_top_level_keys() {
        let src = br#" {"a":{"x":[1,{"b":2}]},"b" : "s" ,"c":[],"n":-1.5,"x":{"a":1}} "#;
        let s = scan(src, &[], &["a", "b", "c", "n", "missing"]).unwrap();
        let value = |i: usize| s.top[i].map(|(a, b)| std::str::from_utf8(&src[a..b]).unwrap());
        assert!(s.object);
        assert_eq!(value(0), Some(r#"{"x":[1,{"b":2}]}"#));
        assert_eq!(value(1), Some(r#""s""#));
        assert_eq!(value(2), Some("[]"));
        assert_eq!(value(3), Some("-1.5"));
        assert_eq!(value(4), None);
        assert_eq!(s.depth, 4);
        // An escaped key is the key it spells; a key given twice is for serde_json to refuse.
        let s = scan(br#"{"\u0061":true}"#, &[], &["a"]).unwrap();
        assert_eq!(s.top[0], Some((10, 14)));
        assert!(scan(br#"{"a":1,"a":2}"#, &[], &["a"]).is_none());
        assert!(scan(br#"{"a":1,"a":2}"#, &[], &["b"]).is_some());
        // Not an object: nothing is found at the top.
        let s = scan(br#"[{"a":1}]"#, &[], &["a"]).unwrap();
        assert!(!s.object && s.top[0].is_none());
    }

    /// Whatever the scan accepts, serde_json accepts: random edits of a chat body.
    #[test]
    fn never_accepts_what_serde_refuses() {
        let base = br#"{"model":"m","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"t":-1.5e3,"s":true,"n":null,"o":{"a":[]}}"#;
        let tokens: [&[u8]; 16] = [
            b"\"", b"\\", b"{", b"}", b"[", b"]", b",", b":", b"-", b"0", b".", b"e", b"\\u",
            b"\xff", b"\x01", b" ",
        ];
        let mut rng = fuzz::Rng(0x2545_f491_4f6c_dd1d);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let edits = 1 + rng.below(3);
            let src = fuzz::edited(base, &tokens, edits, &mut rng);
            if valid(&src) {
                accepted += 1;
                assert!(serde_valid(&src), "{}", String::from_utf8_lossy(&src));
            }
        }
        // The edits leave some bodies valid, so the check above ran.
        assert!(accepted > 500, "{accepted}");
    }
}

/// Random edits of JSON texts, for the differential tests here and in `request_body`.
#[cfg(test)]
pub(crate) mod fuzz {
    /// xorshift64: the same sequence on every run.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A number below `n`.
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// `base` with `edits` edits at random places: a byte removed, a byte replaced by one of
    /// `tokens`, or one of `tokens` inserted.
    pub fn edited(base: &[u8], tokens: &[&[u8]], edits: usize, rng: &mut Rng) -> Vec<u8> {
        let mut text = base.to_vec();
        for _ in 0..edits {
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
        text
    }
}
