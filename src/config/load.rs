//! Reading a config file: YAML syntax, `${VAR}` expansion, then the serde schema, collecting
//! every error with its YAML path and (where it can be found) its line.

use std::path::Path;

use serde_yaml::Value;

use super::env;
use super::raw::RawConfig;
use super::schema_errors::{deserialize_all, is_under};
use super::yaml_path::{find_line, render_path, Segment};
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

    // Every schema problem at once; none on a node whose `${VAR}` is missing (its value is
    // the unexpanded text: any complaint about it would follow from the missing variable).
    let env_paths: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    let (raw, problems) = deserialize_all::<RawConfig>(value);
    for (segments, message) in problems {
        let path = render_path(&segments);
        if env_paths.iter().any(|p| is_under(&path, p)) {
            continue;
        }
        errors.push(ConfigError {
            file: file.to_owned(),
            line: find_line(text, &segments),
            path,
            message,
        });
    }
    (raw, errors)
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
