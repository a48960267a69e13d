//! The upstreams: the one the flat seed keys define (`api_host`, `forward_chat_path`, `proxy`,
//! …), the named ones under `upstreams:`, their CA files, and the `routes:` between them.
//!
//! Everything building an upstream's client would refuse and that the config alone decides
//! (URL, proxy URL, `Host` value, TLS server name, CA certificates) is checked here, so that
//! `sophgate check` reports it with its line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderValue;
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio_rustls::rustls::RootCertStore;

use super::{Collector, DEFAULT_API_HOST, DEFAULT_CHAT_PATH, DEFAULT_UPSTREAM};
use crate::config::raw::{RawRoute, RawUpstream};
use crate::config::schema_errors::deserialize_all;
use crate::config::yaml_path::{k, Segment};
use crate::config::{RouteDef, UpstreamConfig, UpstreamDef};
use crate::secret::Secret;

const PROXY_SCHEMES: &str = "must be a proxy URL with scheme http, https, socks5 or socks5h";

/// The seed keys that define the `default` upstream.
pub(super) struct FlatKeys {
    pub api_host: Option<String>,
    pub forward_chat_path: Option<String>,
    pub forward_base_path: Option<String>,
    pub proxy: Option<String>,
    pub timeout: Option<f64>,
    pub keepalive_timeout: Option<f64>,
    pub api_ca_file: Option<String>,
    pub connection_limit: Option<u64>,
    pub connection_limit_per_host: Option<u64>,
    pub force_close: Option<bool>,
}

