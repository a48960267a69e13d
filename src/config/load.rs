//! Reading a config file: YAML syntax, `${VAR}` expansion, then the serde schema, collecting
//! every error with its YAML path and (where it can be found) its line.

use std::path::Path;

use serde_yaml::Value;

use super::env;
use super::raw::RawConfig;
use super::yaml_path::{find_line, path_segments, render_path, Segment};
use super::{ConfigError, ConfigErrors};

/// Parses `text` (the contents of `file`) into the raw schema.
pub fn parse_raw(
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<RawConfig, ConfigErrors> {
    match parse_raw_partial(text, file, lookup) {
        (Some(raw), errors) if errors.is_empty() => Ok(raw),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// Like [`parse_raw`], but when some nodes are bad it drops them and still returns the rest,
/// so semantic validation can report its own errors in the same run.
pub fn parse_raw_partial(
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> (Option<RawConfig>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut value: Value = match serde_yaml::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            return (
                None,
                vec![ConfigError {
                    file: file.to_owned(),
                    path: String::new(),
                    line,
                    message: format!("invalid YAML: {e}"),
                }],
            );
        }
    };
    if !value.is_mapping() {
        return (
            None,
            vec![ConfigError {
                file: file.to_owned(),
                path: String::new(),
                line: Some(1),
                message: "the config must be a YAML mapping of keys to values".into(),
            }],
        );
    }
    expand_tree(&mut value, &mut Vec::new(), lookup, &mut |path, message| {
        errors.push(ConfigError {
            file: file.to_owned(),
            line: find_line(text, path),
            path: render_path(path),
            message,
        })
    });

    // serde stops at the first error; to report them all, drop the offending node and retry.
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, RawConfig>(value.clone()) {
            Ok(raw) => return (Some(raw), errors),
            Err(e) => {
                let segments = path_segments(e.path());
                let message = e.inner().to_string();
                errors.push(ConfigError {
                    file: file.to_owned(),
                    line: find_line(text, &segments),
                    path: render_path(&segments),
                    message: tidy_message(&message),
                });
                if !remove_at(&mut value, &segments) {
                    break;
                }
            }
        }
    }
    (None, errors)
}

/// Reads the file at `path`.
pub fn read_text(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(ConfigError {
            file: path.display().to_string(),
            path: String::new(),
            line: None,
            message: format!("cannot read config file: {e}"),
        })
    })
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some(&rest[..end])
}

fn tidy_message(message: &str) -> String {
    if message.starts_with("data did not match any variant of untagged enum RawModel") {
        return "expected a model id or an object with `id`".into();
    }
    if let Some(name) = unknown_field(message) {
        let candidates: Vec<&str> = message
            .split_once(", expected ")
            .map(|(_, e)| e.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let best = candidates
            .iter()
            .map(|c| (edit_distance(name, c), *c))
            .filter(|(d, c)| *d <= 2.max(c.len() / 4))
            .min();
        return match best {
            Some((_, c)) => format!("unknown key `{name}` (did you mean `{c}`?)"),
            None if !candidates.is_empty() => {
                format!(
                    "unknown key `{name}` (known keys here: {})",
                    candidates.join(", ")
                )
            }
            None => format!("unknown key `{name}`"),
        };
    }
    message.to_owned()
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

fn expand_tree(
    value: &mut Value,
    path: &mut Vec<Segment>,
    lookup: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(&[Segment], String),
) {
    match value {
        Value::String(s) => match env::expand(s, lookup) {
            Ok(v) => *s = v,
            Err(missing) => report(
                path,
                format!(
                    "environment variable {} is not set (use ${{VAR:-default}} for a fallback)",
                    missing.join(", ")
                ),
            ),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Segment::Index(i));
                expand_tree(item, path, lookup, report);
                path.pop();
            }
        }
        Value::Mapping(map) => {
            let entries = std::mem::take(map);
            for (k, mut v) in entries {
                let key = match k {
                    Value::String(s) => match env::expand(&s, lookup) {
                        Ok(e) => Value::String(e),
                        Err(missing) => {
                            path.push(Segment::Key(s.clone()));
                            report(
                                path,
                                format!("environment variable {} is not set", missing.join(", ")),
                            );
                            path.pop();
                            Value::String(s)
                        }
                    },
                    other => other,
                };
                let name = match &key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                path.push(Segment::Key(name));
                expand_tree(&mut v, path, lookup, report);
                if map.contains_key(&key) {
                    // Two keys that differ as written became one: the later would silently
                    // replace the earlier (e.g. two credentials named by variables).
                    report(
                        path,
                        "this key appears twice once ${VAR}s are expanded".into(),
                    );
                }
                path.pop();
                map.insert(key, v);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, lookup, report),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_unknown_key() {
        let text = "api_hots: x\nlimits:\n  max_bodyy: 1\ntimeout: 5\nlog_levl: INFO\n";
        let errs = parse_raw(text, "c.yml", &|_| None).unwrap_err();
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.clone()).collect();
        assert!(paths.contains(&"api_hots".to_string()), "{paths:?}");
        assert!(paths.contains(&"limits.max_bodyy".to_string()), "{paths:?}");
        assert!(paths.contains(&"log_levl".to_string()), "{paths:?}");
        let e = errs
            .0
            .iter()
            .find(|e| e.path == "limits.max_bodyy")
            .unwrap();
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn client_keys_never_appear_in_error_paths() {
        let text = "api_keys:\n  \"sk-very-secret\": \"${MISSING_UPSTREAM_KEY}\"\n";
        let errs = parse_raw(text, "c.yml", &|_| None).unwrap_err();
        let shown = errs.to_string();
        assert!(shown.contains("MISSING_UPSTREAM_KEY"), "{shown}");
        assert!(shown.contains("api_keys.key-"), "{shown}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert_eq!(errs.0[0].line, Some(2));
    }

    #[test]
    fn keys_that_become_equal_after_expansion_are_reported() {
        let text =
            "credentials:\n  ${A}: { type: static, key: a }\n  ${B}: { type: static, key: b }\n";
        let lookup = |_: &str| Some("same".to_string());
        let errs = parse_raw(text, "c.yml", &lookup).unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs}");
        assert_eq!(errs.0[0].path, "credentials.same");
        assert!(errs.0[0].message.contains("twice"), "{errs}");
    }

    #[test]
    fn type_errors_name_the_path() {
        let text = "timeout: soon\n";
        let errs = parse_raw(text, "c.yml", &|_| None).unwrap_err();
        assert_eq!(errs.0[0].path, "timeout");
        assert_eq!(errs.0[0].line, Some(1));
    }
}
