//! Validation as a whole: defaults, error collection and location across sections.

use super::*;
use crate::config::{Config, KeyId};

#[test]
fn empty_config_gets_defaults() {
    let cfg = Config::from_yaml("", &|_| None).unwrap();
    assert_eq!(cfg.upstream.api_host, DEFAULT_API_HOST);
    assert_eq!(cfg.upstream.chat_path, DEFAULT_CHAT_PATH);
    assert_eq!(cfg.upstream.base_path, "/api/open-apis/v1");
    assert_eq!(cfg.limits.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
}

#[test]
fn collects_all_semantic_errors() {
    let text = "api_host: ftp://x\nip_whitelist:\n  - 10.0.0.0/8\n  - nonsense\nlog_level: LOUD\ntimeout: -1\n";
    let errs = Config::from_yaml(text, &|_| None).unwrap_err();
    let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"api_host"));
    assert!(paths.contains(&"ip_whitelist[1]"));
    assert!(paths.contains(&"log_level"));
    assert!(paths.contains(&"timeout"));
    let e = errs.0.iter().find(|e| e.path == "ip_whitelist[1]").unwrap();
    assert_eq!(e.line, Some(4));
}

#[test]
fn proxy_errors_do_not_echo_credentials() {
    let errs = Config::from_yaml("proxy: \"user:pass@nowhere\"\n", &|_| None).unwrap_err();
    assert!(!errs.to_string().contains("pass"));
}

#[test]
fn parses_times() {
    use std::time::{Duration, UNIX_EPOCH};
    let t = |s: &str| parse_time(&serde_yaml::Value::String(s.into()));
    assert_eq!(
        t("1970-01-02"),
        Some(UNIX_EPOCH + Duration::from_secs(86_400))
    );
    assert_eq!(
        t("2027-01-31T12:00:00Z"),
        Some(UNIX_EPOCH + Duration::from_secs(1_801_396_800))
    );
    assert_eq!(t("2027-01-31T14:00:00+02:00"), t("2027-01-31T12:00:00Z"));
    assert_eq!(t("2027-01-31T12:00:00.5Z"), t("2027-01-31T12:00:00Z"));
    assert_eq!(t("2027-13-01"), None);
    assert_eq!(t("soon"), None);
    assert_eq!(
        parse_time(&serde_yaml::Value::from(10u64)),
        Some(UNIX_EPOCH + Duration::from_secs(10))
    );
}

#[test]
fn hashed_keys_round_trip() {
    let h = hash_key("test");
    assert_eq!(
        h,
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    assert!(matches!(parse_key_id(&h), Ok(KeyId::Sha256(_))));
    assert!(parse_key_id("sha256:abc").is_err());
}

#[test]
fn key_policy_errors_never_show_the_key() {
    let text = "api_keys:\n  \"sk-secret-abc\": { name: a, rpm: 0, bogus: 1 }\n";
    let errs = Config::from_yaml(text, &|_| None).unwrap_err().to_string();
    assert!(!errs.contains("sk-secret-abc"), "{errs}");
    assert!(errs.contains("bogus"), "{errs}");
    assert!(errs.contains("<inline>:2"), "{errs}");
}

#[test]
fn routes_and_upstreams_cross_check() {
    let text = "upstreams:\n  b: { base_url: \"http://x/v1\", credential: nope }\nroutes:\n  - models: [\"a*\"]\n    upstreams: [b, ghost]\n";
    let errs = Config::from_yaml(text, &|_| None).unwrap_err().to_string();
    assert!(errs.contains("upstreams.b.credential"), "{errs}");
    assert!(errs.contains("routes[0].upstreams"), "{errs}");
    let ok = Config::from_yaml("upstreams:\n  b: { base_url: \"http://x/v1/\" }\nroutes:\n  - models: [\"a*\"]\n    upstreams: [b, default]\n", &|_| None).unwrap();
    assert_eq!(ok.upstreams[1].chat_url, "http://x/v1/chat/completions");
    assert_eq!(ok.routes[0].attempts, 2);
}

#[test]
fn labels_do_not_reveal_keys() {
    let l = key_label("sk-abcdef");
    assert!(l.starts_with("key-"));
    assert!(!l.contains("abcdef"));
}

#[test]
fn seed_upstream_keys_must_fit_a_header() {
    let text = "api_keys:\n  \"sk-client-secret\": \"up\\x01key\"\n";
    let errs = Config::from_yaml(text, &|_| None).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = &errs.0[0];
    assert_eq!(e.line, Some(2));
    assert!(e.path.starts_with("api_keys.key-"), "{errs}");
    assert!(
        e.message.contains("not allowed in an HTTP header"),
        "{errs}"
    );
    assert!(!errs.to_string().contains("sk-client-secret"), "{errs}");
}

#[test]
fn upstream_hosts_must_be_usable_for_tls() {
    let text = "upstreams:\n  b:\n    base_url: \"https://exa\\tmple.com/v1\"\n";
    let errs = Config::from_yaml(text, &|_| None).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "upstreams.b.base_url");
    assert_eq!(errs.0[0].line, Some(3));
    assert!(errs.0[0].message.contains("TLS server name"), "{errs}");
    // Through a proxy the upstream's own host is never connected to directly.
    let proxied = "upstreams:\n  b:\n    base_url: \"https://exa\\tmple.com/v1\"\n    proxy: \"http://127.0.0.1:3128\"\n";
    assert!(Config::from_yaml(proxied, &|_| None).is_ok());
}

#[test]
fn ca_files_must_hold_usable_roots() {
    let dir = std::env::temp_dir().join(format!("sophgate-ca-roots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("bad.pem");
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let text = format!("api_ca_file: {}\n", pem.display());
    let errs = Config::from_yaml(&text, &|_| None).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "api_ca_file");
    assert_eq!(errs.0[0].line, Some(1));
    assert!(errs.0[0].message.contains("not usable as a root"), "{errs}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn errors_come_in_file_order() {
    let text = "log_level: LOUD\nlisten: nowhere\nip_whitelist:\n  - nonsense\napi_hots: x\n";
    let errs = Config::from_yaml(text, &|_| None).unwrap_err();
    let lines: Vec<_> = errs.0.iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(1), Some(2), Some(4), Some(5)], "{errs}");
}

#[test]
fn plugins_remember_where_they_are_configured() {
    let text = "field_aliases:\n  a: b\nplugins:\n  - path: headers.rhai\n";
    let cfg = Config::from_yaml(text, &|_| None).unwrap();
    assert_eq!(cfg.plugins.len(), 2);
    assert_eq!(cfg.plugins[0].index, None);
    assert_eq!(cfg.plugins[1].index, Some(0));
    let e = cfg.error_at(&cfg.plugins[1].yaml_path(), "x");
    assert_eq!((e.path.as_str(), e.line), ("plugins[0]", Some(4)));
}

#[test]
fn a_log_file_that_names_a_folder_is_an_error() {
    let errs = Config::from_yaml("logging:\n  file: logs/\n", &|_| None).unwrap_err();
    assert_eq!(errs.0[0].path, "logging.file");
    assert_eq!(errs.0[0].line, Some(2));
    let cfg = Config::from_yaml("logging:\n  file: logs/gw.log\n", &|_| None).unwrap();
    assert_eq!(
        cfg.logging.file.unwrap(),
        std::path::Path::new("logs/gw.log")
    );
}
