//! The live generation and its replacement: an `ArcSwap` cell holding the current
//! [`Generation`], and [`Runtime::reload`], which builds the next one whole and swaps it in
//! (or keeps the old one and records why not). What triggers a reload: the file watch
//! ([`watch`]), SIGHUP ([`on_sighup`]), and `POST /admin/reload` (the admin endpoint calls
//! [`Runtime::reload_async`]).

pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{BuildError, Config};
use crate::gateway::generation::Generation;
use crate::observe::metrics;

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
        crate::usage::shared::follow_store(generation.store.as_ref());
        metrics::generation_serving(generation.number, generation.config.metrics.max_models);
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
                crate::usage::shared::follow_store(generation.store.as_ref());
                metrics::generation_serving(n, generation.config.metrics.max_models);
                self.current.store(Arc::new(generation));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                metrics::reload_result(true);
                tracing::info!(generation = n, trigger, "configuration reloaded");
                Ok(n)
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                metrics::reload_result(false);
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

/// Reloads on every SIGHUP, in the background (a no-op where there are no Unix signals).
pub fn on_sighup(runtime: Arc<Runtime>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = runtime.reload_async("sighup").await;
                }
            });
        }
    }
    #[cfg(not(unix))]
    let _ = runtime;
}
