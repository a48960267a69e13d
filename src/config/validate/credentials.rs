//! `credentials:`: each entry typed by `raw_credentials` and located here.

use std::collections::BTreeMap;

use super::Collector;
use crate::config::credential_spec::CredentialSpec;
use crate::config::raw_credentials::{validate_credential, RawCredential};
use crate::config::yaml_path::{k, Segment};

/// The credentials: the names of every entry (broken ones too, so references to them are not
/// reported a second time) and the specs of the valid ones.
pub(super) struct Credentials {
    pub names: Vec<String>,
    pub specs: Vec<(String, CredentialSpec)>,
}

pub(super) fn credentials(
    c: &mut Collector,
    raw: Option<BTreeMap<String, serde_yaml::Value>>,
) -> Credentials {
    let raw: Vec<(String, serde_yaml::Value)> = raw.unwrap_or_default().into_iter().collect();
    let names: Vec<String> = raw.iter().map(|(n, _)| n.clone()).collect();
    let mut specs = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let base = vec![k("credentials"), Segment::Key(name.clone())];
        match serde_path_to_error::deserialize::<_, RawCredential>(value) {
            Err(e) => {
                let mut path = base;
                path.extend(e.path().iter().filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                    _ => None,
                }));
                // serde's message may quote the offending value; keep only its shape.
                let msg = e.inner().to_string();
                let msg = if msg.starts_with("unknown field")
                    || msg.starts_with("missing field")
                    || msg.starts_with("unknown variant")
                {
                    msg
                } else {
                    "has the wrong type or shape".to_owned()
                };
                c.err(&path, msg);
            }
            Ok(raw_cred) => match validate_credential(raw_cred) {
                Ok(spec) => specs.push((name, spec)),
                Err(errs) => {
                    for (sub, msg) in errs {
                        let mut path = base.clone();
                        path.extend(sub_path(&sub));
                        c.err(&path, msg);
                    }
                }
            },
        }
    }
    Credentials { names, specs }
}

/// `keys[1]` → `keys`, `[1]` and `headers.<name>` → `headers`, `<name>`, so the line found is
/// the entry's own; anything else is one key.
fn sub_path(sub: &str) -> Vec<Segment> {
    if sub.is_empty() {
        return Vec::new();
    }
    if let Some(name) = sub.strip_prefix("headers.") {
        return vec![k("headers"), k(name)];
    }
    if let Some((field, rest)) = sub.split_once('[') {
        if let Some(Ok(i)) = rest.strip_suffix(']').map(str::parse::<usize>) {
            return vec![k(field), Segment::Index(i)];
        }
    }
    vec![k(sub)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_split_into_segments() {
        assert_eq!(sub_path("keys[2]"), [k("keys"), Segment::Index(2)]);
        assert_eq!(sub_path("headers.x-key"), [k("headers"), k("x-key")]);
        assert_eq!(sub_path("token_url"), [k("token_url")]);
        assert!(sub_path("").is_empty());
    }
}
