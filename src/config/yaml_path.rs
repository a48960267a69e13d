//! YAML paths (`a.b[2].c`) as segments: how they print, and which line of the config text they
//! point at. Every config error is located with these.

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// `a.b[2].c`. A client key (the key under `api_keys`) is shown as its label, never as
/// itself: these paths end up in error output and in the log of a failed reload.
pub fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    let under_api_keys = matches!(path.first(), Some(Segment::Key(k)) if k == "api_keys");
    for (i, seg) in path.iter().enumerate() {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                if under_api_keys && i == 1 {
                    out.push_str(&key_label(k));
                } else {
                    out.push_str(k);
                }
            }
            Segment::Index(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

pub fn path_segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|s| match s {
            S::Map { key } => Some(Segment::Key(key.clone())),
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Enum { variant } => Some(Segment::Key(variant.clone())),
            S::Unknown => None,
        })
        .collect()
}

/// A map-key segment.
pub fn k(name: &str) -> Segment {
    Segment::Key(name.to_owned())
}

/// A log-safe name for a key given without one: a short hash prefix, never the key itself.
/// Paths under `api_keys` show client keys this way.
pub fn key_label(client_key: &str) -> String {
    let digest = Sha256::digest(client_key.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("key-{hex}")
}

/// Best-effort line (1-based) of a YAML path in block-style text: follows keys by indentation
/// and list items by their `- ` markers. Returns the deepest line it could find.
pub fn find_line(text: &str, path: &[Segment]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    // Top-level keys sit at the indentation of the first one: a key of the same name deeper in
    // the file (`models:` inside a route) is not the top-level one.
    let top_indent = lines
        .iter()
        .map(|l| (l.len() - l.trim_start().len(), l.trim_start()))
        .find(|(_, t)| !t.is_empty() && !t.starts_with('#') && !t.starts_with("---"))
        .map(|(i, _)| i);
    let mut start = 0usize;
    let mut min_indent: isize = -1;
    let mut found: Option<usize> = None;
    // The line of the list item just found: its own keys may sit on it, after the `- `.
    let mut item_line: Option<usize> = None;
    for seg in path {
        let mut hit = None;
        let mut index_seen = 0usize;
        let mut child_indent: Option<usize> = None;
        for (n, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if (indent as isize) <= min_indent && found.is_some() && item_line != Some(n) {
                break;
            }
            match seg {
                Segment::Key(_) if found.is_none() && Some(indent) != top_indent => {}
                Segment::Key(k) => {
                    let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
                    let body = body.trim_start_matches(['"', '\'']);
                    if let Some(after) = body.strip_prefix(k.as_str()) {
                        let after = after.trim_start_matches(['"', '\'']);
                        if after.trim_start().starts_with(':') {
                            hit = Some((n, indent));
                            break;
                        }
                    }
                }
                Segment::Index(i) => {
                    if trimmed.starts_with("- ") || trimmed == "-" {
                        let ci = *child_indent.get_or_insert(indent);
                        if indent == ci {
                            if index_seen == *i {
                                hit = Some((n, indent));
                                break;
                            }
                            index_seen += 1;
                        }
                    }
                }
            }
        }
        match hit {
            Some((n, indent)) => {
                found = Some(n + 1);
                start = n + 1;
                min_indent = indent as isize;
                item_line = None;
                if matches!(seg, Segment::Index(_)) {
                    // The item's own keys sit on the same line or deeper.
                    start = n;
                    item_line = Some(n);
                }
            }
            None => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_lines() {
        let text = "a: 1\nlimits:\n  max_body_bytes: 5\n  other: 2\nlist:\n  - x\n  - y\n";
        let p = |v: Vec<Segment>| find_line(text, &v);
        assert_eq!(p(vec![Segment::Key("a".into())]), Some(1));
        assert_eq!(
            p(vec![
                Segment::Key("limits".into()),
                Segment::Key("other".into())
            ]),
            Some(4)
        );
        assert_eq!(
            p(vec![Segment::Key("list".into()), Segment::Index(1)]),
            Some(7)
        );
    }

    #[test]
    fn finds_keys_of_list_items_on_and_after_the_dash() {
        let text = "upstreams:\n  b: {}\nroutes:\n  - models: [a]\n    upstreams: [b]\n  - models: [c]\n    attempts: 2\n";
        let p = |v: Vec<Segment>| find_line(text, &v);
        let route = |i: usize, f: &str| vec![k("routes"), Segment::Index(i), k(f)];
        assert_eq!(p(route(0, "models")), Some(4));
        assert_eq!(p(route(0, "upstreams")), Some(5));
        assert_eq!(p(route(1, "attempts")), Some(7));
        // A key the item lacks points at the item, not at a later item's key.
        assert_eq!(p(route(0, "attempts")), Some(4));
    }

    #[test]
    fn top_level_keys_are_not_found_inside_others() {
        let text = "routes:\n  - models: [a]\n    upstreams: [b]\nmodels: [x]\n";
        assert_eq!(find_line(text, &[k("models"), Segment::Index(0)]), Some(4));
        assert_eq!(find_line(text, &[k("upstreams")]), None);
    }

    #[test]
    fn client_keys_print_as_labels() {
        let path = [k("api_keys"), k("sk-secret"), k("rpm")];
        let shown = render_path(&path);
        assert!(shown.starts_with("api_keys.key-"), "{shown}");
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert_eq!(
            render_path(&[k("routes"), Segment::Index(2), k("upstreams")]),
            "routes[2].upstreams"
        );
    }
}
