//! The rewrite phase, every change the gateway itself makes to a request body in one place:
//! the seed's `default_model` / `default_temperature` / `default_max_tokens` (filled only
//! where the request lacks the field, absent or null — the Python forwarder's behaviour),
//! `field_aliases` (keys renamed recursively), the route's model rename, and the
//! `stream_options.include_usage` that `tpm` metering needs.
//!
//! The body is parsed only when something changes it: aliases alone are renamed in the text,
//! every other byte as sent; anything else (or a case the text edit does not cover) is done
//! on a `serde_json` tree.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::body::{BodyFacts, ChatFacts, Renames};
use super::json_scan;
use crate::config::Defaults;
use crate::error::GatewayError;

/// What to change.
pub struct Edits<'a> {
    pub defaults: &'a Defaults,
    pub aliases: &'a [(String, String)],
    /// The upstream's name for the model, when the route renames it.
    pub rename_to: Option<&'a str>,
    /// Ask for the stream's usage event (the client did not).
    pub inject_usage: bool,
    /// Scripts will read the body: parse it even when nothing else needs a tree.
    pub tree_for_scripts: bool,
}

/// The body after the rewrite.
pub struct Rewritten {
    /// The parsed body, when one was built.
    pub tree: Option<Value>,
    /// Whether `tree` differs from the bytes (they must be encoded again).
    pub changed: bool,
    /// Whether the bytes were edited in place (keys renamed in the text).
    pub text_edited: bool,
}

/// Applies `edits` to `bytes` (in place when the text edit suffices).
pub fn apply(
    bytes: &mut Bytes,
    facts: BodyFacts<'_>,
    edits: &Edits<'_>,
) -> Result<Rewritten, GatewayError> {
    let rename = edits.rename_to.is_some();
    let aliases = !edits.aliases.is_empty();
    let hooks = edits.tree_for_scripts;
    match facts.chat {
        Some(chat) => {
            let needs_defaults = needed(edits.defaults, &chat);
            let text_only = aliases && !(needs_defaults || rename || edits.inject_usage || hooks);
            if text_only {
                if let Some(text_edited) = rename_scanned(bytes, facts.renames, edits.aliases) {
                    return Ok(Rewritten {
                        tree: None,
                        changed: false,
                        text_edited,
                    });
                }
            }
            if !(needs_defaults || rename || edits.inject_usage || aliases || hooks) {
                return Ok(Rewritten {
                    tree: None,
                    changed: false,
                    text_edited: false,
                });
            }
            let mut value: Value = serde_json::from_slice(bytes).map_err(|e| {
                GatewayError::bad_request("invalid_json", format!("Invalid JSON body: {e}"))
            })?;
            if let Some(obj) = value.as_object_mut() {
                fill_defaults(edits.defaults, obj);
                if let Some(to) = edits.rename_to {
                    obj.insert("model".into(), Value::String(to.to_owned()));
                }
                if edits.inject_usage {
                    let opts = obj
                        .entry("stream_options")
                        .or_insert_with(|| serde_json::json!({}));
                    if let Some(o) = opts.as_object_mut() {
                        o.insert("include_usage".into(), Value::Bool(true));
                    }
                }
            }
            let renamed = rename_fields(&mut value, edits.aliases);
            Ok(Rewritten {
                tree: Some(value),
                changed: needs_defaults || rename || edits.inject_usage || renamed,
                text_edited: false,
            })
        }
        None => {
            // Other endpoints: aliases alone are renamed in the text when it is valid JSON.
            let text_edit = if aliases && !hooks && !rename && facts.json {
                rename_scanned(bytes, facts.renames, edits.aliases)
            } else {
                None
            };
            let text_done = text_edit.is_some();
            let mut tree = if !text_done && (hooks || rename || aliases) {
                serde_json::from_slice::<Value>(bytes).ok()
            } else {
                None
            };
            let mut changed = false;
            if let Some(v) = tree.as_mut() {
                if let (Some(obj), Some(to)) = (v.as_object_mut(), edits.rename_to) {
                    obj.insert("model".into(), Value::String(to.to_owned()));
                    changed = true;
                }
                changed |= rename_fields(v, edits.aliases);
            }
            Ok(Rewritten {
                tree,
                changed,
                text_edited: text_edit.unwrap_or(false),
            })
        }
    }
}

