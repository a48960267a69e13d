//! Turns the raw schema into a [`Config`]: applies defaults, checks formats and ranges, and
//! collects every problem (with its YAML path and line) before failing.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::load::{find_line, Segment};
use super::raw::{RawApiKey, RawConfig, RawModel};
use super::{
    Config, ConfigError, ConfigErrors, Defaults, KeyConfig, Limits, LogFormat, LoggingConfig,
    ModelEntry, Rotation, UpstreamConfig,
};
use crate::secret::Secret;

pub const DEFAULT_API_HOST: &str = "https://www.sophnet.com";
pub const DEFAULT_CHAT_PATH: &str = "/api/open-apis/v1/chat/completions";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

struct Collector<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn err(&mut self, path: &[Segment], message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            path: super::load::render_path(path),
            line: find_line(self.text, path),
            message: message.into(),
        });
    }

    fn seconds(&mut self, path: &[Segment], value: Option<f64>, default: f64) -> Duration {
        let v = value.unwrap_or(default);
        if !v.is_finite() || v <= 0.0 || v > 31_536_000.0 {
            self.err(
                path,
                format!("must be a positive number of seconds, got {v}"),
            );
            return Duration::from_secs_f64(default);
        }
        Duration::from_secs_f64(v)
    }

    fn nets(&mut self, name: &str, list: Option<Vec<String>>) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, item) in list.unwrap_or_default().into_iter().enumerate() {
            match parse_net(&item) {
                Some(n) => out.push(n),
                None => self.err(
                    &[k(name), Segment::Index(i)],
                    format!(
                        "`{item}` is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)"
                    ),
                ),
            }
        }
        out
    }
}

fn k(name: &str) -> Segment {
    Segment::Key(name.to_owned())
}

/// Parses `1.2.3.4`, `10.0.0.0/8`, `::1` or `2001:db8::/32`; host bits are masked off.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// A log-safe name for a key given without one: a short hash prefix, never the key itself.
pub fn key_label(client_key: &str) -> String {
    let digest = Sha256::digest(client_key.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("key-{hex}")
}

fn log_level(raw: Option<String>, c: &mut Collector<'_>) -> String {
    let Some(raw) = raw else {
        return "info".into();
    };
    match raw.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "trace".into(),
        "DEBUG" => "debug".into(),
        "INFO" => "info".into(),
        "WARNING" | "WARN" => "warn".into(),
        "ERROR" | "CRITICAL" | "FATAL" => "error".into(),
        _ => {
            c.err(
                &[k("log_level")],
                format!("`{raw}` is not a log level (DEBUG, INFO, WARNING, ERROR)"),
            );
            "info".into()
        }
    }
}

fn normalise_path(p: &str) -> String {
    let p = p.trim();
    let with_slash = if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    };
    if with_slash.len() > 1 {
        with_slash.trim_end_matches('/').to_owned()
    } else {
        with_slash
    }
}

