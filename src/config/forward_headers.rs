//! `forward_headers`: which of the client's headers go upstream. By default the client's
//! cookies and what it says about its network path (`forwarded`, `x-forwarded-*`, `x-real-ip`)
//! stay at the gateway, so the upstream learns nothing of clients it was not meant to.
//! `drop` adds names, `keep` forwards names that would otherwise be dropped (it wins over both
//! lists). A name ending in `*` matches every header name starting with what precedes it.
//! Headers the gateway sets itself (`authorization`, `host`, hop-by-hop ones, …) are never
//! forwarded, whatever these lists say.

use http::{HeaderMap, HeaderName};

/// The client headers dropped unless `keep` names them.
pub const DEFAULT_DROP: &[&str] = &["cookie", "forwarded", "x-forwarded-*", "x-real-ip"];

/// A header name, or a prefix (written with a trailing `*`), in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Prefix(String),
}

impl NamePattern {
    /// Parses a lower-cased name or `prefix*`; `None` when it is not header-name syntax.
    pub fn parse(text: &str) -> Option<NamePattern> {
        let lower = text.trim().to_ascii_lowercase();
        let (name, prefix) = match lower.strip_suffix('*') {
            Some(p) => (p, true),
            None => (lower.as_str(), false),
        };
        // A prefix may be empty (`*`: every header); a name may not. `*` is a legal header-name
        // character, but one inside a name is surely meant as a wildcard, which is not offered.
        if name.contains('*')
            || !(prefix && name.is_empty()) && HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            return None;
        }
        Some(if prefix {
            NamePattern::Prefix(name.to_owned())
        } else {
            NamePattern::Exact(name.to_owned())
        })
    }

    /// `name` is lower case, as every `HeaderName` is.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(n) => n == name,
            NamePattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardHeaders {
    /// The default list plus `forward_headers.drop`.
    pub drop: Vec<NamePattern>,
    /// `forward_headers.keep`.
    pub keep: Vec<NamePattern>,
}

impl Default for ForwardHeaders {
    fn default() -> Self {
        ForwardHeaders {
            drop: DEFAULT_DROP
                .iter()
                .filter_map(|n| NamePattern::parse(n))
                .collect(),
            keep: Vec::new(),
        }
    }
}

impl ForwardHeaders {
    /// Whether a client header of this name may go upstream (the gateway's own rules, such as
    /// hop-by-hop headers, apply on top).
    pub fn forwards(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        self.keep.iter().any(|p| p.matches(name)) || !self.drop.iter().any(|p| p.matches(name))
    }

    /// Removes the client headers that do not go upstream (no allocation when none is there).
    pub fn strip(&self, headers: &mut HeaderMap) {
        if headers.keys().all(|n| self.forwards(n)) {
            return;
        }
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|n| !self.forwards(n))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(s: &'static str) -> HeaderName {
        HeaderName::from_static(s)
    }

    #[test]
    fn defaults_drop_cookies_and_client_path_headers() {
        let f = ForwardHeaders::default();
        for name in [
            "cookie",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-real-ip",
        ] {
            assert!(!f.forwards(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "content-type",
            "x-team",
            "openai-organization",
            "user-agent",
        ] {
            assert!(f.forwards(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn strip_removes_every_value_of_a_dropped_name() {
        let mut map = HeaderMap::new();
        map.append("cookie", HeaderValue::from_static("a=1"));
        map.append("cookie", HeaderValue::from_static("b=2"));
        map.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        map.insert("content-type", HeaderValue::from_static("application/json"));
        ForwardHeaders::default().strip(&mut map);
        let names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn keep_wins_over_drop() {
        let f = ForwardHeaders {
            drop: vec![NamePattern::parse("*").unwrap()],
            keep: vec![
                NamePattern::parse("Content-Type").unwrap(),
                NamePattern::parse("x-team-*").unwrap(),
            ],
        };
        assert!(f.forwards(&h("content-type")));
        assert!(f.forwards(&h("x-team-blue")));
        assert!(!f.forwards(&h("user-agent")));
    }

    #[test]
    fn patterns_need_header_name_syntax() {
        assert_eq!(
            NamePattern::parse("X-Forwarded-*"),
            Some(NamePattern::Prefix("x-forwarded-".into()))
        );
        assert_eq!(
            NamePattern::parse("*"),
            Some(NamePattern::Prefix("".into()))
        );
        for bad in ["", "x y", "x:y", "a*b", "x-*-y", "é"] {
            assert_eq!(NamePattern::parse(bad), None, "{bad:?}");
        }
    }
}