/// Whether filling `defaults` would change a request with these fields.
fn needed(defaults: &Defaults, chat: &ChatFacts) -> bool {
    (defaults.model.is_some() && !chat.has_model)
        || (defaults.temperature.is_some() && !chat.has_temperature)
        || (defaults.max_tokens.is_some() && !chat.has_max_tokens)
}

/// Applies `field_aliases` to the body's text when that needs no tree, with the keys the body
/// phase's scan found (or scanning now, where serde_json peeked instead): whether a key was
/// renamed; `None` leaves the body as it was for the tree path (see [`rename_keys_in_text`]).
fn rename_scanned(
    bytes: &mut Bytes,
    renames: Renames<'_>,
    aliases: &[(String, String)],
) -> Option<bool> {
    let renamed = match renames {
        Renames::NotScanned => rename_keys_in_text(bytes, aliases),
        Renames::InText(found) => apply_renames(bytes, &found),
        Renames::NeedsTree => TextRename::NeedsTree,
    };
    match renamed {
        TextRename::Unchanged => Some(false),
        TextRename::Renamed(v) => {
            *bytes = Bytes::from(v);
            Some(true)
        }
        TextRename::NeedsTree => None,
    }
}

/// Fills absent fields of the request object.
pub fn fill_defaults(defaults: &Defaults, body: &mut Map<String, Value>) {
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
    match json_scan::scan(src, aliases, &[]).and_then(|s| s.renames) {
        None => TextRename::NeedsTree,
        Some(renames) => apply_renames(src, &renames),
    }
}

/// The text with the keys a [`json_scan::scan`] found renamed; everything else byte for byte.
pub fn apply_renames(src: &[u8], renames: &[json_scan::Rename<'_>]) -> TextRename {
    if renames.is_empty() {
        return TextRename::Unchanged;
    }
    // Most names need no escaping: then the new text's length is known, and a buffer of exactly
    // that size becomes the body's `Bytes` without another allocation (a `Vec` with spare room
    // needs one for its shared header).
    let plain = |to: &str| to.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    let exact = renames
        .iter()
        .try_fold(src.len(), |len, &(start, end, to)| {
            plain(to).then(|| (len + to.len() + 2).saturating_sub(end - start))
        });
    let mut out = Vec::with_capacity(exact.unwrap_or(src.len() + 16 * renames.len()));
    let mut at = 0;
    for &(start, end, to) in renames {
        let Some(before) = src.get(at..start) else {
            return TextRename::NeedsTree;
        };
        out.extend_from_slice(before);
        // `to` as a JSON string literal.
        if plain(to) {
            out.push(b'"');
            out.extend_from_slice(to.as_bytes());
            out.push(b'"');
        } else if serde_json::to_writer(&mut out, to).is_err() {
            return TextRename::NeedsTree;
        }
        at = end;
    }
    out.extend_from_slice(src.get(at..).unwrap_or_default());
    TextRename::Renamed(out)
}

#[cfg(test)]
mod tests {
    use super::json_scan::MAX_DEPTH;
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
        // Sized exactly (no spare room), so it becomes `Bytes` without another allocation.
        let two = aliases(&[("model", "m"), ("seed", "random_seed")]);
        match rename_keys_in_text(src.as_bytes(), &two) {
            TextRename::Renamed(out) => assert_eq!(out.len(), out.capacity()),
            other => panic!("{other:?}"),
        }
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
        fill_defaults(&d, v.as_object_mut().unwrap());
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