pub fn validate(raw: RawConfig, file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let mut c = Collector {
        file,
        text,
        errors: Vec::new(),
    };
    let mut warnings = Vec::new();

    // --- listen ---
    let listen_s = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen = match listen_s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.err(
                &[k("listen")],
                format!("`{listen_s}` is not an address:port (e.g. 0.0.0.0:8000 or [::]:8000)"),
            );
            SocketAddr::from(([0, 0, 0, 0], 8000))
        }
    };

    // --- upstream ---
    let api_host = raw
        .api_host
        .unwrap_or_else(|| DEFAULT_API_HOST.to_owned())
        .trim()
        .trim_end_matches('/')
        .to_owned();
    match reqwest::Url::parse(&api_host) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
            if u.query().is_some() || u.fragment().is_some() {
                c.err(&[k("api_host")], "must not contain a query or fragment");
            }
        }
        _ => c.err(
            &[k("api_host")],
            format!("`{api_host}` is not an http(s) URL such as https://www.sophnet.com"),
        ),
    }
    let chat_path = normalise_path(
        raw.forward_chat_path
            .as_deref()
            .unwrap_or(DEFAULT_CHAT_PATH),
    );
    let base_path = match raw.forward_base_path.as_deref() {
        Some(p) => {
            let p = normalise_path(p);
            if p == "/" {
                String::new()
            } else {
                p
            }
        }
        None => match chat_path.strip_suffix("/chat/completions") {
            Some(b) => b.to_owned(),
            None => {
                warnings.push(format!(
                    "forward_chat_path `{chat_path}` does not end in /chat/completions; other /v1/* \
                     requests go under /v1 (set forward_base_path to change that)"
                ));
                "/v1".to_owned()
            }
        },
    };
    let proxy = match raw
        .proxy
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
    {
        Some(p) => {
            let ok = reqwest::Url::parse(&p)
                .map(|u| {
                    matches!(u.scheme(), "http" | "https" | "socks5" | "socks5h")
                        && u.host().is_some()
                })
                .unwrap_or(false);
            if !ok {
                // The value may hold credentials: do not echo it.
                c.err(
                    &[k("proxy")],
                    "must be a proxy URL with scheme http, https, socks5 or socks5h",
                );
            }
            Some(Secret::new(p))
        }
        None => None,
    };
    let connect_timeout = c.seconds(&[k("timeout")], raw.timeout, 30.0);
    let keepalive_timeout = c.seconds(&[k("keepalive_timeout")], raw.keepalive_timeout, 30.0);
    let upstream = UpstreamConfig {
        api_host,
        chat_path,
        base_path,
        proxy,
        connect_timeout,
        connection_limit: raw.connection_limit.unwrap_or(0) as usize,
        connection_limit_per_host: raw.connection_limit_per_host.unwrap_or(0) as usize,
        keepalive_timeout,
        force_close: raw.force_close.unwrap_or(false),
    };

    // --- keys ---
    let mut keys = Vec::new();
    for (client_key, value) in raw.api_keys.unwrap_or_default() {
        let path = [k("api_keys"), Segment::Key(client_key.clone())];
        if client_key.trim().is_empty() {
            c.err(&path, "a client key must not be empty");
            continue;
        }
        match value {
            RawApiKey::Upstream(upstream_key) => {
                if upstream_key.is_empty() {
                    c.err(&path, "the upstream key is empty");
                    continue;
                }
                keys.push(KeyConfig {
                    label: key_label(&client_key),
                    client_key: Secret::new(client_key),
                    upstream_key: Secret::new(upstream_key),
                });
            }
        }
    }
    let passthrough_unknown_keys = raw.passthrough_unknown_keys.unwrap_or(false);
    if keys.is_empty() && !passthrough_unknown_keys {
        warnings.push("api_keys is empty: every API request will be answered 401".into());
    }

    // --- ACL ---
    let ip_allow = c.nets("ip_whitelist", raw.ip_whitelist);
    let ip_deny = c.nets("ip_blacklist", raw.ip_blacklist);
    let trusted_proxies = c.nets("trusted_proxies", raw.trusted_proxies);

    // --- defaults ---
    if let Some(t) = raw.default_temperature {
        if !(0.0..=2.0).contains(&t) {
            c.err(
                &[k("default_temperature")],
                format!("must be between 0 and 2, got {t}"),
            );
        }
    }
    if raw.default_max_tokens == Some(0) {
        c.err(&[k("default_max_tokens")], "must be at least 1");
    }
    let defaults = Defaults {
        model: raw.default_model.filter(|m| !m.trim().is_empty()),
        temperature: raw.default_temperature,
        max_tokens: raw.default_max_tokens,
    };

    // --- field aliases ---
    let mut field_aliases = Vec::new();
    for (from, to) in raw.field_aliases.unwrap_or_default() {
        if from.is_empty() || to.is_empty() {
            c.err(
                &[k("field_aliases"), Segment::Key(from.clone())],
                "field names must not be empty",
            );
            continue;
        }
        if from != to {
            field_aliases.push((from, to));
        }
    }

    // --- models ---
    let models = raw.models.map(|list| {
        list.into_iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let (id, owned_by, created) = match m {
                    RawModel::Id(id) => (id, None, None),
                    RawModel::Full(o) => (o.id, o.owned_by, o.created),
                };
                if id.trim().is_empty() {
                    c.err(
                        &[k("models"), Segment::Index(i)],
                        "a model id must not be empty",
                    );
                    return None;
                }
                Some(ModelEntry {
                    id,
                    owned_by: owned_by.unwrap_or_else(|| "sophgate".into()),
                    created: created.unwrap_or(0),
                })
            })
            .collect()
    });
    let models_cache_ttl = match raw.models_cache_ttl {
        Some(0.0) => Duration::ZERO,
        other => c.seconds(&[k("models_cache_ttl")], other, 300.0),
    };

    // --- workers ---
    if raw.workers == Some(0) {
        c.err(
            &[k("workers")],
            "must be at least 1 (or null for one per core)",
        );
    }

    // --- limits ---
    let rl = raw.limits.unwrap_or_default();
    let max_body = rl.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body == 0 || max_body > (1 << 32) {
        c.err(
            &[k("limits"), k("max_body_bytes")],
            format!("must be between 1 and 4294967296, got {max_body}"),
        );
    }
    let limits = Limits {
        max_body_bytes: max_body.clamp(1, 1 << 32) as usize,
        header_read_timeout: c.seconds(
            &[k("limits"), k("header_read_timeout")],
            rl.header_read_timeout,
            30.0,
        ),
        first_byte_timeout: c.seconds(
            &[k("limits"), k("first_byte_timeout")],
            rl.first_byte_timeout,
            300.0,
        ),
        stream_idle_timeout: c.seconds(
            &[k("limits"), k("stream_idle_timeout")],
            rl.stream_idle_timeout,
            300.0,
        ),
        shutdown_grace: c.seconds(&[k("limits"), k("shutdown_grace")], rl.shutdown_grace, 30.0),
    };
    let _ = rl.pool_idle_timeout;

    // --- logging ---
    let level = log_level(raw.log_level, &mut c);
    let lg = raw.logging.unwrap_or_default();
    let format = match lg.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.err(
                &[k("logging"), k("format")],
                format!("`{other}` is not text or json"),
            );
            LogFormat::Text
        }
    };
    let rotation = match lg
        .rotation
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("daily") => Rotation::Daily,
        Some("hourly") => Rotation::Hourly,
        Some("never") => Rotation::Never,
        Some(other) => {
            c.err(
                &[k("logging"), k("rotation")],
                format!("`{other}` is not daily, hourly or never"),
            );
            Rotation::Daily
        }
    };
    let logging = LoggingConfig {
        level,
        format,
        file: lg.file.filter(|f| !f.trim().is_empty()).map(PathBuf::from),
        rotation,
        retention_days: lg.retention_days.unwrap_or(10),
        access_log: lg.access_log.unwrap_or(true),
    };

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        source: None,
        listen,
        upstream,
        keys,
        passthrough_unknown_keys,
        ip_allow,
        ip_deny,
        trusted_proxies,
        defaults,
        field_aliases,
        models,
        models_cache_ttl,
        logging,
        limits,
        workers: raw.workers,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
    fn labels_do_not_reveal_keys() {
        let l = key_label("sk-abcdef");
        assert!(l.starts_with("key-"));
        assert!(!l.contains("abcdef"));
    }
}
