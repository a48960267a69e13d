//! `credentials:`: each entry typed by `raw_credentials` and located here.

use std::collections::BTreeMap;

use super::Collector;
use crate::config::credential_spec::CredentialSpec;
use crate::config::raw_credentials::{validate_credential, RawCredential};
use crate::config::schema_errors::deserialize_all;
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
        let (raw_cred, problems) = deserialize_all::<RawCredential>(value);
        for (sub, message) in &problems {
            // Worded without the offending value: it may be a secret.
            let mut path = base.clone();
            path.extend(sub.iter().cloned());
            c.err(&path, message.clone());
        }
        match raw_cred.filter(|_| problems.is_empty()) {
            None => {}
            Some(raw_cred) => match validate_credential(raw_cred) {
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
