//! Per-key policy: expiry, allowed models, requests per minute, tokens per minute and
//! concurrent requests. Limits are per key and per generation (a reload starts them afresh);
//! each key has its own small lock, so keys never contend with each other. With a `store:`
//! the limits are shared by every replica ([`crate::store::admission`]); these in-process
//! ones then serve only while the store does not answer (`on_error: allow`). A budgeted key
//! whose usage is kept in that store has its budget checked in the same admission call.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::store::OnStoreError;
use crate::config::KeyConfig;
use crate::error::{ErrorKind, GatewayError};
use crate::store::admission::{BudgetCheck, Lease, Limit, SharedLimits, Verdict};
use crate::store::Store;

/// A token bucket refilled continuously at `capacity` per minute.
#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn per_minute(capacity: u64) -> Self {
        Bucket {
            capacity: capacity as f64,
            state: Mutex::new((capacity as f64, Instant::now())),
        }
    }

    fn refill(&self, state: &mut (f64, Instant), now: Instant) {
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.capacity / 60.0).min(self.capacity);
        state.1 = now;
    }

    /// Seconds until `amount` is available (0 = available now, and taken if `take`).
    fn check(&self, amount: f64, take: bool) -> u64 {
        let Ok(mut st) = self.state.lock() else {
            return 0;
        };
        let now = Instant::now();
        self.refill(&mut st, now);
        if st.0 >= amount {
            if take {
                st.0 -= amount;
            }
            return 0;
        }
        let missing = amount - st.0;
        ((missing * 60.0 / self.capacity).ceil() as u64).max(1)
    }

    /// Takes one request slot, or says how long to wait.
    pub fn take_one(&self) -> Result<(), u64> {
        match self.check(1.0, true) {
            0 => Ok(()),
            wait => Err(wait),
        }
    }

    /// Whether the bucket has anything left (usage is charged after the fact).
    pub fn has_room(&self) -> Result<(), u64> {
        match self.check(f64::MIN_POSITIVE, false) {
            0 => Ok(()),
            wait => Err(wait),
        }
    }

    /// Charges real usage; the balance may go negative, delaying later requests.
    pub fn charge(&self, amount: u64) {
        if let Ok(mut st) = self.state.lock() {
            let now = Instant::now();
            self.refill(&mut st, now);
            st.0 -= amount as f64;
        }
    }
}

/// The runtime policy of one extended-form key.
#[derive(Debug, Default)]
pub struct KeyPolicy {
    pub credential: Option<String>,
    pub upstream: Option<String>,
    pub models: Vec<String>,
    pub rpm: Option<Bucket>,
    pub tpm: Option<Arc<Bucket>>,
    pub concurrency: Option<Arc<Semaphore>>,
    pub max_concurrent: u32,
    pub expires_at: Option<SystemTime>,
    /// The same limits in the shared store, when `store:` is set.
    pub shared: Option<Arc<SharedLimits>>,
    /// Tokens or cost per calendar period (checked by `stages::budget`).
    pub budget: Option<crate::usage::budget::Budget>,
}

/// A key's concurrency slot, held until the response ends.
#[derive(Debug)]
pub enum Slot {
    Local(OwnedSemaphorePermit),
    Shared(Lease),
}

/// 429 for one of a key's limits (`limit`: `rpm`, `tpm` or `max_concurrent`), counted in
/// `sophgate_rate_limited_total`.
fn limited(key: &Arc<str>, limit: &'static str, what: &str, wait: u64) -> GatewayError {
    crate::observe::metrics::rate_limited(key, limit);
    GatewayError::new(
        ErrorKind::RateLimited,
        "rate_limit_exceeded",
        format!("Rate limit of this key reached ({what}); retry after {wait} s"),
    )
    .with_retry_after(wait)
}

impl KeyPolicy {
    pub fn from_config(k: &KeyConfig) -> Self {
        KeyPolicy {
            credential: k.credential.clone(),
            upstream: k.upstream.clone(),
            models: k.models.clone(),
            rpm: k.rpm.map(|n| Bucket::per_minute(u64::from(n))),
            tpm: k.tpm.map(|n| Arc::new(Bucket::per_minute(n))),
            concurrency: k
                .max_concurrent
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            max_concurrent: k.max_concurrent.unwrap_or(0),
            expires_at: k.expires_at,
            budget: k.budget,
            shared: None,
        }
    }

    /// Keeps this key's limits in `store` (when it has any, or a budget to check there),
    /// shared by every replica.
    pub fn share(&mut self, store: &Arc<Store>, label: &str) {
        if self.rpm.is_some()
            || self.tpm.is_some()
            || self.concurrency.is_some()
            || self.budget.is_some()
        {
            self.shared = Some(Arc::new(SharedLimits::new(
                store,
                label,
                self.rpm_limit(),
                self.tpm.as_ref().map(|b| b.capacity as u64),
                (self.max_concurrent > 0).then_some(self.max_concurrent),
            )));
        }
    }

    fn rpm_limit(&self) -> Option<u32> {
        self.rpm.as_ref().map(|b| b.capacity as u32)
    }

    /// Whether this key's budget is checked by its shared admission ([`KeyPolicy::admit`])
    /// rather than by the budget stage: it has a budget and shared limits, and the process
    /// keeps its usage in that store.
    pub fn budget_in_admission(&self) -> bool {
        self.budget.is_some()
            && self
                .shared
                .as_ref()
                .is_some_and(|s| s.store().keeps_usage())
    }

