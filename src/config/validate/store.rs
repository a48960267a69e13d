//! `store:`: shared state in Redis.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::upstreams::{ca_file_certs, ca_file_path};
use super::Collector;
use crate::config::raw::RawStore;
use crate::config::store::{
    OnStoreError, StoreConfig, DEFAULT_LEASE_TTL_MS, DEFAULT_PREFIX, DEFAULT_TIMEOUT_MS,
    MAX_LEASE_TTL_MS,
};
use crate::config::yaml_path::k;
use crate::secret::Secret;

/// `ca_files` collects the CA file, so that a change to it reloads the config (as for
/// `api_ca_file`).
pub(super) fn store(
    c: &mut Collector,
    raw: Option<RawStore>,
    ca_files: &mut Vec<PathBuf>,
    base_dir: &Path,
) -> Option<StoreConfig> {
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
    let ca_pem = match raw.ca_file.as_deref() {
        None => None,
        Some(_) if !url.starts_with("rediss://") => {
            c.err(&path("ca_file"), "is for a rediss:// (TLS) url");
            None
        }
        Some(file) => {
            // Checked as api_ca_file is (readable, PEM, usable roots); kept as the PEM text,
            // which is what the Redis client takes.
            let certs = ca_file_certs(c, ca_files, &path("ca_file"), Some(file), base_dir);
            (!certs.is_empty())
                .then(|| std::fs::read(ca_file_path(file, base_dir)).ok())
                .flatten()
        }
    };
    Some(StoreConfig {
        url: Secret::new(url),
        prefix,
        timeout: Duration::from_millis(timeout_ms.clamp(1, 10_000)),
        on_error,
        lease_ttl: Duration::from_millis(lease_ttl_ms.clamp(300, MAX_LEASE_TTL_MS)),
        ca_pem,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use crate::config::store::OnStoreError;
    use crate::config::Config;

    #[test]
    fn absent_store_keeps_everything_in_process() {
        assert!(Config::from_yaml("", &|_| None).unwrap().store.is_none());
    }

    #[test]
    fn defaults_and_expansion() {
        let env = |name: &str| (name == "REDIS_PASSWORD").then(|| "hunter2".to_owned());
        let cfg = Config::from_yaml(
            "store:\n  url: \"redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0\"\n",
            &env,
        )
        .unwrap();
        let s = cfg.store.unwrap();
        assert_eq!(s.url.expose(), "redis://:hunter2@127.0.0.1:6379/0");
        assert_eq!(s.prefix, "sophgate:");
        assert_eq!(s.timeout, Duration::from_millis(50));
        assert_eq!(s.on_error, OnStoreError::Allow);
        assert_eq!(s.lease_ttl, Duration::from_secs(10));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_are_located_and_never_echo_the_url() {
        let text = "store:\n  url: \"http://:hunter2@h\"\n  timeout_ms: 0\n  on_error: maybe\n  lease_ttl_ms: 60000\n";
        let errs = Config::from_yaml(text, &|_| None).unwrap_err();
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "store.url",
            "store.timeout_ms",
            "store.on_error",
            "store.lease_ttl_ms",
        ] {
            assert!(paths.contains(&p), "{p} in {paths:?}");
        }
        assert!(!errs.to_string().contains("hunter2"));
        let typo = Config::from_yaml("store:\n  urll: x\n", &|_| None).unwrap_err();
        assert!(typo.to_string().contains("urll"));
    }

    #[test]
    fn ca_file_is_for_rediss_and_must_hold_certificates() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
        let ok = Config::from_yaml(
            &format!("store:\n  url: \"rediss://127.0.0.1:6380/0\"\n  ca_file: \"{ca}\"\n"),
            &|_| None,
        )
        .unwrap();
        let pem = ok.store.unwrap().ca_pem.unwrap();
        assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----"));

        let plain = Config::from_yaml(
            &format!("store:\n  url: \"redis://127.0.0.1:6379/0\"\n  ca_file: \"{ca}\"\n"),
            &|_| None,
        )
        .unwrap_err();
        assert_eq!(plain.0[0].path, "store.ca_file");
        assert!(plain.to_string().contains("rediss://"), "{plain}");

        let missing = Config::from_yaml(
            "store:\n  url: \"rediss://h:6380\"\n  ca_file: /nonexistent/ca.pem\n",
            &|_| None,
        )
        .unwrap_err();
        assert_eq!(missing.0[0].path, "store.ca_file");
        assert!(
            missing.to_string().contains("/nonexistent/ca.pem"),
            "{missing}"
        );
    }
}
