//! Configuration: the raw YAML schema (`raw`), `${VAR}` expansion (`env`), reading with error
//! collection (`load`) and validation into the typed [`Config`] the runtime is built from
//! (`validate`).

pub mod credential_spec;
pub mod env;
mod error;
pub mod forward_headers;
pub mod load;
pub mod raw;
pub mod raw_credentials;
pub mod schema_errors;
pub mod store;
pub mod validate;
pub mod yaml_path;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use self::error::{BuildError, ConfigError, ConfigErrors, Locator};
use self::yaml_path::Segment;
use crate::secret::Secret;

/// A validated configuration. Everything here has its default applied and its format checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, if any (the demo's config is built in).
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub upstream: UpstreamConfig,
    /// Every upstream, `default` (from the flat keys) first.
    pub upstreams: Vec<UpstreamDef>,
    pub routes: Vec<RouteDef>,
    /// Named credentials (their `Debug` shows no secret).
    pub credentials: Vec<(String, credential_spec::CredentialSpec)>,
    pub keys: Vec<KeyConfig>,
    pub passthrough_unknown_keys: bool,
    pub ip_allow: Vec<IpNet>,
    pub ip_deny: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    pub defaults: Defaults,
    /// `field_aliases` (from → to), applied recursively to the request body.
    pub field_aliases: Vec<(String, String)>,
    pub models: Option<Vec<ModelEntry>>,
    pub models_cache_ttl: Duration,
    pub logging: LoggingConfig,
    pub limits: Limits,
    /// Tokio worker threads; `None` = one per core.
    pub workers: Option<usize>,
    /// `plugins:` in run order, after an implicit entry for the seed key `field_aliases` (listed
    /// for `/admin/status`; the rewrite phase does that renaming natively, not as a script).
    pub plugins: Vec<PluginConfig>,
    pub script_limits: crate::scripting::ScriptLimits,
    /// Bearer key for `/admin/*`; `None` = admin endpoints disabled.
    pub admin_key: Option<Secret>,
    /// Which client headers go upstream (`forward_headers`).
    pub forward_headers: forward_headers::ForwardHeaders,
    /// `store:`: shared state in Redis; `None` = everything in process.
    pub store: Option<store::StoreConfig>,
    /// `pricing:`: model globs → price per 1M tokens.
    pub pricing: crate::usage::pricing::Pricing,
    /// `otel:` trace export; `None` = tracing off (no span is built).
    pub otel: Option<OtelConfig>,
    /// `metrics:` (Prometheus `GET /metrics`).
    pub metrics: MetricsConfig,
    /// Non-fatal remarks `sophgate check` prints.
    pub warnings: Vec<String>,
    /// The CA certificate files (`api_ca_file`, `upstreams[].ca_file`), resolved: watched for
    /// changes like the config file, so a rotated CA takes effect without a restart.
    pub ca_files: Vec<PathBuf>,
    /// Where this config was read from, to locate problems found while building from it.
    pub locator: Locator,
}

/// `otel:`: where and how spans are exported (OTLP/HTTP protobuf).
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// Base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
    /// Share of new traces sampled (parent-based: a sampled parent's choice is kept).
    pub sample_ratio: f64,
    /// Export request headers (e.g. a collector's auth); values print as `***`.
    pub headers: Vec<(String, Secret)>,
}

/// `metrics:`: whether `GET /metrics` exists, who may scrape it, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Clients that may scrape without the admin key (default: loopback).
    pub allow: Vec<IpNet>,
    /// Serve `/metrics` only on this separate address (not on `listen`).
    pub listen: Option<SocketAddr>,
    /// Distinct `model` label values before the rest fold into `other`.
    pub max_models: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Scheme + authority (+ optional path prefix), without a trailing slash.
    pub api_host: String,
    /// Path for chat completions, e.g. `/api/open-apis/v1/chat/completions`.
    pub chat_path: String,
    /// Path other `/v1/<rest>` requests go under, e.g. `/api/open-apis/v1`.
    pub base_path: String,
    /// Egress proxy URL (http, https, socks5). Never logged: it may embed credentials.
    pub proxy: Option<Secret>,
    pub connect_timeout: Duration,
    /// Max concurrent upstream requests (the seed's `connection_limit`); 0 = unlimited.
    pub connection_limit: usize,
    /// The seed's `connection_limit_per_host`; 0 = unlimited.
    pub connection_limit_per_host: usize,
    pub keepalive_timeout: Duration,
    pub force_close: bool,
    /// DER certificates from `api_ca_file`, trusted for this upstream's TLS on top of the
    /// public roots.
    pub ca_certs: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub id: KeyId,
    /// A printable name for logs and scripts; the key's `name`, or a short hash label.
    pub label: String,
    /// The seed form's upstream key (`client: upstream-key`).
    pub upstream_key: Option<Secret>,
    /// Named credential used for every upstream this key reaches.
    pub credential: Option<String>,
    /// Pins the key to one upstream (bypassing `routes`).
    pub upstream: Option<String>,
    /// Model globs this key may use; empty = any.
    pub models: Vec<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub expires_at: Option<std::time::SystemTime>,
    /// Tokens or cost per calendar period.
    pub budget: Option<crate::usage::budget::Budget>,
}

/// Where a plugin's source comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginSource {
    File(PathBuf),
    /// Embedded in the binary (`plugins/<name>.rhai` of this repository).
    Bundled(String),
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// As written in the config (or `field_aliases` for the implicit one); names the plugin in
    /// errors and logs.
    pub name: String,
    pub source: PluginSource,
    pub params: serde_json::Value,
    /// Stands for the seed key `field_aliases:` rather than an entry under `plugins:`: never
    /// compiled or run as a script; the rewrite phase renames natively (the same renaming as
    /// plugins/field_aliases.rhai, without converting the body to script values).
    pub implicit: bool,
    /// Its position under `plugins:`; `None` for the implicit one.
    pub index: Option<usize>,
}

