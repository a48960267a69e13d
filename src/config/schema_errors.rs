//! Schema errors as a user reads them: every problem of a YAML node at once (serde stops at the
//! first, so the offending node is dropped and the rest read again), located at the path the
//! user wrote (list indexes as in the file, not shifted by dropped items), worded without Rust
//! type names ("expected a number, got text", not `expected f64`), never quoting a value (it
//! may be a secret, or expanded from one), and without follow-on errors caused by an earlier
//! one (a key reported as missing because its bad value was dropped).

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::yaml_path::{path_segments, Segment};

/// One problem: where (as written in the file) and what.
pub type Problem = (Vec<Segment>, String);

/// Deserializes `value`, reporting every schema problem rather than the first. Returns the
/// value read from what is left once the bad nodes are dropped (`None` when nothing usable is
/// left) and the problems, in the order found.
pub fn deserialize_all<T: DeserializeOwned>(mut value: Value) -> (Option<T>, Vec<Problem>) {
    let mut problems: Vec<Problem> = Vec::new();
    // Sequence items dropped so far: the parent's path as written, and the item's index there.
    let mut removed: Vec<(Vec<Segment>, usize)> = Vec::new();
    for _ in 0..256 {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return (Some(v), problems),
            Err(e) => {
                let current = path_segments(e.path());
                let written = as_written(&current, &removed);
                let raw = e.inner().to_string();
                // A required key that is "missing" because its bad value was just dropped.
                let follow_on = missing_field(&raw).is_some_and(|field| {
                    let mut child = written.clone();
                    child.push(Segment::Key(field.to_owned()));
                    problems.iter().any(|(p, _)| *p == child)
                });
                if !follow_on {
                    problems.push((written.clone(), tidy_message(&raw)));
                }
                if !remove_at(&mut value, &current) {
                    break;
                }
                if let Some((Segment::Index(i), parent)) = written.split_last() {
                    removed.push((parent.to_vec(), *i));
                }
            }
        }
    }
    (None, problems)
}

/// The path as written in the file, for a path into the value with `removed` items dropped.
fn as_written(current: &[Segment], removed: &[(Vec<Segment>, usize)]) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::with_capacity(current.len());
    for seg in current {
        match seg {
            Segment::Index(i) => {
                let mut gone: Vec<usize> = removed
                    .iter()
                    .filter(|(p, _)| *p == out)
                    .map(|(_, j)| *j)
                    .collect();
                gone.sort_unstable();
                let mut index = *i;
                for g in gone {
                    if g <= index {
                        index += 1;
                    }
                }
                out.push(Segment::Index(index));
            }
            key => out.push(key.clone()),
        }
    }
    out
}

