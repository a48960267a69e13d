//! Stage 4: the seed's `default_model` / `default_temperature` / `default_max_tokens`, filled
//! only where the request lacks the field (absent or null) — the Python forwarder's behaviour.
//! Also home of the seed's `field_aliases` renaming until the script stage takes it over.

use serde_json::{Map, Value};

use crate::config::Defaults;

use super::request_body::ChatPeek;

/// Whether applying `defaults` would change a request that looks like `peek`.
pub fn needed(defaults: &Defaults, peek: &ChatPeek<'_>) -> bool {
    (defaults.model.is_some() && peek.model.is_none())
        || (defaults.temperature.is_some() && peek.temperature.is_none())
        || (defaults.max_tokens.is_some() && peek.max_tokens.is_none())
}

/// Fills absent fields of the request object.
pub fn apply(defaults: &Defaults, body: &mut Map<String, Value>) {
    fn absent(body: &Map<String, Value>, key: &str) -> bool {
        body.get(key).is_none_or(Value::is_null)
    }
    if let Some(m) = &defaults.model {
        if absent(body, "model") {
            body.insert("model".into(), Value::String(m.clone()));
        }
    }
    if let Some(t) = defaults.temperature {
        if absent(body, "temperature") {
            if let Some(n) = serde_json::Number::from_f64(t) {
                body.insert("temperature".into(), Value::Number(n));
            }
        }
    }
    if let Some(n) = defaults.max_tokens {
        if absent(body, "max_tokens") {
            body.insert("max_tokens".into(), Value::from(n));
        }
    }
}

/// Renames keys everywhere in the tree (nested objects and objects inside arrays), as the
/// Python forwarder's `field_aliases` did. An existing target key is overwritten.
/// Returns whether anything was renamed (an unchanged body need not be re-serialised).
pub fn rename_fields(value: &mut Value, aliases: &[(String, String)]) -> bool {
    let mut renamed = false;
    match value {
        Value::Object(map) => {
            for (from, to) in aliases {
                if let Some(v) = map.shift_remove(from) {
                    map.insert(to.clone(), v);
                    renamed = true;
                }
            }
            for v in map.values_mut() {
                renamed |= rename_fields(v, aliases);
            }
        }
        Value::Array(items) => {
            for v in items {
                renamed |= rename_fields(v, aliases);
            }
        }
        _ => {}
    }
    renamed
}

/// What [`rename_keys_in_text`] found.
#[derive(Debug, PartialEq)]
pub enum TextRename {
    /// No key to rename: the body goes as it came.
    Unchanged,
    /// The body with the keys renamed in place; everything else byte for byte as it came.
    Renamed(Vec<u8>),
    /// A case the in-place edit does not cover (a renamed key meets its target or a duplicate in
    /// the same object, aliases that chain, text that is not valid JSON): use
    /// [`rename_fields`] on the parsed tree.
    NeedsTree,
}

/// [`rename_fields`] without building a tree: scans the JSON text once, tracks object keys, and
/// rewrites only the names of the keys to rename. Numbers, escapes and whitespace stay as the
/// client sent them (the tree path re-serialises them, e.g. a 20-digit integer becomes a float).
/// Key order differs from the tree path only in that a renamed key keeps its place.
pub fn rename_keys_in_text(src: &[u8], aliases: &[(String, String)]) -> TextRename {
    if aliases.is_empty() {
        return TextRename::Unchanged;
    }
    // Chains (a → b, b → c) are applied in order by the tree path; not redone here.
    if aliases
        .iter()
        .any(|(_, to)| aliases.iter().any(|(from, _)| from == to))
    {
        return TextRename::NeedsTree;
    }
    match scan_keys(src, aliases) {
        None => TextRename::NeedsTree,
        Some(edits) if edits.is_empty() => TextRename::Unchanged,
        Some(edits) => {
            let mut out = Vec::with_capacity(src.len() + 16 * edits.len());
            let mut at = 0;
            for (start, end, to) in edits {
                out.extend_from_slice(&src[at..start]);
                // `to` as a JSON string literal; most names need no escaping.
                if to.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
                    out.push(b'"');
                    out.extend_from_slice(to.as_bytes());
                    out.push(b'"');
                } else if serde_json::to_writer(&mut out, to).is_err() {
                    return TextRename::NeedsTree;
                }
                at = end;
            }
            out.extend_from_slice(&src[at..]);
            TextRename::Renamed(out)
        }
    }
}

/// Deeper than this, leave the body to the tree path (serde_json's own limit is 128 too).
const MAX_DEPTH: usize = 128;

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
}

