//! The config file as written: serde types that mirror the YAML one to one.
//!
//! Every field is optional (the Python forwarder's files set some keys to `null`), and every
//! struct denies unknown fields so a typo such as `ip_whitelst` is an error, not a silently
//! disabled check. Meaning and defaults are applied in `validate.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    // --- keys of the Python forwarder (same names, same meaning) ---
    pub api_host: Option<String>,
    pub forward_chat_path: Option<String>,
    /// Values are a string (seed form) or a policy map; kept as YAML here so errors inside a
    /// policy can be reported without echoing the client key (which is the map key).
    pub api_keys: Option<BTreeMap<String, serde_yaml::Value>>,
    pub ip_whitelist: Option<Vec<String>>,
    pub ip_blacklist: Option<Vec<String>>,
    pub proxy: Option<String>,
    pub timeout: Option<f64>,
    pub default_model: Option<String>,
    pub default_temperature: Option<f64>,
    pub default_max_tokens: Option<u64>,
    pub models_cache_ttl: Option<f64>,
    pub log_level: Option<String>,
    pub connection_limit: Option<u64>,
    pub connection_limit_per_host: Option<u64>,
    pub keepalive_timeout: Option<f64>,
    pub force_close: Option<bool>,
    pub workers: Option<usize>,
    pub field_aliases: Option<BTreeMap<String, String>>,

    // --- sophgate additions ---
    pub listen: Option<String>,
    pub forward_base_path: Option<String>,
    /// PEM file of CA certificates the `api_host` upstream's TLS certificate may chain to,
    /// trusted on top of the public roots (a private CA).
    pub api_ca_file: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub passthrough_unknown_keys: Option<bool>,
    pub models: Option<Vec<RawModel>>,
    pub limits: Option<RawLimits>,
    pub logging: Option<RawLogging>,
    /// Named upstream credentials (see `raw_credentials`); YAML here, typed per entry.
    pub credentials: Option<BTreeMap<String, serde_yaml::Value>>,
    /// Named upstreams; YAML here, typed per entry (an entry with errors still has a name).
    pub upstreams: Option<BTreeMap<String, serde_yaml::Value>>,
    pub routes: Option<Vec<RawRoute>>,
    pub plugins: Option<Vec<RawPlugin>>,
    pub admin: Option<RawAdmin>,
    pub forward_headers: Option<RawForwardHeaders>,
    pub store: Option<RawStore>,
    /// Model globs → price per 1M tokens, for cost budgets.
    pub pricing: Option<BTreeMap<String, RawPrice>>,
    pub otel: Option<RawOtel>,
    pub metrics: Option<RawMetrics>,
}

/// `store:`: shared state (limits, leases, cool-downs, usage) in Redis, for several replicas.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `redis://`, `rediss://` or `redis+unix://`; may hold a password (`${VAR}` it).
    pub url: Option<String>,
    pub prefix: Option<String>,
    pub timeout_ms: Option<u64>,
    pub on_error: Option<String>,
    /// How long a `max_concurrent` lease lives unless its replica renews it.
    pub lease_ttl_ms: Option<u64>,
    /// PEM CA certificates a `rediss://` server's certificate must chain to (instead of the
    /// built-in web roots): a private CA.
    pub ca_file: Option<String>,
}

/// A `pricing:` entry: price per 1M input and output tokens, any currency.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub output: f64,
}

/// A key's `budget:`: one of `tokens` or `cost`, per `period` (`day`, `week`, `month`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub tokens: Option<u64>,
    pub cost: Option<f64>,
    pub period: Option<String>,
}

/// `otel:`: OpenTelemetry trace export over OTLP/HTTP (absent = off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtel {
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
    /// Sent with every export; values may hold secrets (`${VAR}`).
    pub headers: Option<BTreeMap<String, String>>,
}

/// `metrics:`: the Prometheus `GET /metrics` endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    /// Who may scrape without the admin key: IPs or CIDRs.
    pub allow: Option<Vec<String>>,
    /// A separate `address:port` serving only `/metrics`.
    pub listen: Option<String>,
    pub max_models: Option<usize>,
}

/// `forward_headers:`: client header names (or `prefix*`) to drop, or to forward after all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardHeaders {
    pub drop: Option<Vec<String>>,
    pub keep: Option<Vec<String>>,
}

/// `plugins:` entry: a Rhai file and its parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub path: String,
    pub params: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Bearer key for `/admin/*`; absent = the admin endpoints answer 404.
    pub key: Option<String>,
}

/// `limits.scripts`: the plugin sandbox.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScriptLimits {
    pub max_operations: Option<u64>,
    pub max_call_levels: Option<usize>,
    pub max_expr_depth: Option<usize>,
    pub max_function_expr_depth: Option<usize>,
    pub max_string_size: Option<usize>,
    pub max_array_size: Option<usize>,
    pub max_map_size: Option<usize>,
    /// Milliseconds per plugin per hook call.
    pub max_wall_time_ms: Option<u64>,
}

/// The extended form of a value under `api_keys:` (the seed form is a plain string).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyPolicy {
    pub name: Option<String>,
    pub credential: Option<String>,
    pub upstream: Option<String>,
    pub models: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u32>,
    /// RFC 3339 time (`2027-01-31T00:00:00Z`), a date (`2027-01-31`), or Unix seconds.
    pub expires_at: Option<serde_yaml::Value>,
    pub budget: Option<RawBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub base_url: String,
    pub chat_path: Option<String>,
    pub models_path: Option<String>,
    pub credential: Option<String>,
    pub proxy: Option<String>,
    /// As the flat `api_ca_file`, for this upstream.
    pub ca_file: Option<String>,
    pub timeouts: Option<RawTimeouts>,
    pub max_concurrent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<f64>,
    pub first_byte: Option<f64>,
    pub idle: Option<f64>,
    pub total: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub models: Vec<String>,
    pub upstreams: Vec<String>,
    /// Client model name → upstream model name.
    pub rename: Option<BTreeMap<String, String>>,
    /// Upper bound on upstream attempts for one request (default: one per listed upstream).
    pub attempts: Option<u32>,
    /// Base backoff between attempts, seconds (default 0.05; doubled per attempt, jittered).
    pub backoff: Option<f64>,
}

/// An entry of the static `models:` list: a bare id, or an object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawModel {
    Id(String),
    Full(RawModelObject),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelObject {
    pub id: String,
    pub owned_by: Option<String>,
    pub created: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout: Option<f64>,
    pub keep_alive_timeout: Option<f64>,
    pub send_timeout: Option<f64>,
    pub first_byte_timeout: Option<f64>,
    pub stream_idle_timeout: Option<f64>,
    pub shutdown_grace: Option<f64>,
    pub scripts: Option<RawScriptLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub format: Option<String>,
    pub file: Option<String>,
    pub rotation: Option<String>,
    pub retention_days: Option<usize>,
    pub access_log: Option<bool>,
}
