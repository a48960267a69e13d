//! The in-process usage backend: counters per key and model since the process started, and
//! each budgeted key's current period. Kept across reloads (it is process-wide), lost on
//! restart.
//!
//! Recording takes read locks only: a key's entry and its model's counters are found under
//! a shared read lock and bumped with atomics; the write lock is taken once per new key or
//! model. A key counts at most [`MAX_MODELS_PER_KEY`] distinct model names; further names
//! fold into `other` (model names come from clients). A budgeted key's period totals sit
//! behind that key's own mutex.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use super::backend::{Charge, Counts, Delta, PeriodUse, Totals, Unavailable, UsageBackend};
use super::period::Period;

/// Distinct model names counted per key before the rest fold into [`OTHER`].
pub const MAX_MODELS_PER_KEY: usize = 100;
/// Where model names past the bound are counted.
pub const OTHER: &str = "other";

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
}

impl Counters {
    fn add(&self, d: &Delta) {
        for (c, v) in [
            (&self.requests, d.requests),
            (&self.input_tokens, d.input_tokens),
            (&self.output_tokens, d.output_tokens),
            (&self.errors, d.errors),
            (&self.rate_limited, d.rate_limited),
        ] {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    fn get(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            input_tokens: self.input_tokens.load(Ordering::Relaxed),
            output_tokens: self.output_tokens.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }
}

/// A budgeted key's current period.
#[derive(Debug)]
struct PeriodBook {
    period: Period,
    start: i64,
    used: PeriodUse,
}

#[derive(Debug, Default)]
struct KeyEntry {
    models: RwLock<HashMap<Box<str>, Arc<Counters>>>,
    period: Mutex<Option<PeriodBook>>,
}

impl KeyEntry {
    /// Adds `d` to the model's counters (under the read lock when the model is known).
    fn add(&self, model: &str, d: &Delta) {
        {
            let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = models.get(model) {
                c.add(d);
                return;
            }
        }
        self.insert(model).add(d);
    }

    /// The counters of a model not seen before (or of `other` once the key has too many).
    fn insert(&self, model: &str) -> Arc<Counters> {
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        // The bound counts names other than `other` itself.
        let full = models.len() - usize::from(models.contains_key(OTHER)) >= MAX_MODELS_PER_KEY;
        let name = if full && !models.contains_key(model) {
            OTHER
        } else {
            model
        };
        models.entry(name.into()).or_default().clone()
    }

    fn charge_period(&self, model: &str, period: Period, now: i64, d: &Delta) {
        let start = period.bounds(now).0;
        let mut book = self.period.lock().unwrap_or_else(PoisonError::into_inner);
        let book = match book.as_mut() {
            Some(b) if b.period == period && b.start == start => b,
            // A new period (or the key's period changed on reload): start afresh.
            _ => book.insert(PeriodBook {
                period,
                start,
                used: PeriodUse::default(),
            }),
        };
        book.used.tokens += d.input_tokens + d.output_tokens;
        book.used.cost += d.cost;
        let models = &mut book.used.models;
        let name = if models.len() >= MAX_MODELS_PER_KEY && !models.contains_key(model) {
            OTHER
        } else {
            model
        };
        models.entry(name.to_owned()).or_default().add(d);
    }

    fn period_use(&self, period: Period, now: i64) -> PeriodUse {
        let start = period.bounds(now).0;
        let book = self.period.lock().unwrap_or_else(PoisonError::into_inner);
        match book.as_ref() {
            Some(b) if b.period == period && b.start == start => b.used.clone(),
            _ => PeriodUse::default(),
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The in-process [`UsageBackend`].
#[derive(Debug)]
pub struct Ledger {
    since: SystemTime,
    keys: RwLock<HashMap<Arc<str>, Arc<KeyEntry>>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    pub fn new() -> Self {
        Ledger {
            since: SystemTime::now(),
            keys: RwLock::new(HashMap::new()),
        }
    }

    /// Runs `f` on the key's entry: under the read lock when the key is known.
    fn with_entry(&self, key: &str, f: impl FnOnce(&KeyEntry)) {
        {
            let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = keys.get(key) {
                f(e);
                return;
            }
        }
        f(&self.insert(key));
    }

    fn insert(&self, key: &str) -> Arc<KeyEntry> {
        // Keys are labels from the config (or `passthrough`): a bounded set.
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.entry(Arc::from(key)).or_default().clone()
    }

    /// The name `model` is counted under for `key` once recorded: itself, or [`OTHER`] when
    /// the key had too many model names already.
    pub fn counted_model<'a>(&self, key: &str, model: &'a str) -> &'a str {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let known = keys.get(key).is_some_and(|e| {
            e.models
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(model)
        });
        if known {
            model
        } else {
            OTHER
        }
    }

    /// Synchronous form of [`UsageBackend::period_use`].
    pub fn period_use_now(&self, key: &str, period: Period, now: SystemTime) -> PeriodUse {
        let entry = {
            let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            keys.get(key).cloned()
        };
        entry
            .map(|e| e.period_use(period, unix(now)))
            .unwrap_or_default()
    }

    /// Synchronous form of [`UsageBackend::totals`].
    pub fn totals_now(&self) -> Totals {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = BTreeMap::new();
        for (key, entry) in keys.iter() {
            let models = entry.models.read().unwrap_or_else(PoisonError::into_inner);
            let per_model: BTreeMap<String, Counts> = models
                .iter()
                .map(|(m, c)| (m.to_string(), c.get()))
                .collect();
            out.insert(key.to_string(), per_model);
        }
        Totals {
            since: Some(self.since),
            keys: out,
        }
    }
}

impl UsageBackend for Ledger {
    fn record(&self, charge: &Charge<'_>) {
        self.with_entry(charge.key, |entry| {
            entry.add(charge.model, &charge.delta);
            if let Some(period) = charge.period {
                entry.charge_period(charge.model, period, unix(charge.at), &charge.delta);
            }
        });
    }

