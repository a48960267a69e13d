//! Config files: the Python forwarder's config.yml and our config.yml.example load unchanged;
//! `sophgate check` / `serve` report every error with file, path and line, exit code 2.

use std::process::Command;
use std::time::Duration;

use sophgate::config::Config;

fn root(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn env_with_key(name: &str) -> Option<String> {
    (name == "SOPHNET_API_KEY").then(|| "sk-from-env".to_string())
}

#[test]
fn seed_config_loads_unchanged_with_the_same_meaning() {
    let text = std::fs::read_to_string(root("tests/fixtures/seed-config.yml")).unwrap();
    let cfg = Config::from_yaml(&text, &|_| None).unwrap();
    assert_eq!(cfg.upstream.api_host, "https://www.sophnet.com");
    assert_eq!(cfg.upstream.chat_path, "/api/open-apis/v1/chat/completions");
    assert_eq!(cfg.keys.len(), 2);
    assert_eq!(cfg.ip_deny.len(), 2);
    assert!(cfg.ip_allow.is_empty());
    assert!(cfg.upstream.proxy.is_none());
    assert_eq!(cfg.upstream.connect_timeout, Duration::from_secs(30));
    assert_eq!(cfg.defaults.model.as_deref(), Some("DeepSeek-V3"));
    assert_eq!(cfg.defaults.temperature, Some(0.7));
    assert_eq!(cfg.defaults.max_tokens, Some(4096));
    assert_eq!(cfg.models_cache_ttl, Duration::from_secs(300));
    assert_eq!(cfg.logging.level, "info");
    assert_eq!(cfg.upstream.connection_limit, 100);
    assert_eq!(cfg.upstream.connection_limit_per_host, 50);
    assert_eq!(cfg.workers, None);
    assert_eq!(
        cfg.field_aliases,
        vec![("model".to_string(), "model_id".to_string())]
    );
    sophgate::Generation::build(cfg, 1).unwrap();
}

#[test]
fn example_config_loads_and_reads_the_key_from_the_environment() {
    let text = std::fs::read_to_string(root("config.yml.example")).unwrap();
    let cfg = Config::from_yaml(&text, &env_with_key).unwrap();
    assert_eq!(cfg.keys.len(), 1);
    assert_eq!(
        cfg.keys[0].upstream_key.as_ref().unwrap().expose(),
        "sk-from-env"
    );
    assert_eq!(cfg.upstream.api_host, "https://www.sophnet.com");
    // Without the variable the file is refused, naming it.
    let err = Config::from_yaml(&text, &|_| None).unwrap_err().to_string();
    assert!(err.contains("SOPHNET_API_KEY"), "{err}");
}

#[test]
fn example_documents_every_key() {
    let text = std::fs::read_to_string(root("config.yml.example")).unwrap();
    for key in [
        "api_host",
        "forward_chat_path",
        "forward_base_path",
        "api_keys",
        "ip_whitelist",
        "ip_blacklist",
        "proxy",
        "timeout",
        "default_model",
        "default_temperature",
        "default_max_tokens",
        "models_cache_ttl",
        "log_level",
        "connection_limit",
        "connection_limit_per_host",
        "keepalive_timeout",
        "force_close",
        "workers",
        "field_aliases",
        "listen",
        "trusted_proxies",
        "passthrough_unknown_keys",
        "models:",
        "limits:",
        "max_body_bytes",
        "header_read_timeout",
        "send_timeout",
        "first_byte_timeout",
        "stream_idle_timeout",
        "shutdown_grace",
        "logging:",
        "format:",
        "file:",
        "rotation:",
        "retention_days",
        "credentials:",
        "upstreams:",
        "routes:",
        "token_endpoint",
        "oauth2",
        "pool",
        "command",
        "rpm",
        "tpm",
        "max_concurrent",
        "expires_at",
        "sha256:",
        "access_log",
        "forward_headers:",
    ] {
        assert!(
            text.contains(key),
            "config.yml.example does not mention {key}"
        );
    }
}

fn sophgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sophgate"))
        .args(args)
        .env("SOPHNET_API_KEY", "sk-from-env")
        .output()
        .unwrap()
}

