//! Turns the raw schema into a [`Config`]: applies defaults, checks formats and ranges, and
//! collects every problem (with its YAML path and line) before failing.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::load::{find_line, Segment};
use super::raw::{RawConfig, RawKeyPolicy, RawModel};
use super::raw_credentials::{validate_credential, RawCredential};
use super::{
    Config, ConfigError, ConfigErrors, Defaults, KeyConfig, KeyId, Limits, LogFormat,
    LoggingConfig, ModelEntry, PluginConfig, PluginSource, Rotation, RouteDef, UpstreamConfig,
    UpstreamDef,
};
use crate::secret::Secret;

pub const DEFAULT_API_HOST: &str = "https://www.sophnet.com";
pub const DEFAULT_CHAT_PATH: &str = "/api/open-apis/v1/chat/completions";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// The upstream the flat seed keys (`api_host`, `forward_chat_path`, …) define.
pub const DEFAULT_UPSTREAM: &str = "default";

fn is_http_url(s: &str) -> bool {
    reqwest::Url::parse(s)
        .map(|u| (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some())
        .unwrap_or(false)
}

fn is_proxy_url(s: &str) -> bool {
    reqwest::Url::parse(s)
        .map(|u| {
            matches!(u.scheme(), "http" | "https" | "socks5" | "socks5h") && u.host().is_some()
        })
        .unwrap_or(false)
}

/// A plugin path: a file relative to the config's folder (or absolute, or relative to the
/// working directory), else a bundled plugin of the same file name.
fn resolve_plugin(path: &str, base_dir: &std::path::Path) -> Option<PluginSource> {
    let p = std::path::Path::new(path);
    let candidates = if p.is_absolute() {
        vec![p.to_path_buf()]
    } else {
        vec![base_dir.join(p), p.to_path_buf()]
    };
    if let Some(found) = candidates.into_iter().find(|c| c.is_file()) {
        return Some(PluginSource::File(found));
    }
    let stem = p.file_stem()?.to_str()?;
    crate::scripting::bundled(stem).map(|_| PluginSource::Bundled(stem.to_owned()))
}

/// Where a `ca_file` is: relative paths start at the config's folder.
fn ca_file_path(path: &str, base_dir: &std::path::Path) -> PathBuf {
    let p = std::path::Path::new(path.trim());
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// The certificates of a `ca_file` (PEM), as DER. Errors name the file, not its content.
fn load_ca_file(full: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(full).map_err(|e| format!("cannot read {}: {e}", full.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", full.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", full.display()));
    }
    Ok(certs)
}

/// The certificates of an optional `ca_file` key at `path`; a file that cannot be used is a
/// config error there (and no certificates). The file goes on `files` (to be watched) either
/// way.
fn ca_file_certs(
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
    path: &[Segment],
    file: Option<&str>,
    base_dir: &std::path::Path,
) -> Vec<Vec<u8>> {
    let Some(file) = file else {
        return Vec::new();
    };
    let full = ca_file_path(file, base_dir);
    let certs = load_ca_file(&full);
    if !files.contains(&full) {
        files.push(full);
    }
    certs.unwrap_or_else(|e| {
        c.err(path, e);
        Vec::new()
    })
}

/// `sha256:<64 hex>` or a plain key.
pub fn parse_key_id(key: &str) -> Result<KeyId, String> {
    if key.trim().is_empty() {
        return Err("a client key must not be empty".into());
    }
    let Some(hex) = key.strip_prefix("sha256:") else {
        return Ok(KeyId::Plain(Secret::new(key)));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            "a hashed key is `sha256:` followed by 64 hex digits (see `sophgate hash-key`)".into(),
        );
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| "bad hex".to_string())?;
    }
    Ok(KeyId::Sha256(out))
}