    fn period_use<'a>(
        &'a self,
        key: &'a str,
        period: Period,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<PeriodUse, Unavailable>> {
        Box::pin(std::future::ready(
            Ok(self.period_use_now(key, period, now)),
        ))
    }

    fn totals(&self) -> BoxFuture<'_, Result<Totals, Unavailable>> {
        Box::pin(std::future::ready(Ok(self.totals_now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn charge<'a>(
        key: &'a str,
        model: &'a str,
        delta: Delta,
        period: Option<Period>,
    ) -> Charge<'a> {
        Charge {
            key,
            model,
            delta,
            period,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn counts_per_key_and_model() {
        let l = Ledger::new();
        let one = Delta {
            requests: 1,
            input_tokens: 10,
            output_tokens: 5,
            ..Delta::default()
        };
        l.record(&charge("alice", "m1", one, None));
        l.record(&charge("alice", "m1", one, None));
        l.record(&charge(
            "alice",
            "m2",
            Delta {
                requests: 1,
                errors: 1,
                rate_limited: 1,
                ..Delta::default()
            },
            None,
        ));
        let t = l.totals_now();
        let m1 = t.keys["alice"]["m1"];
        assert_eq!(
            (m1.requests, m1.input_tokens, m1.output_tokens),
            (2, 20, 10)
        );
        assert_eq!(t.keys["alice"]["m2"].rate_limited, 1);
        assert!(!t.keys.contains_key("bob"));
    }

    #[test]
    fn models_past_the_bound_fold_into_other() {
        let l = Ledger::new();
        let one = Delta {
            requests: 1,
            ..Delta::default()
        };
        for i in 0..MAX_MODELS_PER_KEY + 5 {
            l.record(&charge("k", &format!("m{i}"), one, None));
        }
        // A name counted before the bound keeps its own entry.
        l.record(&charge("k", "m0", one, None));
        let t = l.totals_now();
        let models = &t.keys["k"];
        assert_eq!(models.len(), MAX_MODELS_PER_KEY + 1);
        assert_eq!(models[OTHER].requests, 5);
        assert_eq!(models["m0"].requests, 2);
    }

    #[test]
    fn a_period_starts_afresh_when_it_ends() {
        let l = Ledger::new();
        let d = Delta {
            requests: 1,
            input_tokens: 7,
            output_tokens: 3,
            cost: 0.5,
            ..Delta::default()
        };
        // 2026-12-02T12:00:00Z, then the next day.
        let today = UNIX_EPOCH + Duration::from_secs(1_796_212_800);
        let tomorrow = today + Duration::from_secs(86_400);
        let mut c = charge("k", "m", d, Some(Period::Day));
        c.at = today;
        l.record(&c);
        l.record(&c);
        let used = l.period_use_now("k", Period::Day, today);
        assert_eq!(used.tokens, 20);
        assert!((used.cost - 1.0).abs() < 1e-12);
        assert_eq!(used.models["m"].requests, 2);
        // The next day has nothing yet.
        assert_eq!(
            l.period_use_now("k", Period::Day, tomorrow),
            PeriodUse::default()
        );
        c.at = tomorrow;
        l.record(&c);
        assert_eq!(l.period_use_now("k", Period::Day, tomorrow).tokens, 10);
        // A key whose period changed (a reload) starts that period afresh.
        assert_eq!(l.period_use_now("k", Period::Month, tomorrow).tokens, 0);
        // The all-time counters keep everything.
        assert_eq!(l.totals_now().keys["k"]["m"].requests, 3);
    }
}