fn remove_at(value: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        let next = match (seg, cur) {
            (Segment::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Segment::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur) {
        (Segment::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Segment::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// Whether `path` is `prefix` or lies under it (`a.b` is under `a`, so is `a[0]`).
pub fn is_under(path: &str, prefix: &str) -> bool {
    !prefix.is_empty()
        && path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

fn between<'a>(message: &'a str, start: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(start)?;
    let end = rest.find('`')?;
    Some(&rest[..end])
}

fn unknown_field(message: &str) -> Option<&str> {
    between(message, "unknown field `")
}

fn missing_field(message: &str) -> Option<&str> {
    between(message, "missing field `")
}

/// The backquoted names after `, expected ` (serde's list of known fields or variants).
fn expected_names(message: &str) -> Vec<&str> {
    message
        .split_once(", expected ")
        .map(|(_, e)| e.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default()
}

/// serde's message in the user's words.
pub fn tidy_message(message: &str) -> String {
    if message.starts_with("data did not match any variant of untagged enum RawModel") {
        return "expected a model id or an object with `id`".into();
    }
    if let Some(name) = unknown_field(message) {
        let candidates = expected_names(message);
        return match closest(name, &candidates) {
            Some(c) => format!("unknown key `{name}` (did you mean `{c}`?)"),
            None if !candidates.is_empty() => {
                format!(
                    "unknown key `{name}` (known keys here: {})",
                    candidates.join(", ")
                )
            }
            None => format!("unknown key `{name}`"),
        };
    }
    if let Some(name) = missing_field(message) {
        return format!("missing key `{name}`");
    }
    if let Some(name) = between(message, "unknown variant `") {
        let candidates = expected_names(message);
        let hint = match closest(name, &candidates) {
            Some(c) => format!(" (did you mean `{c}`?)"),
            None => String::new(),
        };
        return format!("`{name}` is not one of {}{hint}", candidates.join(", "));
    }
    for (prefix, found_is_value) in [("invalid type: ", false), ("invalid value: ", true)] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((found, expected)) = rest.rsplit_once(", expected ") else {
            continue;
        };
        let expected = expected_in_words(expected);
        let found = match found_in_words(found) {
            // A number of the right kind but outside the type's range.
            "a whole number" if found_is_value => "a number out of range",
            other => other,
        };
        // `key: 12345` is a number to YAML; quotes make it the text the user meant.
        let hint = if expected == "text"
            && !found_is_value
            && matches!(
                found,
                "a whole number" | "a number with a fraction" | "true/false"
            ) {
            " (put it in quotes)"
        } else {
            ""
        };
        return format!("expected {expected}, got {found}{hint}");
    }
    message.to_owned()
}

/// What serde expected (a type or a visitor's description), in words.
fn expected_in_words(expected: &str) -> String {
    let words = match expected.trim() {
        "f64" | "f32" => "a number",
        "u64" | "usize" | "u128" => "a whole number (0 or more)",
        "u32" => "a whole number from 0 to 4294967295",
        "u16" => "a whole number from 0 to 65535",
        "u8" => "a whole number from 0 to 255",
        "i64" | "i32" | "i16" | "i8" | "isize" | "i128" => "a whole number",
        "a boolean" => "true or false",
        "a string" | "string" | "a borrowed string" => "text",
        "a sequence" => "a list",
        "a map" => "a map (key: value entries)",
        "a character" => "a single character",
        other if other.starts_with("struct ") || other.starts_with("internally tagged enum") => {
            "a map (key: value entries)"
        }
        other => return other.to_owned(),
    };
    words.to_owned()
}

/// What serde found, as a kind, never the value itself.
fn found_in_words(found: &str) -> &'static str {
    let found = found.trim();
    if found.starts_with("integer `-") {
        "a negative number"
    } else if found.starts_with("integer") {
        "a whole number"
    } else if found.starts_with("floating point") {
        "a number with a fraction"
    } else if found.starts_with("boolean") {
        "true/false"
    } else if found.starts_with("string") || found.starts_with("character") {
        "text"
    } else if found.starts_with("sequence") {
        "a list"
    } else if found.starts_with("map") {
        "a map"
    } else if found.starts_with("unit") || found.starts_with("Option") {
        "nothing (null)"
    } else {
        "a value of another kind"
    }
}

/// The candidate nearest to `name`, when near enough to be a typo of it.
fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance, for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_speak_plainly_and_quote_no_value() {
        let cases = [
            (
                "invalid type: string \"soon\", expected f64",
                "expected a number, got text",
            ),
            (
                "invalid value: integer `-5`, expected u64",
                "expected a whole number (0 or more), got a negative number",
            ),
            (
                "invalid value: integer `99999999999`, expected u32",
                "expected a whole number from 0 to 4294967295, got a number out of range",
            ),
            (
                "invalid type: floating point `1.5`, expected u64",
                "expected a whole number (0 or more), got a number with a fraction",
            ),
            (
                "invalid type: string \"yes please\", expected a boolean",
                "expected true or false, got text",
            ),
            (
                "invalid type: string \"10.0.0.1\", expected a sequence",
                "expected a list, got text",
            ),
            (
                "invalid type: integer `5`, expected struct RawLimits",
                "expected a map (key: value entries), got a whole number",
            ),
            (
                "invalid type: integer `12345`, expected a string",
                "expected text, got a whole number (put it in quotes)",
            ),
            (
                "invalid type: unit value, expected a string",
                "expected text, got nothing (null)",
            ),
            ("missing field `base_url`", "missing key `base_url`"),
        ];
        for (serde, ours) in cases {
            assert_eq!(tidy_message(serde), ours, "{serde}");
        }
        assert_eq!(
            tidy_message("unknown variant `statc`, expected one of `static`, `pool`, `oauth2`"),
            "`statc` is not one of static, pool, oauth2 (did you mean `static`?)"
        );
    }

    #[test]
    fn dropped_list_items_do_not_shift_later_paths() {
        let value: Value = serde_yaml::from_str("[1, x, 2, y, z]").unwrap();
        let (v, problems) = deserialize_all::<Vec<u64>>(value);
        assert_eq!(v, Some(vec![1, 2]));
        let paths: Vec<_> = problems.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            paths,
            [
                vec![Segment::Index(1)],
                vec![Segment::Index(3)],
                vec![Segment::Index(4)]
            ]
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Two {
        url: String,
        n: Option<u32>,
    }

    #[test]
    fn a_dropped_required_value_is_not_also_missing() {
        let value: Value = serde_yaml::from_str("{url: 5, n: x, bogus: 1}").unwrap();
        let (v, problems) = deserialize_all::<Two>(value);
        assert!(v.is_none());
        let shown: Vec<String> = problems
            .iter()
            .map(|(p, m)| format!("{}: {m}", super::super::yaml_path::render_path(p)))
            .collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown.iter().any(|s| s.starts_with("url: expected text")));
        assert!(shown
            .iter()
            .any(|s| s.starts_with("n: expected a whole number")));
        assert!(shown.iter().any(|s| s.starts_with("bogus: unknown key")));
    }

    #[test]
    fn paths_under_paths() {
        assert!(is_under("a.b", "a"));
        assert!(is_under("a[0]", "a"));
        assert!(is_under("a", "a"));
        assert!(!is_under("ab", "a"));
        assert!(!is_under("a", ""));
    }
}