/// The form `sophgate hash-key` prints and `api_keys` accepts.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Unix seconds, `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn parse_time(v: &serde_yaml::Value) -> Option<std::time::SystemTime> {
    use std::time::{Duration as D, UNIX_EPOCH};
    if let Some(n) = v.as_u64() {
        return Some(UNIX_EPOCH + D::from_secs(n));
    }
    let s = v.as_str()?.trim();
    let num = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if s.get(4..5)? != "-"
        || s.get(7..8)? != "-"
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if s.len() > 10 {
        let sep = s.get(10..11)?;
        if sep != "T" && sep != "t" && sep != " " {
            return None;
        }
        let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        if hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        secs += hh * 3600 + mm * 60 + ss;
        let mut rest = s.get(19..)?;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            rest = &frac[digits..];
        }
        match rest {
            "Z" | "z" => {}
            tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
                let h: i64 = tz.get(1..3)?.parse().ok()?;
                let m: i64 = tz.get(4..6)?.parse().ok()?;
                let off = h * 3600 + m * 60;
                secs -= if tz.starts_with('+') { off } else { -off };
            }
            _ => return None,
        }
    }
    u64::try_from(secs)
        .ok()
        .map(|n| UNIX_EPOCH + D::from_secs(n))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

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

    /// An error whose displayed path differs from the one used to find its line (client keys
    /// are map keys; they are located but never printed).
    fn err_masked(&mut self, line_path: &[Segment], shown: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            path: shown.to_owned(),
            line: find_line(self.text, line_path),
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

pub fn validate(
    raw: RawConfig,
    file: &str,
    text: &str,
    base_dir: &std::path::Path,
) -> Result<Config, ConfigErrors> {
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
    let mut ca_files = Vec::new();
    let ca_certs = ca_file_certs(
        &mut c,
        &mut ca_files,
        &[k("api_ca_file")],
        raw.api_ca_file.as_deref(),
        base_dir,
    );
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
        ca_certs,
    };

    // --- credentials (names now; each entry is typed by raw_credentials) ---
    let raw_credentials: Vec<(String, serde_yaml::Value)> =
        raw.credentials.unwrap_or_default().into_iter().collect();
    let credential_names: Vec<String> = raw_credentials.iter().map(|(n, _)| n.clone()).collect();
    let mut credentials = Vec::with_capacity(raw_credentials.len());
    for (name, value) in raw_credentials {
        let base = vec![k("credentials"), Segment::Key(name.clone())];
        match serde_path_to_error::deserialize::<_, RawCredential>(value) {
            Err(e) => {
                let mut path = base.clone();
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
                Ok(spec) => credentials.push((name, spec)),
                Err(errs) => {
                    for (sub, msg) in errs {
                        let mut path = base.clone();
                        path.push(Segment::Key(sub));
                        c.err(&path, msg);
                    }
                }
            },
        }
    }

    // --- upstreams ---
    let default_upstream = UpstreamDef {
        name: DEFAULT_UPSTREAM.to_owned(),
        chat_url: format!("{}{}", upstream.api_host, upstream.chat_path),
        base_url: format!("{}{}", upstream.api_host, upstream.base_path),
        models_url: format!("{}{}/models", upstream.api_host, upstream.base_path),
        credential: None,
        proxy: upstream.proxy.clone(),
        ca_certs: upstream.ca_certs.clone(),
        connect_timeout: upstream.connect_timeout,
        first_byte_timeout: Duration::ZERO, // filled from limits below
        idle_timeout: Duration::ZERO,
        total_timeout: None,
        max_concurrent: match (
            upstream.connection_limit,
            upstream.connection_limit_per_host,
        ) {
            (0, 0) => 0,
            (0, n) | (n, 0) => n,
            (a, b) => a.min(b),
        },
        keepalive_timeout: upstream.keepalive_timeout,
        pool_max_idle: if upstream.force_close {
            Some(0)
        } else if upstream.connection_limit_per_host > 0 {
            Some(upstream.connection_limit_per_host)
        } else {
            None
        },
    };
    let mut upstreams = vec![default_upstream];
    for (name, u) in raw.upstreams.unwrap_or_default() {
        let base = [k("upstreams"), Segment::Key(name.clone())];
        let at = |f: &str| {
            let mut p = base.to_vec();
            p.push(k(f));
            p
        };
        if name == DEFAULT_UPSTREAM {
            c.err(
                &base,
                "`default` is the upstream the flat keys (api_host, …) define; pick another name",
            );
            continue;
        }
        let base_url = u.base_url.trim().trim_end_matches('/').to_owned();
        if !is_http_url(&base_url) {
            c.err(
                &at("base_url"),
                format!("`{base_url}` is not an http(s) URL"),
            );
        }
        if let Some(cred) = &u.credential {
            if !credential_names.contains(cred) {
                c.err(
                    &at("credential"),
                    format!("no credential named `{cred}` under credentials:"),
                );
            }
        }
        let proxy = u
            .proxy
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty());
        if let Some(p) = &proxy {
            if !is_proxy_url(p) {
                c.err(
                    &at("proxy"),
                    "must be a proxy URL with scheme http, https, socks5 or socks5h",
                );
            }
        }
        let ca_certs = ca_file_certs(
            &mut c,
            &mut ca_files,
            &at("ca_file"),
            u.ca_file.as_deref(),
            base_dir,
        );
        let t = u.timeouts.unwrap_or_default();
        let tp = |f: &str| {
            let mut p = at("timeouts");
            p.push(k(f));
            p
        };
        let total = t.total.map(|v| c.seconds(&tp("total"), Some(v), 600.0));
        let def = UpstreamDef {
            chat_url: format!(
                "{base_url}{}",
                normalise_path(u.chat_path.as_deref().unwrap_or("/chat/completions"))
            ),
            models_url: format!(
                "{base_url}{}",
                normalise_path(u.models_path.as_deref().unwrap_or("/models"))
            ),
            base_url,
            name: name.clone(),
            credential: u.credential,
            proxy: proxy.map(Secret::new),
            connect_timeout: c.seconds(&tp("connect"), t.connect, 30.0),
            first_byte_timeout: c.seconds(&tp("first_byte"), t.first_byte, 300.0),
            idle_timeout: c.seconds(&tp("idle"), t.idle, 300.0),
            total_timeout: total,
            max_concurrent: u.max_concurrent.unwrap_or(0) as usize,
            keepalive_timeout: Duration::from_secs(90),
            pool_max_idle: None,
            ca_certs,
        };
        upstreams.push(def);
    }
    let upstream_names: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();

    // --- routes ---
    let mut routes = Vec::new();
    for (i, r) in raw.routes.unwrap_or_default().into_iter().enumerate() {
        let at = |f: &str| vec![k("routes"), Segment::Index(i), k(f)];
        if r.models.is_empty() || r.models.iter().any(|m| m.trim().is_empty()) {
            c.err(&at("models"), "needs at least one non-empty model glob");
        }
        if r.upstreams.is_empty() {
            c.err(&at("upstreams"), "needs at least one upstream");
        }
        for u in &r.upstreams {
            if !upstream_names.contains(u) {
                c.err(
                    &at("upstreams"),
                    format!(
                        "no upstream named `{u}` (known: {})",
                        upstream_names.join(", ")
                    ),
                );
            }
        }
        let attempts = r
            .attempts
            .map(|a| a as usize)
            .unwrap_or(r.upstreams.len())
            .max(1);
        if attempts > 10 {
            c.err(&at("attempts"), "at most 10 attempts per request");
        }
        let backoff = match r.backoff {
            Some(0.0) => Duration::ZERO,
            other => c.seconds(&at("backoff"), other, 0.05),
        };
        routes.push(RouteDef {
            models: r.models,
            upstreams: r.upstreams,
            rename: r.rename.unwrap_or_default().into_iter().collect(),
            attempts: attempts.min(10),
            backoff,
        });
    }

    // --- keys ---
    let mut keys = Vec::new();
    for (client_key, value) in raw.api_keys.unwrap_or_default() {
        // Paths name a key by its label: error messages must not echo client secrets.
        let id = match parse_key_id(&client_key) {
            Ok(id) => id,
            Err(msg) => {
                c.err_masked(
                    &[k("api_keys"), Segment::Key(client_key.clone())],
                    "api_keys.<hashed key>",
                    msg,
                );
                continue;
            }
        };
        let hash_label = match &id {
            KeyId::Plain(s) => key_label(s.expose()),
            KeyId::Sha256(d) => {
                let hex: String = d.iter().take(4).map(|b| format!("{b:02x}")).collect();
                format!("key-{hex}")
            }
        };
        let line_path = [k("api_keys"), Segment::Key(client_key.clone())];
        let shown = format!("api_keys.{hash_label}");
        let mut key = KeyConfig::new(id, hash_label.clone(), None);
        match value {
            serde_yaml::Value::String(upstream_key) => {
                if upstream_key.is_empty() {
                    c.err_masked(&line_path, &shown, "the upstream key is empty");
                    continue;
                }
                key.upstream_key = Some(Secret::new(upstream_key));
            }
            v @ serde_yaml::Value::Mapping(_) => {
                let policy: RawKeyPolicy = match serde_path_to_error::deserialize(v) {
                    Ok(p) => p,
                    Err(e) => {
                        let field = e.path().to_string();
                        c.err_masked(
                            &line_path,
                            &format!("{shown}.{field}"),
                            e.inner().to_string(),
                        );
                        continue;
                    }
                };
                if let Some(name) = policy.name.filter(|n| !n.trim().is_empty()) {
                    key.label = name;
                }
                if let Some(cred) = &policy.credential {
                    if !credential_names.contains(cred) {
                        c.err_masked(
                            &line_path,
                            &format!("{shown}.credential"),
                            format!("no credential named `{cred}` under credentials:"),
                        );
                    }
                }
                if let Some(u) = &policy.upstream {
                    if !upstream_names.contains(u) {
                        c.err_masked(
                            &line_path,
                            &format!("{shown}.upstream"),
                            format!("no upstream named `{u}`"),
                        );
                    }
                }
                for (n, v) in [
                    ("rpm", policy.rpm.map(u64::from)),
                    ("tpm", policy.tpm),
                    ("max_concurrent", policy.max_concurrent.map(u64::from)),
                ] {
                    if v == Some(0) {
                        c.err_masked(
                            &line_path,
                            &format!("{shown}.{n}"),
                            "must be at least 1 (omit it for no limit)",
                        );
                    }
                }
                if let Some(exp) = &policy.expires_at {
                    match parse_time(exp) {
                        Some(t) => key.expires_at = Some(t),
                        None => c.err_masked(&line_path, &format!("{shown}.expires_at"), "expected an RFC 3339 time (2027-01-31T00:00:00Z), a date (2027-01-31) or Unix seconds"),
                    }
                }
                key.credential = policy.credential;
                key.upstream = policy.upstream;
                key.models = policy.models.unwrap_or_default();
                key.rpm = policy.rpm;
                key.tpm = policy.tpm;
                key.max_concurrent = policy.max_concurrent;
            }
            _ => {
                c.err_masked(&line_path, &shown, "expected an upstream key (a string) or a policy map {name, credential, upstream, models, rpm, tpm, max_concurrent, expires_at}");
                continue;
            }
        }
        keys.push(key);
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
        keep_alive_timeout: c.seconds(
            &[k("limits"), k("keep_alive_timeout")],
            rl.keep_alive_timeout,
            75.0,
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
    if let Some(d) = upstreams.first_mut() {
        d.first_byte_timeout = limits.first_byte_timeout;
        d.idle_timeout = limits.stream_idle_timeout;
    }

    // --- plugins ---
    let mut plugins = Vec::new();
    if !field_aliases.is_empty() {
        let params: serde_json::Map<String, serde_json::Value> = field_aliases
            .iter()
            .map(|(f, t)| (f.clone(), serde_json::Value::String(t.clone())))
            .collect();
        plugins.push(PluginConfig {
            name: "field_aliases".into(),
            source: PluginSource::Bundled("field_aliases".into()),
            params: serde_json::Value::Object(params),
            implicit: true,
        });
    }
    for (i, p) in raw.plugins.unwrap_or_default().into_iter().enumerate() {
        let at = vec![k("plugins"), Segment::Index(i), k("path")];
        let params = match p.params {
            None => serde_json::Value::Object(Default::default()),
            Some(v) => match serde_json::to_value(&v) {
                Ok(j) => j,
                Err(_) => {
                    c.err(
                        &[k("plugins"), Segment::Index(i), k("params")],
                        "params must be plain YAML data",
                    );
                    continue;
                }
            },
        };
        match resolve_plugin(&p.path, base_dir) {
            Some(source) => plugins.push(PluginConfig {
                name: p.path.clone(),
                source,
                params,
                implicit: false,
            }),
            None => c.err(
                &at,
                format!(
                    "plugin file `{}` not found (relative paths start at the config file's folder; bundled: {})",
                    p.path,
                    crate::scripting::bundled::BUNDLED
                        .iter()
                        .map(|(n, _)| format!("plugins/{n}.rhai"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    let sl = rl.scripts.unwrap_or_default();
    let dflt = crate::scripting::ScriptLimits::default();
    let script_limits = crate::scripting::ScriptLimits {
        max_operations: sl.max_operations.unwrap_or(dflt.max_operations),
        max_call_levels: sl.max_call_levels.unwrap_or(dflt.max_call_levels),
        max_expr_depth: sl.max_expr_depth.unwrap_or(dflt.max_expr_depth),
        max_function_expr_depth: sl
            .max_function_expr_depth
            .unwrap_or(dflt.max_function_expr_depth),
        max_string_size: sl.max_string_size.unwrap_or(dflt.max_string_size),
        max_array_size: sl.max_array_size.unwrap_or(dflt.max_array_size),
        max_map_size: sl.max_map_size.unwrap_or(dflt.max_map_size),
        max_wall_time: sl
            .max_wall_time_ms
            .map(Duration::from_millis)
            .unwrap_or(dflt.max_wall_time),
    };
    if sl.max_wall_time_ms == Some(0) {
        c.err(
            &[k("limits"), k("scripts"), k("max_wall_time_ms")],
            "must be at least 1",
        );
    }
    let admin_key = match raw.admin.and_then(|a| a.key) {
        Some(key) if key.len() < 16 => {
            c.err(
                &[k("admin"), k("key")],
                "must be at least 16 characters (it guards reloads)",
            );
            None
        }
        Some(key) => Some(Secret::new(key)),
        None => None,
    };

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
        upstreams,
        routes,
        credentials,
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
        plugins,
        script_limits,
        admin_key,
        warnings,
        ca_files,
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
}
