//! Shared state in Redis (`store:`), so several replicas behind a load balancer enforce one
//! set of limits: per-key rpm/tpm and `max_concurrent` leases ([`admission`]), pool key
//! cool-downs ([`cooldown`]), usage and budget counters ([`usage`], written by
//! [`crate::usage::shared`]).
//!
//! A request waits on at most one round trip (its admission). What it leaves behind goes off
//! its path: its lease's release rides on its key's next admission, or the store's writer task
//! ([`writer`]) sends it; its tpm charge and usage go onto one bounded queue to the writer,
//! which sends whatever is due as one pipeline and renews the process's leases.
//!
//! Every call is bounded by `timeout_ms`; a call that fails or runs out of time counts in
//! [`store_errors_total`] and logs a warning at most every few seconds. What the request does
//! then (`on_error`) is its caller's choice. One [`Store`] serves the whole process: reloads
//! that keep the `store:` section keep its connection, leases and background tasks.

pub mod admission;
mod admit_queue;
mod admit_script;
pub mod cooldown;
pub mod usage;
pub mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use crate::config::store::{redacted_url, OnStoreError, StoreConfig};

/// How often a store failure may be logged (the rest are counted).
const WARN_EVERY_MS: u64 = 10_000;

static ERRORS: AtomicU64 = AtomicU64::new(0);
static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);
/// Whether the last store call failed, so that recovery is logged once.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Store calls that failed or timed out since the process started.
pub fn store_errors_total() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

/// What a store call is for: its name in the store's warnings and its `call` label on
/// `sophgate_store_call_duration_seconds` ([`crate::observe::store_calls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Admit,
    AdmitBatch,
    RenewLeases,
    Write,
    ChargeTokens,
    ShareCooldown,
    ReadCooldowns,
    WriteUsage,
    ReadUsageStart,
    ReadUsageKeys,
    ReadUsage,
    AddBudget,
    ReadPeriodUsage,
    ReadBudget,
    Ping,
}

impl Call {
    pub const ALL: [Call; 15] = [
        Call::Admit,
        Call::AdmitBatch,
        Call::RenewLeases,
        Call::Write,
        Call::ChargeTokens,
        Call::ShareCooldown,
        Call::ReadCooldowns,
        Call::WriteUsage,
        Call::ReadUsageStart,
        Call::ReadUsageKeys,
        Call::ReadUsage,
        Call::AddBudget,
        Call::ReadPeriodUsage,
        Call::ReadBudget,
        Call::Ping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Call::Admit => "admit",
            Call::AdmitBatch => "admit_batch",
            Call::RenewLeases => "renew_leases",
            Call::Write => "write",
            Call::ChargeTokens => "charge_tokens",
            Call::ShareCooldown => "share_cooldown",
            Call::ReadCooldowns => "read_cooldowns",
            Call::WriteUsage => "write_usage",
            Call::ReadUsageStart => "read_usage_start",
            Call::ReadUsageKeys => "read_usage_keys",
            Call::ReadUsage => "read_usage",
            Call::AddBudget => "add_budget",
            Call::ReadPeriodUsage => "read_period_usage",
            Call::ReadBudget => "read_budget",
            Call::Ping => "ping",
        }
    }
}

/// Why a store call gave no answer. Carries no URL and no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    Timeout,
    /// Redis refused the connection: nothing of the call was sent.
    Refused,
    /// The connection was lost with the call in flight: Redis may or may not have run it.
    Lost,
    Redis(String),
    /// An answer of an unexpected shape.
    Protocol,
    /// A write queued off the request path was dropped: the queue to the store was full.
    Backlog,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Timeout => write!(f, "no answer within timeout_ms"),
            StoreError::Refused => write!(f, "connection refused, nothing sent"),
            StoreError::Lost => write!(f, "connection lost before the answer"),
            StoreError::Redis(e) => write!(f, "{e}"),
            StoreError::Protocol => write!(f, "unexpected answer"),
            StoreError::Backlog => write!(f, "write queue full, write dropped"),
        }
    }
}