#[test]
fn check_accepts_good_files_and_reports_every_error_with_line() {
    let ok = sophgate(&["check", "-c", root("config.yml.example").to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = std::env::temp_dir().join(format!("sophgate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yml");
    std::fs::write(
        &bad,
        "api_host: https://x\nip_whitelst: []\nlimits:\n  max_body_bytes: -5\nip_blacklist:\n  - 10.0.0.0/8\n  - not-an-ip\n",
    )
    .unwrap();
    let out = sophgate(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yml:2: ip_whitelst: unknown key"), "{err}");
    assert!(err.contains("bad.yml:4: limits.max_body_bytes"), "{err}");
    assert!(err.contains("bad.yml:7: ip_blacklist[1]"), "{err}");

    let missing = sophgate(&["serve", "-c", dir.join("nope.yml").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.yml"));

    std::fs::write(&bad, "api_host: [unclosed\n").unwrap();
    let out = sophgate(&["serve", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yml:") && err.contains("invalid YAML"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// What the build could not use (an empty pool, a key that cannot be a header, a route to an
/// unknown upstream, a missing plugin, a script that does not compile) is a config error like
/// any other: reported by `sophgate check` all at once, in file order, with YAML path and line.
#[test]
fn check_reports_build_problems_with_path_and_line() {
    let dir = std::env::temp_dir().join(format!("sophgate-check-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yml");
    std::fs::write(
        &bad,
        "upstreams:\n  b: { base_url: \"http://127.0.0.1:1/v1\" }\ncredentials:\n  p:\n    type: pool\n    keys: []\n  s:\n    type: static\n    key: \"sk-a\\nb\"\nroutes:\n  - models: [\"a*\"]\n    upstreams: [b, ghost]\nplugins:\n  - path: missing-plugin.rhai\napi_keys:\n  \"client-key-secret\": \"up\\x01key\"\n",
    )
    .unwrap();
    let out = sophgate(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = [
        "bad.yml:6: credentials.p.keys: a pool needs at least one key",
        "bad.yml:9: credentials.s.key: contains characters not allowed in an HTTP header",
        "bad.yml:12: routes[0].upstreams: no upstream named `ghost`",
        "bad.yml:14: plugins[0].path: plugin file `missing-plugin.rhai` not found",
        "bad.yml:16: api_keys.key-",
    ];
    let mut last = 0;
    for e in expected {
        let at = err.find(e).unwrap_or_else(|| panic!("no `{e}` in:\n{err}"));
        assert!(at >= last, "not in file order:\n{err}");
        last = at;
    }
    assert!(err.contains("5 error(s) in"), "{err}");
    assert!(!err.contains("client-key-secret"), "{err}");

    // A script error names the plugin's entry in the config and the script's own position.
    std::fs::write(dir.join("broken.rhai"), "fn on_request(req) { let = ; }\n").unwrap();
    std::fs::write(&bad, "log_level: INFO\nplugins:\n  - path: broken.rhai\n").unwrap();
    let out = sophgate(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yml:3: plugins[0]: broken.rhai:1:"),
        "{err}"
    );
    assert!(err.contains("1 error(s) in"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A config changed after validation (as `sophgate test` changes it) is checked again by the
/// build, and its errors are located in the file it came from.
#[test]
fn build_errors_are_located_in_the_config() {
    let text = "upstreams:\n  b: { base_url: \"http://127.0.0.1:1/v1\" }\nroutes:\n  - models: [\"a*\"]\n    upstreams: [b]\n";
    let mut cfg = Config::from_yaml(text, &|_| None).unwrap();
    cfg.routes[0].upstreams.push("ghost".into());
    let Err(sophgate::config::BuildError::Config(errs)) = sophgate::Generation::build(cfg, 1)
    else {
        panic!("a route to an unknown upstream was built");
    };
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(
        errs.to_string(),
        "<inline>:5: routes[0].upstreams: no upstream named `ghost`"
    );
}

/// The errors of `text`, as `(path, line, message)`.
fn errors_of(text: &str) -> Vec<(String, Option<usize>, String)> {
    Config::from_yaml(text, &|_| None)
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| (e.path, e.line, e.message))
        .collect()
}

#[test]
fn type_errors_speak_the_users_language() {
    let text = "timeout: soon\ndefault_max_tokens: -5\nworkers: many\nforce_close: \"yes please\"\nlimits: 5\nip_whitelist: 10.0.0.1\nadmin: {key: 123456789012345678}\n";
    let errs = errors_of(text);
    let messages: Vec<(&str, &str)> = errs
        .iter()
        .map(|(p, _, m)| (p.as_str(), m.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            ("timeout", "expected a number, got text"),
            (
                "default_max_tokens",
                "expected a whole number (0 or more), got a negative number"
            ),
            ("workers", "expected a whole number (0 or more), got text"),
            ("force_close", "expected true or false, got text"),
            (
                "limits",
                "expected a map (key: value entries), got a whole number"
            ),
            ("ip_whitelist", "expected a list, got text"),
            (
                "admin.key",
                "expected text, got a whole number (put it in quotes)"
            ),
        ]
    );
    for (_, _, m) in &errs {
        for rust in [
            "f64",
            "u64",
            "usize",
            "u32",
            "struct",
            "sequence",
            "invalid type",
        ] {
            assert!(!m.contains(rust), "{m}");
        }
    }
    // No value is quoted back (it may be a secret).
    assert!(!errs
        .iter()
        .any(|(_, _, m)| m.contains("123456789012345678")));
}

#[test]
fn a_missing_variable_is_one_error_per_key() {
    let text = "api_host: ${NO_HOST}\ntimeout: ${NO_TIMEOUT}\nlimits:\n  max_body_bytes: ${NO_MAX}\nip_whitelist: [\"${NO_IP}\"]\napi_keys:\n  sk-a: {rpm: \"${NO_RPM}\"}\n";
    let errs = errors_of(text);
    let found: Vec<(&str, Option<usize>)> = errs.iter().map(|(p, l, _)| (p.as_str(), *l)).collect();
    assert_eq!(found.len(), 5, "{errs:?}");
    assert_eq!(found[0], ("api_host", Some(1)));
    assert_eq!(found[1], ("timeout", Some(2)));
    assert_eq!(found[2], ("limits.max_body_bytes", Some(4)));
    assert_eq!(found[3], ("ip_whitelist[0]", Some(5)));
    assert_eq!(found[4].1, Some(7));
    assert!(
        errs.iter()
            .all(|(_, _, m)| m.starts_with("environment variable")),
        "{errs:?}"
    );
}

#[test]
fn every_error_of_a_key_policy_is_shown() {
    let text =
        "api_keys:\n  sk-a:\n    name: a\n    rpm: lots\n    bogus: 1\n    credential: nope\n";
    let errs = errors_of(text);
    let found: Vec<(Option<usize>, &str)> = errs.iter().map(|(_, l, m)| (*l, m.as_str())).collect();
    assert_eq!(found.len(), 3, "{errs:?}");
    assert_eq!(found[0].0, Some(4));
    assert!(
        found[0].1.starts_with("expected a whole number"),
        "{errs:?}"
    );
    assert_eq!(found[1].0, Some(5));
    assert!(found[1].1.starts_with("unknown key `bogus`"), "{errs:?}");
    assert_eq!(found[2].0, Some(6));
    assert!(
        found[2].1.contains("no credential named `nope`"),
        "{errs:?}"
    );
    assert!(errs.iter().all(|(p, _, _)| !p.contains("sk-a")));
}

#[test]
fn no_follow_on_errors() {
    // A bad value of a required key is not also "missing"; an upstream with errors is still
    // a name routes and keys may use; list items keep the indexes they have in the file.
    let text = "upstreams:\n  a:\n    base_url: 5\n    bogus: 1\nroutes:\n  - models: x\n    upstreams: [a]\n  - models: [y]\n    upstreams: [a]\nmodels: [1, ok, {idd: x}]\n";
    let errs = errors_of(text);
    let found: Vec<(&str, Option<usize>)> = errs.iter().map(|(p, l, _)| (p.as_str(), *l)).collect();
    assert_eq!(
        found,
        [
            ("upstreams.a.base_url", Some(3)),
            ("upstreams.a.bogus", Some(4)),
            ("routes[0].models", Some(6)),
            ("models[0]", Some(10)),
            ("models[2]", Some(10)),
        ],
        "{errs:?}"
    );
}

#[test]
fn errors_are_sorted_by_line_across_schema_and_meaning() {
    let text = "log_level: LOUD\ntimeout: soon\nip_blacklist: [nonsense]\nlimits:\n  bogus: 1\napi_host: ftp://x\n";
    let lines: Vec<Option<usize>> = errors_of(text).into_iter().map(|(_, l, _)| l).collect();
    assert_eq!(lines, [Some(1), Some(2), Some(3), Some(5), Some(6)]);
}
