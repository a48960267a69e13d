//! Configuration: the raw YAML schema (`raw`), `${VAR}` expansion (`env`), reading with error
//! collection (`load`) and validation into the typed [`Config`] the runtime is built from
//! (`validate`).

pub mod env;
pub mod load;
pub mod raw;
pub mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::secret::Secret;

/// One problem in a config file, located as precisely as possible.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    /// YAML path such as `limits.max_body_bytes` or `ip_whitelist[2]`; empty for the whole file.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one config, reported together.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A validated configuration. Everything here has its default applied and its format checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, if any (the demo's config is built in).
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub upstream: UpstreamConfig,
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
    /// Non-fatal remarks `sophgate check` prints.
    pub warnings: Vec<String>,
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
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub client_key: Secret,
    /// A printable name for logs; never derived in a way that reveals the key.
    pub label: String,
    pub upstream_key: Secret,
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
    pub first_byte_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Config {
    /// Reads, expands and validates the file at `path` with the process environment.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let lookup = |name: &str| std::env::var(name).ok();
        let text = load::read_text(path)?;
        let mut cfg = Self::from_text(&text, &path.display().to_string(), &lookup)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates YAML text (used by tests and the demo).
    pub fn from_yaml(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        Self::from_text(text, "<inline>", lookup)
    }

    /// Schema errors and semantic errors are reported together.
    fn from_text(
        text: &str,
        file: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let (raw, mut errors) = load::parse_raw_partial(text, file, lookup);
        let Some(raw) = raw else {
            return Err(ConfigErrors(errors));
        };
        match validate::validate(raw, file, text) {
            Ok(cfg) if errors.is_empty() => Ok(cfg),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(more) => {
                errors.extend(more.0);
                Err(ConfigErrors(errors))
            }
        }
    }
}