impl PluginConfig {
    /// Where it is configured: `plugins[i]`, or `field_aliases` for the implicit one.
    pub fn yaml_path(&self) -> Vec<Segment> {
        match self.index {
            Some(i) => vec![yaml_path::k("plugins"), Segment::Index(i)],
            None => vec![yaml_path::k("field_aliases")],
        }
    }
}

impl KeyConfig {
    /// A key with no policy (the seed form when `upstream_key` is set).
    pub fn new(id: KeyId, label: impl Into<String>, upstream_key: Option<Secret>) -> Self {
        KeyConfig {
            id,
            label: label.into(),
            upstream_key,
            credential: None,
            upstream: None,
            models: Vec::new(),
            rpm: None,
            tpm: None,
            max_concurrent: None,
            expires_at: None,
            budget: None,
        }
    }

    /// Whether the extended form set anything the policy stage enforces.
    pub fn has_policy(&self) -> bool {
        self.credential.is_some()
            || self.upstream.is_some()
            || !self.models.is_empty()
            || self.rpm.is_some()
            || self.tpm.is_some()
            || self.max_concurrent.is_some()
            || self.expires_at.is_some()
            || self.budget.is_some()
    }
}

/// How a client key is written in the config.
#[derive(Debug, Clone)]
pub enum KeyId {
    Plain(Secret),
    /// `sha256:<hex>`: the config holds only the digest.
    Sha256([u8; 32]),
}

/// A named upstream target (the flat seed keys define the one named `default`).
#[derive(Debug, Clone)]
pub struct UpstreamDef {
    pub name: String,
    /// Full URL for chat completions.
    pub chat_url: String,
    /// Other `/v1/<rest>` requests go to `base_url + "/" + rest`.
    pub base_url: String,
    pub models_url: String,
    pub credential: Option<String>,
    pub proxy: Option<Secret>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Option<Duration>,
    /// Max concurrent requests to this upstream; 0 = unlimited (extra requests wait).
    pub max_concurrent: usize,
    pub keepalive_timeout: Duration,
    /// Idle connections kept; `None` = the client's default.
    pub pool_max_idle: Option<usize>,
    /// DER certificates from `ca_file`, trusted on top of the public roots.
    pub ca_certs: Vec<Vec<u8>>,
}

impl UpstreamDef {
    /// Where it is configured: `upstreams.<name>`, or `api_host` for the one the flat keys
    /// define.
    pub fn yaml_path(&self) -> Vec<Segment> {
        if self.name == validate::DEFAULT_UPSTREAM {
            vec![yaml_path::k("api_host")]
        } else {
            vec![yaml_path::k("upstreams"), yaml_path::k(&self.name)]
        }
    }
}

/// `routes:` entry: requests whose model matches go to these upstreams, in order.
#[derive(Debug, Clone)]
pub struct RouteDef {
    pub models: Vec<String>,
    pub upstreams: Vec<String>,
    pub rename: Vec<(String, String)>,
    pub attempts: usize,
    pub backoff: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
}

impl Defaults {
    pub fn is_empty(&self) -> bool {
        self.model.is_none() && self.temperature.is_none() && self.max_tokens.is_none()
    }
}

#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub id: String,
    pub owned_by: String,
    pub created: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Daily,
    Hourly,
    Never,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// A tracing filter directive, e.g. `info`.
    pub level: String,
    pub format: LogFormat,
    pub file: Option<PathBuf>,
    pub rotation: Rotation,
    pub retention_days: usize,
    pub access_log: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    /// How long an HTTP/1.1 connection may sit idle between requests.
    pub keep_alive_timeout: Duration,
    /// How long a write to a client may stay blocked (the client reads nothing) before the
    /// connection is ended (nginx's `send_timeout`).
    pub send_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Config {
    /// Reads, expands and validates the file at `path` with the process environment.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let lookup = |name: &str| std::env::var(name).ok();
        let text = load::read_text(path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut cfg = Self::from_text_in(&text, &path.display().to_string(), &lookup, &base)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates YAML text (used by tests and the demo).
    pub fn from_yaml(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        Self::from_text_in(text, "<inline>", lookup, Path::new(""))
    }

    /// Schema errors and semantic errors are reported together, in file order.
    fn from_text_in(
        text: &str,
        file: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        base_dir: &Path,
    ) -> Result<Config, ConfigErrors> {
        let (raw, errors) = load::parse_raw_partial(text, file, lookup);
        let mut errors = ConfigErrors(errors);
        let Some(raw) = raw else {
            errors.sort();
            return Err(errors);
        };
        match validate::validate(raw, Locator::new(file, text), base_dir) {
            Ok(cfg) if errors.0.is_empty() => Ok(cfg),
            Ok(_) => {
                errors.sort();
                Err(errors)
            }
            Err(more) => {
                // A value the schema refused (or whose `${VAR}` is missing) was dropped or left
                // unexpanded: what validation then says about that place follows from it.
                let reported: Vec<String> = errors.0.iter().map(|e| e.path.clone()).collect();
                errors.0.extend(
                    more.0
                        .into_iter()
                        .filter(|e| !reported.iter().any(|p| schema_errors::is_under(&e.path, p))),
                );
                errors.sort();
                Err(errors)
            }
        }
    }

    /// An error at `path` of this config's file, for problems found while building from it.
    pub fn error_at(&self, path: &[Segment], message: impl Into<String>) -> ConfigError {
        self.locator.error(path, message)
    }
}