    /// Admits one request under rpm / tpm / concurrency (and its budget, see
    /// [`KeyPolicy::budget_in_admission`]): in the shared store when there is one (one round
    /// trip), else (or when it fails and `on_error` is `allow`) in process.
    pub async fn admit(&self, key: &Arc<str>) -> Result<Option<Slot>, GatewayError> {
        let Some(shared) = &self.shared else {
            return self.admit_local(key);
        };
        let budget = self.budget.filter(|_| self.budget_in_admission());
        let now = SystemTime::now();
        let budget_hash = budget.map(|b| {
            shared
                .store()
                .budget_key(key, &crate::usage::shared::period_id(b.period, now))
        });
        let check = budget
            .zip(budget_hash.as_deref())
            .map(|(b, hash)| BudgetCheck {
                hash,
                field: b.unit(),
                limit: b.limit_value(),
            });
        match shared.admit(check).await {
            Ok(Verdict::Admitted(lease)) => Ok(lease.map(Slot::Shared)),
            Ok(Verdict::Limited { limit, wait }) => {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                Err(match limit {
                    Limit::Budget => match &budget {
                        Some(b) => super::budget::exceeded(b, now),
                        None => GatewayError::internal("unexpected budget refusal"),
                    },
                    Limit::Rpm => limited(key, "rpm", "requests per minute", secs),
                    Limit::Tpm => limited(key, "tpm", "tokens per minute", secs),
                    Limit::Concurrency => limited(
                        key,
                        "max_concurrent",
                        &format!("{} concurrent requests", self.max_concurrent),
                        1,
                    ),
                })
            }
            Err(_) => match shared.store().on_error() {
                OnStoreError::Allow => {
                    if let Some(b) = &budget {
                        // This replica's own counts, as the budget stage answers then.
                        let used =
                            crate::usage::backend::ledger().period_use_now(key, b.period, now);
                        if b.exhausted(&used) {
                            return Err(super::budget::exceeded(b, now));
                        }
                    }
                    self.admit_local(key)
                }
                OnStoreError::Deny => Err(GatewayError::new(
                    ErrorKind::Unavailable,
                    "limits_unavailable",
                    "The shared rate-limit store is unavailable; retry shortly",
                )
                .with_retry_after(1)),
            },
        }
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// 403 unless the model is allowed (no list = any model).
    pub fn check_model(&self, model: Option<&str>) -> Result<(), GatewayError> {
        if self.models.is_empty() {
            return Ok(());
        }
        let allowed = model.is_some_and(|m| crate::glob::any(&self.models, m));
        if allowed {
            Ok(())
        } else {
            let shown: String = model.unwrap_or("(none)").chars().take(100).collect();
            Err(GatewayError::new(
                ErrorKind::Forbidden,
                "model_not_allowed",
                format!("This key may not use model {shown}"),
            ))
        }
    }

    /// Admits one request under this process's rpm / tpm / concurrency, or answers 429 with
    /// Retry-After (`key` is the key's label, for `sophgate_rate_limited_total`). The returned
    /// slot holds the concurrency permit until the response ends.
    pub fn admit_local(&self, key: &Arc<str>) -> Result<Option<Slot>, GatewayError> {
        if let Some(tpm) = &self.tpm {
            tpm.has_room()
                .map_err(|w| limited(key, "tpm", "tokens per minute", w))?;
        }
        let permit = match &self.concurrency {
            Some(sem) => Some(sem.clone().try_acquire_owned().map_err(|_| {
                limited(
                    key,
                    "max_concurrent",
                    &format!("{} concurrent requests", self.max_concurrent),
                    1,
                )
            })?),
            None => None,
        };
        if let Some(rpm) = &self.rpm {
            rpm.take_one()
                .map_err(|w| limited(key, "rpm", "requests per minute", w))?;
        }
        Ok(permit.map(Slot::Local))
    }
}

/// Counts real token usage against a key's tpm bucket.
#[derive(Debug, Clone)]
pub struct UsageMeter {
    bucket: Arc<Bucket>,
    shared: Option<Arc<SharedLimits>>,
}

impl UsageMeter {
    pub fn new(bucket: Arc<Bucket>) -> Self {
        UsageMeter {
            bucket,
            shared: None,
        }
    }

    /// The meter of a key with tpm: its local bucket and, with a store, the shared one.
    pub fn of(policy: &KeyPolicy) -> Option<Self> {
        let bucket = policy.tpm.clone()?;
        Some(UsageMeter {
            bucket,
            shared: policy.shared.clone(),
        })
    }

    pub fn charge(&self, tokens: u64) {
        self.bucket.charge(tokens);
        if let Some(shared) = &self.shared {
            shared.charge_tokens(tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_bucket_limits_and_says_when() {
        let b = Bucket::per_minute(2);
        assert!(b.take_one().is_ok());
        assert!(b.take_one().is_ok());
        let wait = b.take_one().unwrap_err();
        assert!((1..=30).contains(&wait), "{wait}");
    }

    #[test]
    fn tpm_charges_after_the_fact() {
        let b = Bucket::per_minute(100);
        assert!(b.has_room().is_ok());
        b.charge(160);
        let wait = b.has_room().unwrap_err();
        assert!((30..=37).contains(&wait), "{wait}");
    }

    #[test]
    fn model_globs() {
        let p = KeyPolicy {
            models: vec!["DeepSeek-*".into()],
            ..KeyPolicy::default()
        };
        assert!(p.check_model(Some("DeepSeek-R1")).is_ok());
        assert_eq!(p.check_model(Some("gpt-4")).unwrap_err().status(), 403);
        assert_eq!(p.check_model(None).unwrap_err().status(), 403);
    }
}
