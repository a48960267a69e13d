//! The generation: one validated config plus everything derived from it (compiled ACL, key
//! table, upstream client, caches). Built fallibly, swapped in one step with `ArcSwap`; a
//! request loads the current generation once and uses it to its end.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::config::yaml_path::{k, Segment};
use crate::config::{BuildError, Config, ConfigError, PluginSource};
use crate::credentials::Credentials;
use crate::pipeline::auth::KeyTable;
use crate::pipeline::auth::Principal;
use crate::pipeline::forward::Upstream;
use crate::pipeline::ip_acl::IpAcl;
use crate::pipeline::models::static_list;
use crate::pipeline::routing::Route;
use crate::scripting::{PluginSpec, Plugins};

pub struct Generation {
    pub number: u64,
    pub loaded_at: SystemTime,
    pub config: Arc<Config>,
    pub acl: IpAcl,
    pub keys: KeyTable,
    /// The upstream the flat seed keys define.
    pub default_upstream: Arc<Upstream>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// `[default_upstream]`, shared by every request no route matches.
    pub default_plan: Arc<[Arc<Upstream>]>,
    pub routes: Vec<Route>,
    pub credentials: Credentials,
    /// The static `models:` list, pre-rendered.
    pub static_models: Option<Bytes>,
    /// Compiled plugins, shared by every request (and every stream) of this generation.
    pub plugins: Arc<Plugins>,
    /// What was loaded, for `GET /admin/status`: (name, file if any, sha256 of the source).
    pub plugin_sources: Vec<PluginSourceInfo>,
    /// sha256 of the config file's text, when loaded from a file.
    pub config_sha256: Option<String>,
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
            .field("upstreams", &self.upstreams.len())
            .field("routes", &self.routes.len())
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
            routes.push(Route {
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
        let (Ok(keys), Ok(credentials), Ok((plugins, plugin_sources)), Some(default_upstream)) =
            (keys, credentials, plugins, default_upstream)
        else {
            return Err(BuildError::config(errors));
        };
        if !errors.is_empty() {
            return Err(BuildError::config(errors));
        }
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
            default_plan: Arc::from([default_upstream.clone()]),
            default_upstream,
            upstreams,
            routes,
            credentials,
            static_models,
            plugins: Arc::new(plugins),
            plugin_sources,
            config_sha256,
        })
    }

    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name).cloned()
    }

    /// Every upstream a principal's requests can reach (for `/v1/models`).
    pub fn reachable_upstreams(&self, principal: &Principal) -> Vec<Arc<Upstream>> {
        if let Some(name) = principal
            .policy
            .as_ref()
            .and_then(|p| p.upstream.as_deref())
        {
            return self.upstream(name).into_iter().collect();
        }
        let mut out: Vec<Arc<Upstream>> = Vec::new();
        let candidates = self
            .routes
            .iter()
            .flat_map(|r| r.upstreams.iter())
            .chain(std::iter::once(&self.default_upstream));
        for up in candidates {
            if !out.iter().any(|u| u.name == up.name) {
                out.push(up.clone());
            }
        }
        out
    }
}

/// The outcome of the last reload attempt, for `GET /admin/status`.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub trigger: &'static str,
    /// `None` when it succeeded.
    pub error: Option<String>,
}

/// Holds the current generation and knows how to build the next one.
pub struct Runtime {
    current: ArcSwap<Generation>,
    next_number: AtomicU64,
    config_path: Option<PathBuf>,
    last_reload: Mutex<Option<ReloadRecord>>,
    /// One reload at a time (file watcher, SIGHUP and the admin endpoint may race).
    reload_lock: Mutex<()>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl Runtime {
    pub fn new(config: Config) -> Result<Arc<Runtime>, BuildError> {
        let config_path = config.source.clone();
        let generation = Generation::build(config, 1)?;
        Ok(Arc::new(Runtime {
            current: ArcSwap::from_pointee(generation),
            next_number: AtomicU64::new(2),
            config_path,
            last_reload: Mutex::new(None),
            reload_lock: Mutex::new(()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }))
    }

    /// The generation a new request should use.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config_path.as_ref()
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload.lock().ok().and_then(|e| e.clone())
    }

    /// The last reload's error, if the last reload failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_reload().and_then(|r| r.error)
    }

    /// Files whose change should trigger a reload: the config, every plugin file and every CA
    /// certificate file.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let generation = self.current();
        let mut files: Vec<PathBuf> = self.config_path.iter().cloned().collect();
        files.extend(
            generation
                .plugin_sources
                .iter()
                .filter_map(|p| p.file.clone()),
        );
        files.extend(generation.config.ca_files.iter().cloned());
        files
    }

    /// Re-reads the config file and its plugins and swaps in a new generation in one step.
    /// On any error the current generation keeps serving and the error is kept for status.
    pub fn reload(&self, trigger: &'static str) -> Result<u64, BuildError> {
        let _one_at_a_time = self.reload_lock.lock();
        let result = self.build_next();
        let record = ReloadRecord {
            at: SystemTime::now(),
            trigger,
            error: result.as_ref().err().map(ToString::to_string),
        };
        if let Ok(mut slot) = self.last_reload.lock() {
            *slot = Some(record);
        }
        match result {
            Ok(generation) => {
                let n = generation.number;
                let old = self.current();
                if old.config.listen != generation.config.listen
                    || old.config.workers != generation.config.workers
                {
                    tracing::warn!("listen / workers changed: they take effect after a restart");
                }
                self.current.store(Arc::new(generation));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(generation = n, trigger, "configuration reloaded");
                Ok(n)
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(trigger, error = %e, "reload failed; continuing with the previous configuration");
                Err(e)
            }
        }
    }

    /// [`Runtime::reload`] off the async workers (it reads files and compiles scripts).
    pub async fn reload_async(self: &Arc<Self>, trigger: &'static str) -> Result<u64, BuildError> {
        let rt = self.clone();
        tokio::task::spawn_blocking(move || rt.reload(trigger))
            .await
            .map_err(|e| BuildError::Interrupted(e.to_string()))?
    }

    fn build_next(&self) -> Result<Generation, BuildError> {
        let path = self.config_path.as_ref().ok_or(BuildError::NoConfigFile)?;
        let config = Config::from_file(path)?;
        let mut generation = Generation::build(config, 0)?;
        // Numbered only once built: failed attempts leave no gaps.
        generation.number = self.next_number.fetch_add(1, Ordering::Relaxed);
        Ok(generation)
    }
}