pub struct Store {
    config: StoreConfig,
    conn: ConnectionManager,
    /// This process's leases, renewed together by one task ([`admission`]).
    leases: admission::LeaseBook,
    /// Pools whose cool-downs are mirrored from the store ([`cooldown`]).
    pools: Mutex<Vec<cooldown::Watched>>,
    /// The queue to the writer task ([`writer`]).
    writes: mpsc::Sender<writer::Write>,
    /// What the queue had no room for, kept for the writer's next batch.
    overflow: Mutex<writer::Overflow>,
    /// Set while the writer holds only writes due later than [`writer::LINGER`]: a prompt
    /// write then wakes it through `hurry`.
    writer_lazy: AtomicBool,
    hurry: tokio::sync::Notify,
    /// The lease TTL in ms (written into admission scripts, an argument of the renewal).
    lease_ttl_ms: u64,
    /// Whether the process's usage (and so its budgets) is kept in this store, so that the
    /// admission script may check budgets ([`Store::keeps_usage`]).
    keeps_usage: AtomicBool,
    /// Uses the writer keeps for a later batch (Redis refused them, or their batch was never
    /// answered), for `GET /admin/status`.
    usage_kept: AtomicUsize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &redacted_url(self.config.url.expose()))
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

/// The process's stores by config, so a reload that keeps `store:` keeps its connection.
static STORES: Mutex<Option<HashMap<String, Weak<Store>>>> = Mutex::new(None);

