//! Stage 2: the client key names a principal (a label for logs and the upstream credential).
//!
//! Keys are looked up by their SHA-256 digest, so the comparison never runs over the secret
//! itself and its timing reveals nothing about how much of a guessed key was right. The client
//! key never goes upstream: the principal's own credential replaces it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use super::policy::KeyPolicy;
use crate::config::{KeyConfig, KeyId};
use crate::error::GatewayError;

/// Who is calling, as far as the rest of the pipeline needs to know.
#[derive(Debug)]
pub struct Principal {
    /// Printable name for logs and scripts; never a secret.
    pub label: Arc<str>,
    /// The seed form's upstream key as an `Authorization` value (marked sensitive), or the
    /// caller's own header under `passthrough_unknown_keys`.
    pub upstream_authorization: Option<HeaderValue>,
    /// The extended form's policy (limits, model globs, credential, upstream pin).
    pub policy: Option<KeyPolicy>,
}

/// Hashes a SHA-256 digest by its first eight bytes: they are already uniform, and SipHash
/// over all 32 cost more than the rest of the lookup. A client chooses only which digest is
/// looked up, never what the table holds, so there is no collision flood to defend against.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 32]` key arrives as its length (8 bytes), then its bytes.
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Default)]
pub struct KeyTable {
    by_digest: HashMap<[u8; 32], Arc<Principal>, BuildHasherDefault<DigestHasher>>,
    passthrough_unknown: bool,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

fn bearer_value(secret: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {secret}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl KeyTable {
    /// Builds the table; keys whose upstream value cannot be a header are reported by label.
    pub fn new(keys: &[KeyConfig], passthrough_unknown: bool) -> Result<Self, String> {
        let mut by_digest =
            HashMap::with_capacity_and_hasher(keys.len(), BuildHasherDefault::default());
        for k in keys {
            let auth = match &k.upstream_key {
                Some(up) => Some(bearer_value(up.expose()).ok_or_else(|| {
                    format!(
                        "api_keys: the upstream key of {} contains characters not allowed in a header",
                        k.label
                    )
                })?),
                None => None,
            };
            let id = match &k.id {
                KeyId::Plain(s) => digest(s.expose().as_bytes()),
                KeyId::Sha256(d) => *d,
            };
            by_digest.insert(
                id,
                Arc::new(Principal {
                    label: Arc::from(k.label.as_str()),
                    upstream_authorization: auth,
                    policy: k.has_policy().then(|| KeyPolicy::from_config(k)),
                }),
            );
        }
        Ok(KeyTable {
            by_digest,
            passthrough_unknown,
        })
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Keeps every key's limits in the shared store. Called while the table is being built
    /// (its principals are not shared yet).
    pub fn share_limits(&mut self, store: &Arc<crate::store::Store>) {
        for principal in self.by_digest.values_mut() {
            if let Some(p) = Arc::get_mut(principal) {
                if let Some(policy) = p.policy.as_mut() {
                    policy.share(store, &p.label);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Resolves the request's principal from its `Authorization` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, GatewayError> {
        let raw = headers.get(AUTHORIZATION);
        let key = raw.and_then(|v| bearer_token(v.as_bytes()));
        if let Some(key) = key {
            if let Some(p) = self.by_digest.get(&digest(key)) {
                if p.policy
                    .as_ref()
                    .is_some_and(|pol| pol.is_expired(std::time::SystemTime::now()))
                {
                    return Err(GatewayError::new(
                        crate::error::ErrorKind::Unauthorized,
                        "api_key_expired",
                        "This API key has expired",
                    ));
                }
                return Ok(p.clone());
            }
        }
        if self.passthrough_unknown {
            // The Python forwarder's behaviour, opt-in: forward the caller's own credential.
            let upstream_authorization = raw.cloned().map(|mut v| {
                v.set_sensitive(true);
                v
            });
            return Ok(Arc::new(Principal {
                label: Arc::from("passthrough"),
                upstream_authorization,
                policy: None,
            }));
        }
        Err(match key {
            None => GatewayError::unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>'",
            ),
            Some(_) => GatewayError::unauthorized("Invalid API key"),
        })
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive), if well-formed and non-empty.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    if token.is_empty() {
        None
    } else {
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn table(passthrough: bool) -> KeyTable {
        KeyTable::new(
            &[KeyConfig::new(
                KeyId::Plain(Secret::new("sk-client")),
                "alice",
                Some(Secret::new("up-key")),
            )],
            passthrough,
        )
        .unwrap()
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn maps_known_key() {
        let p = table(false)
            .authenticate(&headers("Bearer sk-client"))
            .unwrap();
        assert_eq!(&*p.label, "alice");
        assert_eq!(p.upstream_authorization.as_ref().unwrap(), "Bearer up-key");
        assert!(p.upstream_authorization.as_ref().unwrap().is_sensitive());
        assert!(table(false)
            .authenticate(&headers("bearer  sk-client "))
            .is_ok());
    }

    #[test]
    fn rejects_unknown_and_missing() {
        let t = table(false);
        assert_eq!(
            t.authenticate(&headers("Bearer nope"))
                .unwrap_err()
                .status(),
            401
        );
        assert_eq!(t.authenticate(&HeaderMap::new()).unwrap_err().status(), 401);
        assert_eq!(
            t.authenticate(&headers("Basic abc")).unwrap_err().status(),
            401
        );
    }

    #[test]
    fn passthrough_forwards_callers_credential() {
        let p = table(true).authenticate(&headers("Bearer theirs")).unwrap();
        assert_eq!(p.upstream_authorization.as_ref().unwrap(), "Bearer theirs");
    }
}
