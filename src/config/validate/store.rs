//! `store:`: shared state in Redis.

use std::time::Duration;

use super::Collector;
use crate::config::raw::RawStore;
use crate::config::store::{
    OnStoreError, StoreConfig, DEFAULT_LEASE_TTL_MS, DEFAULT_PREFIX, DEFAULT_TIMEOUT_MS,
    MAX_LEASE_TTL_MS,
};
use crate::config::yaml_path::k;
use crate::secret::Secret;

pub(super) fn store(c: &mut Collector, raw: Option<RawStore>) -> Option<StoreConfig> {
    let raw = raw?;
    let path = |key| [k("store"), k(key)];
    let url = match raw.url.as_deref().map(str::trim) {
        None | Some("") => {
            c.err(
                &[k("store")],
                "needs `url` (redis://, rediss:// or redis+unix://)",
            );
            String::new()
        }
        Some(u) => {
            let scheme = u.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix")) {
                // The URL may hold a password: the message shows only its scheme.
                c.err(
                    &path("url"),
                    "must start with redis://, rediss:// or redis+unix://",
                );
            }
            u.to_owned()
        }
    };
    let prefix = raw.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=10_000).contains(&timeout_ms) {
        c.err(
            &path("timeout_ms"),
            format!("must be 1 to 10000 milliseconds, got {timeout_ms}"),
        );
    }
    let on_error = match raw.on_error.as_deref() {
        None | Some("allow") => OnStoreError::Allow,
        Some("deny") => OnStoreError::Deny,
        Some(other) => {
            let shown: String = other.chars().take(40).collect();
            c.err(&path("on_error"), format!("`{shown}` is not allow or deny"));
            OnStoreError::Allow
        }
    };
    let lease_ttl_ms = raw.lease_ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS);
    if !(300..=MAX_LEASE_TTL_MS).contains(&lease_ttl_ms) {
        c.err(
            &path("lease_ttl_ms"),
            format!("must be 300 to {MAX_LEASE_TTL_MS} milliseconds, got {lease_ttl_ms}"),
        );
    }
    Some(StoreConfig {
        url: Secret::new(url),
        prefix,
        timeout: Duration::from_millis(timeout_ms.clamp(1, 10_000)),
        on_error,
        lease_ttl: Duration::from_millis(lease_ttl_ms.clamp(300, MAX_LEASE_TTL_MS)),
    })
}
