//! The usage backend over the shared store (`store:`): every replica adds to the same
//! counters in Redis and reads them back, so `GET /admin/usage` and budgets answer for the
//! whole fleet and survive restarts.
//!
//! Recording never waits on Redis: each charge goes into the in-process ledger (the local
//! record and the fallback) and onto the store's writer queue ([`crate::store::writer`]),
//! which sends whatever is queued in one pipelined round trip, the counts of one key, model
//! and period added together. A full queue drops the write and counts it as a store error.
//! With this backend installed, a budgeted key with shared limits is checked inside its
//! admission script ([`crate::store::admission`]). Reads (`/admin/usage`, other budget checks) ask Redis within
//! `timeout_ms`; when it does not answer, `on_error: allow` answers from the ledger (this
//! replica's own counts) and `deny` reports the store unavailable.
//!
//! The process's backend follows its generation's store only once [`follow_stores`] was
//! called (the `serve` command does), so an embedder running several gateways in one process
//! (the tests) keeps the in-process ledger unless it asks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::backend::{
    install, ledger, Charge, Counts, PeriodUse, Totals, Unavailable, UsageBackend,
};
use super::ledger::Ledger;
use super::period::Period;
use crate::config::store::OnStoreError;
use crate::store::usage::{UsageRow, UsageWrite};
use crate::store::writer::Write;
use crate::store::Store;
use futures_util::future::BoxFuture;

/// A [`UsageBackend`] over the shared store, recording into the process's ledger too.
pub struct SharedUsage {
    store: Arc<Store>,
    ledger: Arc<Ledger>,
}

impl std::fmt::Debug for SharedUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedUsage")
            .field("store", &self.store)
            .finish()
    }
}

