//! Where usage is kept: the [`UsageBackend`] seam, and the one the process uses now.
//!
//! The default is the in-process [`Ledger`](super::ledger::Ledger). A shared store (several
//! replicas) implements the same trait and is put in place with [`install`] before the
//! gateway serves; call sites (the request's meter, the budget stage, `/admin/usage`) only
//! ever go through [`backend`].

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use serde::Serialize;

use super::ledger::Ledger;
use super::period::Period;

/// What one request adds to its key's counters for one model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Delta {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub errors: u64,
    pub rate_limited: u64,
    /// By `pricing:` (0 when the model has no price or the key has no budget).
    pub cost: f64,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        *self == Delta::default()
    }
}

/// A [`Delta`] for a key (its label) and model (the client's, `""` when none).
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub key: &'a str,
    pub model: &'a str,
    pub delta: Delta,
    /// The key's budget period, when it has a budget: the delta also counts in that period.
    pub period: Option<Period>,
    pub at: SystemTime,
}

/// Counters of one key and model (or their sum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub errors: u64,
    pub rate_limited: u64,
}

impl Counts {
    pub fn add(&mut self, d: &Delta) {
        self.requests += d.requests;
        self.input_tokens += d.input_tokens;
        self.output_tokens += d.output_tokens;
        self.errors += d.errors;
        self.rate_limited += d.rate_limited;
    }

    pub fn add_counts(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.errors += o.errors;
        self.rate_limited += o.rate_limited;
    }
}

/// A key's use within one budget period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeriodUse {
    /// Input plus output tokens.
    pub tokens: u64,
    pub cost: f64,
    pub models: BTreeMap<String, Counts>,
}

/// Every key's counters since `since`, per model.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub since: Option<SystemTime>,
    pub keys: BTreeMap<String, BTreeMap<String, Counts>>,
}

/// The store could not answer (a shared store that is down and configured to refuse).
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

/// Storage for usage. Recording is synchronous and must not wait (a network store queues or
/// pipelines it); reads are async because a network store has to ask.
pub trait UsageBackend: Send + Sync {
    /// Adds a request's delta to its key and model (and to the key's current period).
    fn record(&self, charge: &Charge<'_>);

    /// `key`'s use in the `period` holding `now`.
    fn period_use<'a>(
        &'a self,
        key: &'a str,
        period: Period,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<PeriodUse, Unavailable>>;

    /// Every key's counters since the backend started counting.
    fn totals(&self) -> BoxFuture<'_, Result<Totals, Unavailable>>;
}

type Shared = Arc<dyn UsageBackend>;

/// The process's one in-process ledger: the backend without a store, and the fallback (and
/// local record) of a shared one, so counts survive a switch between them.
static LEDGER: LazyLock<Arc<Ledger>> = LazyLock::new(|| Arc::new(Ledger::new()));

static BACKEND: LazyLock<ArcSwap<Shared>> =
    LazyLock::new(|| ArcSwap::from_pointee(Arc::clone(&*LEDGER) as Shared));

/// The process's in-process ledger (whatever backend is installed).
pub fn ledger() -> Arc<Ledger> {
    Arc::clone(&LEDGER)
}

/// The process's backend (the in-process ledger unless [`install`] replaced it).
pub fn backend() -> Shared {
    Arc::clone(&BACKEND.load())
}

/// Records a charge with the current backend without cloning its handle.
pub fn record(charge: &Charge<'_>) {
    BACKEND.load().record(charge);
}

/// Replaces the process's backend (e.g. with a shared store); counts already kept by the
/// previous one stay there.
pub fn install(backend: Shared) {
    BACKEND.store(Arc::new(backend));
}
