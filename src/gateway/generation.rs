//! The generation: one validated config plus the tables the phases use, derived from it
//! (compiled ACL, key table, routes and upstream clients, credentials, plugins). Built
//! fallibly; [`crate::reload`] swaps it in whole. A request loads the current generation once
//! and uses it to its end. The phases take only the table they need, never the generation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::stages::auth::KeyTable;
use super::stages::ip_acl::IpAcl;
use super::stages::routing::{ModelRoute, RouteTable};
use super::upstream::forward::Upstream;
use super::upstream::models::static_list;
use crate::config::yaml_path::{k, Segment};
use crate::config::{BuildError, Config, ConfigError, PluginSource};
use crate::credentials::Credentials;
use crate::scripting::{PluginSpec, Plugins};

pub struct Generation {
    pub number: u64,
    pub loaded_at: SystemTime,
    pub config: Arc<Config>,
    pub acl: IpAcl,
    pub keys: KeyTable,
    /// Upstreams and routes (the default upstream is the one the flat seed keys define).
    pub routing: RouteTable,
    pub credentials: Credentials,
    /// The static `models:` list, pre-rendered.
    pub static_models: Option<Bytes>,
    /// Compiled plugins, shared by every request (and every stream) of this generation.
    pub plugins: Arc<Plugins>,
    /// What was loaded, for `GET /admin/status`: (name, file if any, sha256 of the source).
    pub plugin_sources: Vec<PluginSourceInfo>,
    /// sha256 of the config file's text, when loaded from a file.
    pub config_sha256: Option<String>,
    /// The shared store (`store:`), one per process while the section is unchanged.
    pub store: Option<Arc<crate::store::Store>>,
    /// The trace exporter (`otel:`); `None` = no spans.
    pub tracing: Option<Arc<crate::observe::trace::Tracing>>,
}

#[derive(Debug, Clone)]
pub struct PluginSourceInfo {
    pub name: String,
    pub file: Option<PathBuf>,
    pub sha256: String,
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads and compiles the config's plugins. Errors name the plugin's entry in the config
/// (`plugins[i]`, with its line) and, for a script error, the script's file, line and column.
fn load_plugins(config: &Config) -> Result<(Plugins, Vec<PluginSourceInfo>), Vec<ConfigError>> {
    let mut specs = Vec::with_capacity(config.plugins.len());
    let mut infos = Vec::with_capacity(config.plugins.len());
    let mut errors = Vec::new();
    for p in &config.plugins {
        if p.implicit {
            // Runs natively in the pipeline; listed so /admin/status shows what is active.
            infos.push(PluginSourceInfo {
                name: format!("{} (seed key, native)", p.name),
                file: None,
                sha256: sha256_hex(p.params.to_string().as_bytes()),
            });
            continue;
        }
        let (source, file) = match &p.source {
            PluginSource::File(path) => match std::fs::read_to_string(path) {
                Ok(s) => (s, Some(path.clone())),
                Err(e) => {
                    errors.push(config.error_at(
                        &p.yaml_path(),
                        format!("cannot read plugin file {}: {e}", path.display()),
                    ));
                    continue;
                }
            },
            PluginSource::Bundled(name) => match crate::scripting::bundled(name) {
                Some(s) => (s.to_owned(), None),
                None => {
                    errors.push(
                        config.error_at(&p.yaml_path(), format!("no bundled plugin named {name}")),
                    );
                    continue;
                }
            },
        };
        infos.push(PluginSourceInfo {
            name: p.name.clone(),
            file,
            sha256: sha256_hex(source.as_bytes()),
        });
        specs.push(PluginSpec {
            name: p.name.clone(),
            source,
            params: p.params.clone(),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let plugins = Plugins::compile(specs, config.script_limits).map_err(|errs| {
        errs.iter()
            .map(|e| {
                let entry = config
                    .plugins
                    .iter()
                    .find(|p| !p.implicit && p.name == e.plugin);
                let path = entry.map(|p| p.yaml_path()).unwrap_or_default();
                config.error_at(&path, e.to_string())
            })
            .collect::<Vec<_>>()
    })?;
    Ok((plugins, infos))
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("number", &self.number)
            .field("upstreams", &self.routing.upstreams.len())
            .field("routes", &self.routing.routes.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Generation {
    /// Derives everything a request needs from `config`. Fails without side effects, with
    /// every problem located in the config file. Validation has already rejected all that the
    /// config alone decides; what is left fails here only when run (an HTTP client, a script).
    pub fn build(config: Config, number: u64) -> Result<Generation, BuildError> {
        let mut errors: Vec<ConfigError> = Vec::new();
        let acl = IpAcl::new(&config.ip_allow, &config.ip_deny, &config.trusted_proxies);
        let keys = KeyTable::new(&config.keys, config.passthrough_unknown_keys)
            .map_err(|e| errors.push(config.error_at(&[], e)));
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for def in &config.upstreams {
            match Upstream::new(def) {
                Ok(u) => upstreams.push(Arc::new(u)),
                Err(e) => errors.push(config.error_at(&def.yaml_path(), e)),
            }
        }
        let by_name = |name: &str| upstreams.iter().find(|u| u.name == name).cloned();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let mut list = Vec::with_capacity(r.upstreams.len());
            for name in &r.upstreams {
                match by_name(name) {
                    Some(u) => list.push(u),
                    None => errors.push(config.error_at(
                        &[k("routes"), Segment::Index(i), k("upstreams")],
                        format!("no upstream named `{name}`"),
                    )),
                }
            }
            routes.push(ModelRoute {
                models: r.models.clone(),
                upstreams: Arc::from(list),
                rename: r.rename.clone(),
                attempts: r.attempts,
                backoff: r.backoff,
            });
        }
        let credentials = Credentials::build(config.credentials.clone()).map_err(|errs| {
            for e in errs {
                errors.push(config.error_at(&e.path(), e.message));
            }
        });
        let plugins = load_plugins(&config).map_err(|errs| errors.extend(errs));
        if config.upstreams.is_empty() {
            errors.push(config.error_at(&[], "no default upstream"));
        }
        let default_upstream = upstreams.first().cloned();
        let store = match config.store.as_ref().map(crate::store::Store::shared) {
            Some(Ok(store)) => store,
            Some(Err(e)) => {
                errors.push(config.error_at(&[k("store"), k("url")], e));
                None
            }
            None => None,
        };
        let (Ok(mut keys), Ok(credentials), Ok((plugins, plugin_sources)), Some(default_upstream)) =
            (keys, credentials, plugins, default_upstream)
        else {
            return Err(BuildError::config(errors));
        };
        if !errors.is_empty() {
            return Err(BuildError::config(errors));
        }
        if let Some(store) = &store {
            keys.share_limits(store);
            credentials.share_cooldowns(store);
        }
        // Last: nothing else can fail after the exporter's thread is started.
        let tracing = crate::observe::trace::Tracing::for_config(config.otel.as_ref())
            .map_err(|e| BuildError::config(vec![config.error_at(&[k("otel")], e)]))?;
        let static_models = config.models.as_deref().map(static_list);
        let config_sha256 = config
            .source
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| sha256_hex(&b));
        Ok(Generation {
            number,
            loaded_at: SystemTime::now(),
            config: Arc::new(config),
            acl,
            keys,
            routing: RouteTable::new(upstreams, routes, default_upstream),
            credentials,
            static_models,
            plugins: Arc::new(plugins),
            plugin_sources,
            config_sha256,
            store,
            tracing,
        })
    }
}