impl SharedUsage {
    /// A backend over `store` (whose writer sends the counts); `None` outside a tokio
    /// runtime.
    pub fn new(store: Arc<Store>, ledger: Arc<Ledger>) -> Option<SharedUsage> {
        tokio::runtime::Handle::try_current().ok()?;
        Some(SharedUsage { store, ledger })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The store's name for the period holding `at`: its kind and start, e.g. `day-1796169600`.
pub fn period_id(period: Period, at: SystemTime) -> String {
    format!("{}-{}", period.name(), period.bounds(unix(at)).0)
}

fn counts(row: &UsageRow) -> Counts {
    Counts {
        requests: row.requests,
        input_tokens: row.input_tokens,
        output_tokens: row.output_tokens,
        errors: row.errors,
        rate_limited: row.rate_limited,
    }
}

impl UsageBackend for SharedUsage {
    fn record(&self, charge: &Charge<'_>) {
        self.ledger.record(charge);
        let d = &charge.delta;
        let write = UsageWrite {
            key: charge.key.to_owned(),
            // Model names come from clients: the ledger's bound applies in the store too.
            model: self
                .ledger
                .counted_model(charge.key, charge.model)
                .to_owned(),
            requests: d.requests,
            input_tokens: d.input_tokens,
            output_tokens: d.output_tokens,
            errors: d.errors,
            rate_limited: d.rate_limited,
            cost: d.cost,
            period_id: charge.period.map(|p| period_id(p, charge.at)),
        };
        self.store.queue(Write::Usage(write));
    }

    fn period_use<'a>(
        &'a self,
        key: &'a str,
        period: Period,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<PeriodUse, Unavailable>> {
        Box::pin(async move {
            match self.store.period_usage(key, &period_id(period, now)).await {
                Ok(used) => Ok(PeriodUse {
                    tokens: used.tokens,
                    cost: used.cost,
                    models: used
                        .models
                        .iter()
                        .map(|r| (r.model.clone(), counts(r)))
                        .collect(),
                }),
                Err(e) => match self.store.on_error() {
                    OnStoreError::Allow => Ok(self.ledger.period_use_now(key, period, now)),
                    OnStoreError::Deny => Err(Unavailable(e.to_string())),
                },
            }
        })
    }

    fn totals(&self) -> BoxFuture<'_, Result<Totals, Unavailable>> {
        Box::pin(async move {
            // This replica's usage the writer still holds (up to its USAGE_LINGER) is counted.
            self.store.flush(self.store.timeout()).await;
            let read = async {
                let rows = self.store.usage_snapshot().await?;
                let since = self.store.usage_since().await?;
                Ok::<_, crate::store::StoreError>((rows, since))
            };
            match read.await {
                Ok((rows, since)) => {
                    let mut keys: BTreeMap<String, BTreeMap<String, Counts>> = BTreeMap::new();
                    for row in &rows {
                        keys.entry(row.key.clone())
                            .or_default()
                            .insert(row.model.clone(), counts(row));
                    }
                    Ok(Totals {
                        since: since.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
                        keys,
                    })
                }
                Err(e) => match self.store.on_error() {
                    OnStoreError::Allow => Ok(self.ledger.totals_now()),
                    OnStoreError::Deny => Err(Unavailable(e.to_string())),
                },
            }
        })
    }
}

/// Whether the process's backend follows its generation's store ([`follow_stores`]).
static FOLLOW: AtomicBool = AtomicBool::new(false);
/// The installed shared backend, if any, to tell whether a new generation changes its store.
static CURRENT: Mutex<Option<Arc<SharedUsage>>> = Mutex::new(None);

/// From now on [`follow_store`] installs the backend for each generation's store. The `serve`
/// command calls this once, before building its first generation.
pub fn follow_stores() {
    FOLLOW.store(true, Ordering::Relaxed);
}

/// Puts the process's usage where the generation going live keeps it: over `store` when set
/// (the running backend when it is the same store), else the in-process ledger. Both record
/// into the one ledger, so switching loses no local count. A no-op until [`follow_stores`].
pub fn follow_store(store: Option<&Arc<Store>>) {
    if !FOLLOW.load(Ordering::Relaxed) {
        return;
    }
    let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    match store {
        Some(store) => {
            if current
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c.store(), store))
            {
                return;
            }
            if let Some(shared) = SharedUsage::new(Arc::clone(store), ledger()) {
                let shared = Arc::new(shared);
                if let Some(previous) = current.as_ref() {
                    previous.store().set_keeps_usage(false);
                }
                store.set_keeps_usage(true);
                install(Arc::clone(&shared) as Arc<dyn UsageBackend>);
                *current = Some(shared);
                tracing::info!("usage and budgets are kept in the shared store");
            }
        }
        None => {
            if let Some(previous) = current.take() {
                previous.store().set_keeps_usage(false);
                install(ledger());
                tracing::info!("usage and budgets are kept in this process");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::store::StoreConfig;
    use crate::secret::Secret;
    use crate::usage::backend::Delta;
    use testkit::redis_server::RedisServer;

    fn backend(url: &str, prefix: &str, on_error: OnStoreError) -> (SharedUsage, Arc<Ledger>) {
        let store = Store::shared(&StoreConfig {
            url: Secret::new(url),
            prefix: prefix.into(),
            timeout: Duration::from_millis(200),
            on_error,
            lease_ttl: Duration::from_millis(1500),
            ca_pem: None,
        })
        .unwrap()
        .unwrap();
        let ledger = Arc::new(Ledger::new());
        (
            SharedUsage::new(store, Arc::clone(&ledger)).unwrap(),
            ledger,
        )
    }

    fn charge(key: &str, tokens: u64) -> Charge<'_> {
        Charge {
            key,
            model: "m",
            delta: Delta {
                requests: 1,
                input_tokens: tokens,
                output_tokens: 1,
                rate_limited: 1,
                ..Delta::default()
            },
            period: Some(Period::Day),
            at: SystemTime::now(),
        }
    }

    /// Polls `b`'s period use of `key` until it reaches `tokens` (writes are off the path).
    async fn period_reaches(b: &SharedUsage, key: &str, tokens: u64) -> PeriodUse {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let used = b
                .period_use(key, Period::Day, SystemTime::now())
                .await
                .unwrap();
            if used.tokens >= tokens || std::time::Instant::now() > deadline {
                return used;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn two_backends_on_one_store_see_each_others_use() {
        let redis = RedisServer::start();
        let (a, a_ledger) = backend(&redis.url(), "su1:", OnStoreError::Deny);
        let (b, _) = backend(&redis.url(), "su1:", OnStoreError::Deny);
        a.record(&charge("k", 10));
        b.record(&charge("k", 20));
        let used = period_reaches(&a, "k", 32).await;
        assert_eq!(used.tokens, 32);
        assert_eq!(used.models["m"].requests, 2);
        assert_eq!(used.models["m"].rate_limited, 2);
        let totals = b.totals().await.unwrap();
        assert_eq!(totals.keys["k"]["m"].input_tokens, 30);
        assert!(totals.since.is_some());
        // The local ledger keeps only this backend's own record.
        assert_eq!(a_ledger.totals_now().keys["k"]["m"].input_tokens, 10);
    }

    #[tokio::test]
    async fn a_down_store_answers_from_the_ledger_or_refuses() {
        let mut redis = RedisServer::start();
        let (allow, _) = backend(&redis.url(), "su2:", OnStoreError::Allow);
        let (deny, _) = backend(&redis.url(), "su2:", OnStoreError::Deny);
        allow.record(&charge("k", 10));
        assert_eq!(period_reaches(&deny, "k", 11).await.tokens, 11);
        redis.stop();
        let before = crate::store::store_errors_total();
        allow.record(&charge("k", 5));
        let used = allow
            .period_use("k", Period::Day, SystemTime::now())
            .await
            .unwrap();
        assert_eq!(used.tokens, 17, "this process's own counts");
        assert_eq!(allow.totals().await.unwrap().keys["k"]["m"].requests, 2);
        assert!(deny
            .period_use("k", Period::Day, SystemTime::now())
            .await
            .is_err());
        assert!(deny.totals().await.is_err());
        assert!(crate::store::store_errors_total() > before);
    }

    #[test]
    fn period_ids_name_the_kind_and_start() {
        // 2026-12-02T12:00:00Z, a Wednesday.
        let at = UNIX_EPOCH + Duration::from_secs(1_796_212_800);
        assert_eq!(period_id(Period::Day, at), "day-1796169600");
        assert_eq!(period_id(Period::Month, at), "month-1796083200");
        assert_ne!(period_id(Period::Week, at), period_id(Period::Day, at));
    }
}