impl Store {
    /// The process's store for `config`: the running one when the section is unchanged, else a
    /// new one (its connection opens lazily and reconnects on its own). `Ok(None)` outside a
    /// tokio runtime (`sophgate check` validates without connecting). The error names no URL.
    pub fn shared(config: &StoreConfig) -> Result<Option<Arc<Store>>, String> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(None);
        }
        let id = format!(
            "{}\u{1f}{}\u{1f}{:?}\u{1f}{:?}\u{1f}{:?}\u{1f}{:?}",
            config.url.expose(),
            config.prefix,
            config.timeout,
            config.on_error,
            config.lease_ttl,
            config.ca_pem
        );
        let mut guard = STORES.lock().map_err(|_| "store registry poisoned")?;
        let map = guard.get_or_insert_with(HashMap::new);
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(store) = map.get(&id).and_then(Weak::upgrade) {
            return Ok(Some(store));
        }
        let (store, writes) = Store::connect(config.clone())?;
        let store = Arc::new(store);
        map.insert(id, Arc::downgrade(&store));
        writer::spawn(&store, writes);
        cooldown::spawn_poll(&store);
        tracing::info!(url = %redacted_url(config.url.expose()), prefix = %config.prefix, "shared state in Redis");
        Ok(Some(store))
    }

    fn connect(config: StoreConfig) -> Result<(Store, mpsc::Receiver<writer::Write>), String> {
        let unusable = |e: redis::RedisError| {
            format!("store.url is not a usable Redis URL ({})", e.category())
        };
        // Every admission is a small write awaited on the request path: Nagle's algorithm would
        // hold one written while an earlier write (another admission, the writer's pipeline)
        // is unacknowledged until Redis answers that one.
        let info = redis::IntoConnectionInfo::into_connection_info(config.url.expose())
            .map_err(unusable)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = match &config.ca_pem {
            // A private CA's roots instead of the built-in web roots.
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(unusable)?;
        // No response timeout of the client's own: every call is bounded by `call_within`,
        // and a second timer per call would only cost the request path.
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(config.timeout.max(Duration::from_secs(1))))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("store: cannot set up the Redis client ({})", e.category()))?;
        let (writes, queued) = mpsc::channel(writer::QUEUE);
        let ttl_ms = u64::try_from(config.lease_ttl.as_millis()).unwrap_or(30_000);
        let store = Store {
            config,
            conn,
            leases: admission::LeaseBook::default(),
            pools: Mutex::new(Vec::new()),
            writes,
            overflow: Mutex::new(writer::Overflow::default()),
            writer_lazy: AtomicBool::new(false),
            hurry: tokio::sync::Notify::new(),
            lease_ttl_ms: ttl_ms,
            keeps_usage: AtomicBool::new(false),
            usage_kept: AtomicUsize::new(0),
        };
        Ok((store, queued))
    }

    /// Hands a write to the writer task, off the request path. A full queue keeps what
    /// [`writer::Overflow`] can hold beside it and drops the rest, counted as store errors.
    pub(crate) fn queue(&self, write: writer::Write) {
        let prompt = write.is_prompt();
        let kept = match self.writes.try_send(write) {
            Ok(()) => {
                if prompt {
                    self.hurry_writer();
                }
                true
            }
            // The writer is behind: a lease release or usage waits beside the queue for its
            // next batch rather than being lost (a lost release holds its slot until the TTL).
            Err(mpsc::error::TrySendError::Full(write)) => {
                self.hurry.notify_one();
                self.overflow
                    .lock()
                    .is_ok_and(|mut overflow| overflow.keep(write))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if !kept {
            note_dropped("queue store write");
        }
    }

    /// Wakes the writer if it sleeps holding only writes due later than [`writer::LINGER`].
    fn hurry_writer(&self) {
        if self.writer_lazy.load(Ordering::Relaxed) {
            self.hurry.notify_one();
        }
    }

    /// Waits, at most `within`, until every write queued so far (and every release not sent
    /// yet) has been sent: a graceful shutdown calls it after the last request ended, so no
    /// release or usage is lost; `GET /admin/usage` calls it so the replica's own use shows.
    pub async fn flush(&self, within: Duration) {
        let (done, sent) = tokio::sync::oneshot::channel();
        let flushed = async {
            if self.writes.send(writer::Write::Flush(done)).await.is_ok() {
                self.hurry_writer();
                let _ = sent.await;
            }
        };
        if tokio::time::timeout(within, flushed).await.is_err() {
            tracing::warn!(
                "store: queued writes not sent within {} ms of shutdown",
                within.as_millis()
            );
        }
    }

    /// Whether the process's usage is kept in this store (set by
    /// [`crate::usage::shared::follow_store`]): only then do its budget counters in Redis
    /// hold every request's spend, and admission may check budgets there.
    pub fn keeps_usage(&self) -> bool {
        self.keeps_usage.load(Ordering::Relaxed)
    }

    pub(crate) fn set_keeps_usage(&self, keeps: bool) {
        self.keeps_usage.store(keeps, Ordering::Relaxed);
    }

    /// For `GET /admin/status`: the URL redacted, the settings, the error count, live leases.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "url": redacted_url(self.config.url.expose()),
            "prefix": self.config.prefix,
            "timeout_ms": self.config.timeout.as_millis() as u64,
            "on_error": match self.config.on_error {
                OnStoreError::Allow => "allow",
                OnStoreError::Deny => "deny",
            },
            "lease_ttl_ms": self.config.lease_ttl.as_millis() as u64,
            "errors_total": store_errors_total(),
            "live_leases": self.leases.len(),
            "usage_unsent": self.usage_kept.load(Ordering::Relaxed),
        })
    }

    /// One `PING`: the round trip alone (benchmarks and health checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.call(Call::Ping, |mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(drop)
    }

    pub fn on_error(&self) -> OnStoreError {
        self.config.on_error
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// A key under the configured prefix.
    pub fn key(&self, kind: &str, name: &str) -> String {
        let mut k = String::with_capacity(self.config.prefix.len() + kind.len() + name.len() + 1);
        k.push_str(&self.config.prefix);
        k.push_str(kind);
        k.push(':');
        k.push_str(name);
        k
    }

    /// Runs one store call under `timeout_ms`; failures are counted and (rate-limited) logged,
    /// and every call's time, answered or not, goes to its histogram.
    async fn call<T, F>(
        &self,
        what: Call,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(what, self.config.timeout, f).await
    }

    /// [`call`](Self::call) bounded by `within` instead of `timeout_ms` (the writer's calls,
    /// which no request waits on).
    async fn call_within<T, F>(
        &self,
        what: Call,
        within: Duration,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(within, f(self.conn.clone())).await;
        crate::observe::store_calls::observe(what, started.elapsed());
        let result = match outcome {
            Ok(Ok(v)) => {
                if FAILING.load(Ordering::Relaxed) && FAILING.swap(false, Ordering::Relaxed) {
                    tracing::info!(call = what.name(), "shared store answers again");
                }
                return Ok(v);
            }
            Ok(Err(e)) if e.is_connection_refusal() => StoreError::Refused,
            Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => StoreError::Lost,
            Ok(Err(e)) => StoreError::Redis(redis_error_text(&e)),
            Err(_) => StoreError::Timeout,
        };
        note_error(what.name(), &result);
        Err(result)
    }
}

/// A Redis error without the URL (redis errors can name the address, never the password; the
/// kind and the server's code are enough to act on).
fn redis_error_text(e: &redis::RedisError) -> String {
    match e.code() {
        Some(code) => format!("{} ({code})", e.category()),
        None => e.category().to_owned(),
    }
}

/// Counts (and, rate-limited, logs) a store write that was dropped before it was sent.
pub fn note_dropped(what: &'static str) {
    note_error(what, &StoreError::Backlog);
}

fn note_error(what: impl std::fmt::Display, e: &StoreError) {
    FAILING.store(true, Ordering::Relaxed);
    let total = ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
    let now = now_ms();
    let last = LAST_WARN_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= WARN_EVERY_MS
        && LAST_WARN_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            call = %what,
            error = %e,
            store_errors_total = total,
            "shared store unavailable; on_error decides (logged at most every 10 s)"
        );
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs a store call off the request path (release a lease, charge tokens).
fn spawn_detached<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(fut);
    }
}

#[cfg(test)]
mod tests;
