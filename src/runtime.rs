//! The generation: one validated config plus everything derived from it (compiled ACL, key
//! table, upstream client, caches). Built fallibly, swapped in one step with `ArcSwap`; a
//! request loads the current generation once and uses it to its end.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::config::Config;
use crate::pipeline::auth::KeyTable;
use crate::pipeline::forward::Upstream;
use crate::pipeline::ip_acl::IpAcl;
use crate::pipeline::models::{static_list, ModelsCache};

#[derive(Debug)]
pub struct Generation {
    pub number: u64,
    pub loaded_at: SystemTime,
    pub config: Arc<Config>,
    pub acl: IpAcl,
    pub keys: KeyTable,
    pub upstream: Upstream,
    pub models_cache: ModelsCache,
    /// The static `models:` list, pre-rendered.
    pub static_models: Option<Bytes>,
}

impl Generation {
    /// Derives everything a request needs from `config`. Fails without side effects.
    pub fn build(config: Config, number: u64) -> Result<Generation, String> {
        let acl = IpAcl::new(&config.ip_allow, &config.ip_deny, &config.trusted_proxies);
        let keys = KeyTable::new(&config.keys, config.passthrough_unknown_keys)?;
        let upstream = Upstream::new(
            &config.upstream,
            config.limits.first_byte_timeout,
            config.limits.stream_idle_timeout,
        )?;
        let static_models = config.models.as_deref().map(static_list);
        Ok(Generation {
            number,
            loaded_at: SystemTime::now(),
            config: Arc::new(config),
            acl,
            keys,
            upstream,
            models_cache: ModelsCache::default(),
            static_models,
        })
    }
}

/// Holds the current generation and knows how to build the next one.
pub struct Runtime {
    current: ArcSwap<Generation>,
    next_number: AtomicU64,
    config_path: Option<PathBuf>,
    last_error: Mutex<Option<String>>,
}

impl Runtime {
    pub fn new(config: Config) -> Result<Arc<Runtime>, String> {
        let config_path = config.source.clone();
        let generation = Generation::build(config, 1)?;
        Ok(Arc::new(Runtime {
            current: ArcSwap::from_pointee(generation),
            next_number: AtomicU64::new(2),
            config_path,
            last_error: Mutex::new(None),
        }))
    }

    /// The generation a new request should use.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Re-reads the config file and swaps in a new generation. On any error the current
    /// generation keeps serving and the error is kept for status reporting.
    pub fn reload(&self) -> Result<u64, String> {
        let result = self.build_next();
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = result.as_ref().err().cloned();
        }
        match result {
            Ok(generation) => {
                let n = generation.number;
                self.current.store(Arc::new(generation));
                tracing::info!(generation = n, "configuration reloaded");
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; continuing with the previous configuration");
                Err(e)
            }
        }
    }

    fn build_next(&self) -> Result<Generation, String> {
        let path = self
            .config_path
            .as_ref()
            .ok_or_else(|| "this configuration has no file to reload".to_string())?;
        let config = Config::from_file(path).map_err(|e| e.to_string())?;
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        Generation::build(config, number)
    }
}
