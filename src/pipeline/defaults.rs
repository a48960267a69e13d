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
        Some(mut edits) => {
            // Inner objects close (and report) before outer ones: put edits in text order.
            edits.sort_unstable_by_key(|e| e.0);
            let mut out = Vec::with_capacity(src.len() + 16 * edits.len());
            let mut at = 0;
            for (start, end, to) in edits {
                out.extend_from_slice(&src[at..start]);
                // `to` as a JSON string literal (quotes and escapes).
                match serde_json::to_writer(&mut out, to) {
                    Ok(()) => {}
                    Err(_) => return TextRename::NeedsTree,
                }
                at = end;
            }
            out.extend_from_slice(&src[at..]);
            TextRename::Renamed(out)
        }
    }
}

/// One JSON object being scanned: where its keys and renames start in the scan's shared lists
/// (an object's entries are the tail of each list while it is open; one list for all objects
/// instead of two per object saves an allocation per object).
struct ObjectScan {
    keys_from: usize,
    renames_from: usize,
}

/// The byte ranges of the key tokens to rename, in order, with their new names; `None` when
/// the text is not plain valid JSON or a rename would meet its target or a duplicate.
fn scan_keys<'a, 'k>(
    src: &'a [u8],
    aliases: &'k [(String, String)],
) -> Option<Vec<(usize, usize, &'k str)>> {
    enum Frame {
        Object(ObjectScan),
        Array,
    }
    let mut edits: Vec<(usize, usize, &'k str)> = Vec::new();
    let mut stack: Vec<Frame> = Vec::with_capacity(8);
    // The keys of every open object, innermost last.
    let mut keys: Vec<std::borrow::Cow<'a, str>> = Vec::with_capacity(16);
    // (start, end) of a key's string token and its alias pair, for every open object.
    let mut renames: Vec<(usize, usize, usize)> = Vec::new();
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
                        stack.push(Frame::Object(ObjectScan {
                            keys_from: keys.len(),
                            renames_from: renames.len(),
                        }));
                        want_value = false;
                        continue;
                    }
                }
                b'[' => {
                    i = skip_ws(src, i + 1);
                    if src.get(i) == Some(&b']') {
                        i += 1;
                    } else {
                        stack.push(Frame::Array);
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
                match stack.last_mut() {
                    None => return (i == src.len()).then_some(edits),
                    Some(Frame::Array) => match *src.get(i)? {
                        b',' => {
                            i = skip_ws(src, i + 1);
                            break;
                        }
                        b']' => {
                            i += 1;
                            stack.pop();
                        }
                        _ => return None,
                    },
                    Some(Frame::Object(_)) => match *src.get(i)? {
                        b',' => {
                            i = skip_ws(src, i + 1);
                            want_value = false;
                            break;
                        }
                        b'}' => {
                            i += 1;
                            if let Some(Frame::Object(obj)) = stack.pop() {
                                let own_keys = &keys[obj.keys_from..];
                                for &(start, end, a) in &renames[obj.renames_from..] {
                                    let (from, to) = &aliases[a];
                                    let dupes = own_keys.iter().filter(|k| *k == from).count();
                                    if dupes > 1 || own_keys.iter().any(|k| k == to) {
                                        return None;
                                    }
                                    edits.push((start, end, to.as_str()));
                                }
                                keys.truncate(obj.keys_from);
                                renames.truncate(obj.renames_from);
                            }
                        }
                        _ => return None,
                    },
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
            let key: std::borrow::Cow<'a, str> = if raw.contains(&b'\\') {
                std::borrow::Cow::Owned(serde_json::from_slice::<String>(&src[start..end]).ok()?)
            } else {
                std::borrow::Cow::Borrowed(std::str::from_utf8(raw).ok()?)
            };
            if let Some(Frame::Object(_)) = stack.last() {
                if let Some(a) = aliases.iter().position(|(from, _)| *from == *key) {
                    renames.push((start, end, a));
                }
                keys.push(key);
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
