//! Turns the raw schema into a [`Config`]: applies defaults, checks formats and ranges, and
//! collects every problem (with its YAML path and line) before failing. One module per
//! section of the file; [`validate`] runs them in order and assembles the result.

mod acl;
mod budgets;
mod credentials;
mod defaults;
mod forward_headers;
mod keys;
mod listen;
mod logging;
mod metrics;
mod otel;
mod plugins;
mod store;
mod upstreams;

#[cfg(test)]
mod tests;

use std::time::Duration;

use super::raw::RawConfig;
use super::yaml_path::Segment;
use super::{Config, ConfigError, ConfigErrors, Locator};

pub use super::yaml_path::key_label;
pub use acl::parse_net;
pub use keys::{hash_key, parse_key_id, parse_time};
pub use metrics::DEFAULT_MAX_MODELS;

pub const DEFAULT_API_HOST: &str = "https://www.sophnet.com";
pub const DEFAULT_CHAT_PATH: &str = "/api/open-apis/v1/chat/completions";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// The upstream the flat seed keys (`api_host`, `forward_chat_path`, …) define.
pub const DEFAULT_UPSTREAM: &str = "default";

/// Gathers the problems of one config, each located in its file.
struct Collector {
    locator: Locator,
    errors: Vec<ConfigError>,
    /// Non-fatal remarks for `sophgate check`.
    warnings: Vec<String>,
}

impl Collector {
    fn err(&mut self, path: &[Segment], message: impl Into<String>) {
        self.errors.push(self.locator.error(path, message));
    }

    /// An error whose displayed path differs from the one used to find its line (client keys
    /// are map keys; they are located but never printed).
    fn err_masked(&mut self, line_path: &[Segment], shown: &str, message: impl Into<String>) {
        self.errors
            .push(self.locator.error_masked(line_path, shown, message));
    }

    fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// A positive number of seconds up to a year; `default` when absent, and (with an error)
    /// when out of range.
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
}

pub fn validate(
    raw: RawConfig,
    locator: Locator,
    base_dir: &std::path::Path,
) -> Result<Config, ConfigErrors> {
    let mut c = Collector {
        locator,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let listen = listen::listen(&mut c, raw.listen);
    let mut ca_files = Vec::new();
    let upstream = upstreams::flat_upstream(
        &mut c,
        upstreams::FlatKeys {
            api_host: raw.api_host,
            forward_chat_path: raw.forward_chat_path,
            forward_base_path: raw.forward_base_path,
            proxy: raw.proxy,
            timeout: raw.timeout,
            keepalive_timeout: raw.keepalive_timeout,
            api_ca_file: raw.api_ca_file,
            connection_limit: raw.connection_limit,
            connection_limit_per_host: raw.connection_limit_per_host,
            force_close: raw.force_close,
        },
        &mut ca_files,
        base_dir,
    );
    let credentials::Credentials {
        names: credential_names,
        specs: credentials,
    } = credentials::credentials(&mut c, raw.credentials);
    let upstreams::Upstreams {
        defs: mut upstream_defs,
        broken: broken_upstreams,
    } = upstreams::upstreams(
        &mut c,
        &upstream,
        raw.upstreams,
        &credential_names,
        &mut ca_files,
        base_dir,
    );
    // Entries with errors of their own count as names: no second error where they are used.
    let upstream_names: Vec<String> = upstream_defs
        .iter()
        .map(|u| u.name.clone())
        .chain(broken_upstreams)
        .collect();
    let routes = upstreams::routes(&mut c, raw.routes, &upstream_names);
    let passthrough_unknown_keys = raw.passthrough_unknown_keys.unwrap_or(false);
    let pricing = budgets::pricing(&mut c, raw.pricing);
    let keys = keys::api_keys(
        &mut c,
        raw.api_keys,
        passthrough_unknown_keys,
        &keys::Known {
            credentials: &credential_names,
            upstreams: &upstream_names,
            priced: !pricing.is_empty(),
        },
    );
    let ip_allow = acl::nets(&mut c, "ip_whitelist", raw.ip_whitelist);
    let ip_deny = acl::nets(&mut c, "ip_blacklist", raw.ip_blacklist);
    let trusted_proxies = acl::nets(&mut c, "trusted_proxies", raw.trusted_proxies);
    let defaults = defaults::defaults(
        &mut c,
        raw.default_model,
        raw.default_temperature,
        raw.default_max_tokens,
    );
    let field_aliases = defaults::field_aliases(&mut c, raw.field_aliases);
    let models = defaults::models(&mut c, raw.models);
    let models_cache_ttl = defaults::models_cache_ttl(&mut c, raw.models_cache_ttl);
    listen::workers(&mut c, raw.workers);
    let (limits, script_limits) = listen::limits(&mut c, raw.limits);
    if let Some(d) = upstream_defs.first_mut() {
        d.first_byte_timeout = limits.first_byte_timeout;
        d.idle_timeout = limits.stream_idle_timeout;
    }
    let plugins = plugins::plugins(&mut c, &field_aliases, raw.plugins, base_dir);
    let admin_key = listen::admin_key(&mut c, raw.admin);
    let logging = logging::logging(&mut c, raw.log_level, raw.logging, base_dir);
    let forward_headers = forward_headers::forward_headers(&mut c, raw.forward_headers);
    let store = store::store(&mut c, raw.store, &mut ca_files, base_dir);
    let otel = otel::otel(&mut c, raw.otel);
    let metrics = metrics::metrics(&mut c, raw.metrics);

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        source: None,
        listen,
        upstream,
        upstreams: upstream_defs,
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
        forward_headers,
        store,
        pricing,
        otel,
        metrics,
        warnings: c.warnings,
        ca_files,
        locator: c.locator,
    })
}
