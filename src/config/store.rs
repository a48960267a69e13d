//! The validated `store:` section: where shared state lives and what to do when it cannot be
//! reached.

use std::time::Duration;

use crate::secret::Secret;

/// What a request does when the store does not answer within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Fall back to this process's own limits (logged and counted).
    Allow,
    /// Refuse with 503 `limits_unavailable`.
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The Redis URL; a `Secret` because it may hold a password ([`redacted_url`] shows it).
    pub url: Secret,
    /// Every key the gateway writes starts with it.
    pub prefix: String,
    /// Bound on every store call.
    pub timeout: Duration,
    pub on_error: OnStoreError,
    /// Life of a `max_concurrent` lease that its replica stops renewing.
    pub lease_ttl: Duration,
    /// `ca_file`'s PEM text: the roots a `rediss://` server is verified against instead of
    /// the built-in web roots.
    pub ca_pem: Option<Vec<u8>>,
}

pub const DEFAULT_PREFIX: &str = "sophgate:";
pub const DEFAULT_TIMEOUT_MS: u64 = 50;
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;
/// Leases must free a killed replica's slots within 30 s.
pub const MAX_LEASE_TTL_MS: u64 = 30_000;

/// The URL with its password (and a user name) replaced by `***`, for logs and status.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    // The userinfo ends at the last `@` before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redacted_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redacted_url("rediss://user:p%40ss@h:6380"),
            "rediss://***@h:6380"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redacted_url("garbage:hunter2"), "***");
    }
}