impl Frames {
    fn new() -> Self {
        Frames {
            inline: [Frame::Array; 16],
            deeper: Vec::new(),
            len: 0,
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

/// The byte ranges of the key tokens to rename, in text order, with their new names; `None`
/// when the text is not plain valid JSON, a rename would meet its target or a duplicate, or
/// the case is too big for this scan (more than 64 aliases, nesting deeper than `MAX_DEPTH`).
fn scan_keys<'k>(
    src: &[u8],
    aliases: &'k [(String, String)],
) -> Option<Vec<(usize, usize, &'k str)>> {
    if aliases.len() > 64 {
        return None;
    }
    let mut edits: Vec<(usize, usize, &'k str)> = Vec::new();
    let mut stack = Frames::new();
    let mut i = skip_ws(src, 0);
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
                b'"' => i = string_end(src, i)?,
                b't' if src[i..].starts_with(b"true") => i += 4,
                b'f' if src[i..].starts_with(b"false") => i += 5,
                b'n' if src[i..].starts_with(b"null") => i += 4,
                b'-' | b'0'..=b'9' => {
                    i += 1;
                    while i < src.len()
                        && matches!(src[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                    {
                        i += 1;
                    }
                }
                _ => return None,
            }
            // After a value: a separator, a closing bracket, or the end.
            loop {
                i = skip_ws(src, i);
                let Some(&mut top) = stack.last_mut() else {
                    return (i == src.len()).then_some(edits);
                };
                match (top, *src.get(i)?) {
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
                            return None;
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
            let end = string_end(src, i)?;
            let raw = &src[start + 1..end - 1];
            let decoded;
            let key: &[u8] = if raw.contains(&b'\\') {
                decoded = serde_json::from_slice::<String>(&src[start..end]).ok()?;
                decoded.as_bytes()
            } else {
                if !raw.is_ascii() {
                    std::str::from_utf8(raw).ok()?;
                }
                raw
            };
            if let Some(Frame::Object { from_seen, to_seen }) = stack.last_mut() {
                // The first pair with this `from` renames it (as in the tree path).
                let mut renamed = false;
                for (a, (from, to)) in aliases.iter().enumerate() {
                    let bit = 1u64 << a;
                    if !renamed && key == from.as_bytes() {
                        if *from_seen & bit != 0 {
                            return None;
                        }
                        *from_seen |= bit;
                        edits.push((start, end, to.as_str()));
                        renamed = true;
                    } else if key == to.as_bytes() {
                        *to_seen |= bit;
                    }
                }
            }
            i = skip_ws(src, end);
            if src.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(src, i + 1);
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

/// Index just past the string token starting at `start` (its opening quote).
fn string_end(src: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
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
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
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
    use serde_json::json;

    fn aliases(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// The text path must give the same JSON (as a value) as the tree path.
    fn same_as_tree(src: &str, al: &[(String, String)]) -> Vec<u8> {
        let mut tree: Value = serde_json::from_str(src).unwrap_or_else(|e| panic!("{e}: {src}"));
        let tree_renamed = rename_fields(&mut tree, al);
        match rename_keys_in_text(src.as_bytes(), al) {
            TextRename::Renamed(out) => {
                assert!(tree_renamed, "text renamed, tree did not: {src}");
                let v: Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(v, tree, "{src}");
                out
            }
            TextRename::Unchanged => {
                assert!(!tree_renamed, "tree renamed, text did not: {src}");
                src.as_bytes().to_vec()
            }
            TextRename::NeedsTree => panic!("unexpected fallback for {src}"),
        }
    }

    /// The eight-at-a-time string scan ends every string where a byte-by-byte scan does.
    #[test]
    fn string_scan_matches_a_byte_scan() {
        fn byte_scan(src: &[u8], start: usize) -> Option<usize> {
            let mut i = start + 1;
            while i < src.len() {
                match src[i] {
                    b'"' => return Some(i + 1),
                    b'\\' => i += 2,
                    c if c < 0x20 => return None,
                    _ => i += 1,
                }
            }
            None
        }
        // Bytes that stop the scan, bytes next to them in value, and UTF-8 lead/continuation.
        let alphabet = [
            b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x23, 0x5b, 0x5d, b'a', 0x7f, 0x80, 0xc3, 0xe6,
            0xff,
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
    fn text_rename_matches_the_tree_everywhere() {
        let al = aliases(&[("model", "model_id"), ("max_tokens", "max_new_tokens")]);
        for src in [
            r#"{"model":"x","messages":[{"role":"user","content":"hi","model":"inner"}],"metadata":{"model":"n","keep":1}}"#,
            r#"{"messages":[{"role":"user","content":"say \"model\": x"}]}"#,
            r#" { "model" : "x" , "max_tokens" : 5 , "a" : [ [ {"model": null} ], [], {} ] } "#,
            r#"{"a":{},"b":[],"model":1,"c":true,"d":false,"e":null,"f":-1.5e3}"#,
            r#"{"mod\u0065l":"escaped key","k\"ey":"q","ünï":"ok"}"#,
            r#"[{"model":"top-level array"},{"other":1}]"#,
            r#""just a string""#,
            r#"{}"#,
        ] {
            same_as_tree(src, &al);
        }
    }

    #[test]
    fn text_rename_keeps_every_other_byte() {
        let al = aliases(&[("model", "model_id")]);
        let src = r#"{ "seed": 12345678901234567890, "model": "x", "t": 1.0e0, "s": "\u00e9\/" }"#;
        let out = same_as_tree(src, &al);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{ "seed": 12345678901234567890, "model_id": "x", "t": 1.0e0, "s": "\u00e9\/" }"#
        );
    }

    #[test]
    fn text_rename_leaves_hard_cases_to_the_tree() {
        let al = aliases(&[("model", "model_id")]);
        for src in [
            r#"{"model":"a","model_id":"b"}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"x":{"model_id":1,"model":2}}"#,
            r#"{"model":}"#,
            r#"{"model":"x""#,
            r#"{"model":"x"} trailing"#,
            "{\"model\":\"a\u{1}\"}",
            "",
        ] {
            assert_eq!(
                rename_keys_in_text(src.as_bytes(), &al),
                TextRename::NeedsTree,
                "{src}"
            );
        }
        let chain = aliases(&[("a", "b"), ("b", "c")]);
        assert_eq!(
            rename_keys_in_text(br#"{"a":1}"#, &chain),
            TextRename::NeedsTree
        );
        assert_eq!(
            rename_keys_in_text(br#"{"b":1}"#, &[]),
            TextRename::Unchanged
        );
    }

    #[test]
    fn text_rename_edge_cases() {
        // Two pairs with one `from`: the first renames it, as in the tree path.
        let twice = aliases(&[("model", "a"), ("model", "b")]);
        same_as_tree(r#"{"model":1,"x":{"model":2}}"#, &twice);
        // A target in a sibling or nested object is no conflict; an escaped key still matches.
        let al = aliases(&[("model", "model_id")]);
        let out = same_as_tree(
            r#"{"mod\u0065l":1,"o":{"model_id":2},"p":[{"model":3,"q":{"model_id":4}}]}"#,
            &al,
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with(r#"{"model_id":1,"#));
        // Names that need escaping are written as JSON strings.
        let quoted = aliases(&[("model", "mo\"del")]);
        same_as_tree(r#"{"model":1}"#, &quoted);
        // Not the text path's cases: a key that is not UTF-8, nesting past serde_json's limit,
        // more aliases than the scan tracks.
        assert_eq!(
            rename_keys_in_text(b"{\"k\xff\":1,\"model\":2}", &al),
            TextRename::NeedsTree
        );
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            rename_keys_in_text(deep.as_bytes(), &al),
            TextRename::NeedsTree
        );
        let ok_depth = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(
            rename_keys_in_text(ok_depth.as_bytes(), &al),
            TextRename::Unchanged
        );
        // Past the in-place levels: a rename 40 objects deep, and its siblings after it.
        let nested = format!(
            "{}{{\"model\":1}}{},\"model\":2}}",
            "{\"a\":[".repeat(40),
            "]}".repeat(39) + "]"
        );
        same_as_tree(&nested, &al);
        let many: Vec<(String, String)> = (0..65)
            .map(|n| (format!("k{n}"), format!("v{n}")))
            .collect();
        assert_eq!(
            rename_keys_in_text(br#"{"k1":1}"#, &many),
            TextRename::NeedsTree
        );
    }

    #[test]
    fn fills_only_absent_fields() {
        let d = Defaults {
            model: Some("dm".into()),
            temperature: Some(0.5),
            max_tokens: Some(100),
        };
        let mut v = json!({"model": "mine", "temperature": null});
        apply(&d, v.as_object_mut().unwrap());
        assert_eq!(
            v,
            json!({"model": "mine", "temperature": 0.5, "max_tokens": 100})
        );
    }

    #[test]
    fn renames_recursively() {
        let mut v = json!({"model": "x", "messages": [{"model": 1}], "n": {"model": 2}});
        rename_fields(&mut v, &[("model".into(), "model_id".into())]);
        assert_eq!(
            v,
            json!({"model_id": "x", "messages": [{"model_id": 1}], "n": {"model_id": 2}})
        );
    }
}