fn is_http_url(s: &str) -> bool {
    reqwest::Url::parse(s)
        .map(|u| (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some())
        .unwrap_or(false)
}

/// A proxy URL the upstream's client accepts.
fn is_proxy_url(s: &str) -> bool {
    let scheme_ok = reqwest::Url::parse(s)
        .map(|u| {
            matches!(u.scheme(), "http" | "https" | "socks5" | "socks5h") && u.host().is_some()
        })
        .unwrap_or(false);
    scheme_ok && reqwest::Proxy::all(s).is_ok()
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

/// Where a `ca_file` is: relative paths start at the config's folder.
pub(super) fn ca_file_path(path: &str, base_dir: &Path) -> PathBuf {
    let p = Path::new(path.trim());
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// The certificates of a `ca_file` (PEM), as DER, each usable as a trust root. Errors name
/// the file, not its content.
fn load_ca_file(full: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(full).map_err(|e| format!("cannot read {}: {e}", full.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", full.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", full.display()));
    }
    for (i, der) in certs.iter().enumerate() {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(der.clone())).map_err(|e| {
            format!(
                "{}: certificate {} is not usable as a root: {e}",
                full.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// The certificates of an optional `ca_file` key at `path`; a file that cannot be used is a
/// config error there (and no certificates). The file goes on `files` (to be watched) either
/// way.
pub(super) fn ca_file_certs(
    c: &mut Collector,
    files: &mut Vec<PathBuf>,
    path: &[Segment],
    file: Option<&str>,
    base_dir: &Path,
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

/// What the pooled connection of an upstream needs from its URL when it is reached directly
/// (no proxy): the authority as a `Host` value and, for https, a TLS server name. `url` is
/// the text as configured, not a re-serialised URL, since that text is what gets sent.
fn check_direct_authority(c: &mut Collector, path: &[Segment], url: &str) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return;
    };
    if scheme != "http" && scheme != "https" {
        return;
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return;
    }
    if HeaderValue::from_str(authority).is_err() {
        c.err(path, format!("`{authority}` is not a usable host"));
        return;
    }
    if scheme == "https" {
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let host = if has_port {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        } else {
            authority
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if ServerName::try_from(bare.to_owned()).is_err() {
            c.err(path, format!("`{host}` is not a usable TLS server name"));
        }
    }
}

/// The `default` upstream's settings from the flat keys.
pub(super) fn flat_upstream(
    c: &mut Collector,
    raw: FlatKeys,
    ca_files: &mut Vec<PathBuf>,
    base_dir: &Path,
) -> UpstreamConfig {
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
                c.warn(format!(
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
            if !is_proxy_url(&p) {
                // The value may hold credentials: do not echo it.
                c.err(&[k("proxy")], PROXY_SCHEMES);
            }
            Some(Secret::new(p))
        }
        None => None,
    };
    if proxy.is_none() {
        check_direct_authority(c, &[k("api_host")], &api_host);
    }
    let connect_timeout = c.seconds(&[k("timeout")], raw.timeout, 30.0);
    let keepalive_timeout = c.seconds(&[k("keepalive_timeout")], raw.keepalive_timeout, 30.0);
    let ca_certs = ca_file_certs(
        c,
        ca_files,
        &[k("api_ca_file")],
        raw.api_ca_file.as_deref(),
        base_dir,
    );
    UpstreamConfig {
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
    }
}

/// The `default` upstream as a target. Its first-byte and idle timeouts come from `limits:`
/// and are filled in once those are read.
fn default_upstream(upstream: &UpstreamConfig) -> UpstreamDef {
    UpstreamDef {
        name: DEFAULT_UPSTREAM.to_owned(),
        chat_url: format!("{}{}", upstream.api_host, upstream.chat_path),
        base_url: format!("{}{}", upstream.api_host, upstream.base_path),
        models_url: format!("{}{}/models", upstream.api_host, upstream.base_path),
        credential: None,
        proxy: upstream.proxy.clone(),
        ca_certs: upstream.ca_certs.clone(),
        connect_timeout: upstream.connect_timeout,
        first_byte_timeout: Duration::ZERO,
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
    }
}

/// Every upstream, `default` first.
pub(super) fn upstreams(
    c: &mut Collector,
    flat: &UpstreamConfig,
    raw: Option<std::collections::BTreeMap<String, serde_yaml::Value>>,
    credential_names: &[String],
    ca_files: &mut Vec<PathBuf>,
    base_dir: &Path,
) -> Upstreams {
    let mut upstreams = vec![default_upstream(flat)];
    let mut broken = Vec::new();
    for (name, value) in raw.unwrap_or_default() {
        let base = [k("upstreams"), Segment::Key(name.clone())];
        if name == DEFAULT_UPSTREAM {
            c.err(
                &base,
                "`default` is the upstream the flat keys (api_host, …) define; pick another name",
            );
            continue;
        }
        // Typed per entry, so an entry with a bad field still names an upstream (a route
        // naming it is not reported a second time).
        let (u, problems) = deserialize_all::<RawUpstream>(value);
        let refused = !problems.is_empty();
        for (sub, message) in problems {
            let mut at = base.to_vec();
            at.extend(sub);
            c.err(&at, message);
        }
        let Some(u) = u.filter(|_| !refused) else {
            broken.push(name);
            continue;
        };
        upstreams.push(named_upstream(
            c,
            &base,
            name,
            u,
            credential_names,
            ca_files,
            base_dir,
        ));
    }
    Upstreams {
        defs: upstreams,
        broken,
    }
}

/// The upstreams: the usable ones, and the names of entries with schema errors.
pub(super) struct Upstreams {
    pub defs: Vec<UpstreamDef>,
    pub broken: Vec<String>,
}

fn named_upstream(
    c: &mut Collector,
    base: &[Segment],
    name: String,
    u: RawUpstream,
    credential_names: &[String],
    ca_files: &mut Vec<PathBuf>,
    base_dir: &Path,
) -> UpstreamDef {
    let at = |f: &str| {
        let mut p = base.to_vec();
        p.push(k(f));
        p
    };
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
    match &proxy {
        Some(p) if !is_proxy_url(p) => c.err(&at("proxy"), PROXY_SCHEMES),
        Some(_) => {}
        None => check_direct_authority(c, &at("base_url"), &base_url),
    }
    let ca_certs = ca_file_certs(c, ca_files, &at("ca_file"), u.ca_file.as_deref(), base_dir);
    let t = u.timeouts.unwrap_or_default();
    let tp = |f: &str| {
        let mut p = at("timeouts");
        p.push(k(f));
        p
    };
    let total = t.total.map(|v| c.seconds(&tp("total"), Some(v), 600.0));
    UpstreamDef {
        chat_url: format!(
            "{base_url}{}",
            normalise_path(u.chat_path.as_deref().unwrap_or("/chat/completions"))
        ),
        models_url: format!(
            "{base_url}{}",
            normalise_path(u.models_path.as_deref().unwrap_or("/models"))
        ),
        base_url,
        name,
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
    }
}

pub(super) fn routes(
    c: &mut Collector,
    raw: Option<Vec<RawRoute>>,
    upstream_names: &[String],
) -> Vec<RouteDef> {
    let mut routes = Vec::new();
    for (i, r) in raw.unwrap_or_default().into_iter().enumerate() {
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
    routes
}
