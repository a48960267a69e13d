//! Group commit of one key's admissions: while a call admitting a request of a key is in
//! flight, further requests of that key wait here, and when it answers they go to Redis
//! together, as one call of the batch form of the key's script ([`Shape::batch_text`]).
//!
//! Why: at high concurrency most of an admission's cost, in Redis and in the gateway, is per
//! call (the command, the script's set-up, `TIME`, reading and writing the keys), not per
//! request. One key under load sends one call per round trip however many of its requests
//! arrive meanwhile; a request alone (nothing of its key in flight) calls at once, as before.
//!
//! A batch is decided exactly as that many single admissions at one instant would be, in the
//! order the requests arrived (see [`Shape::batch_text`]). Admissions that check a budget do
//! not queue here: they call alone (their budget's hash and limit are theirs).
//!
//! Each waiting request is bounded by `timeout_ms` from the moment it queued, whatever is in
//! flight before it. An admission answered after its request stopped waiting gives its lease
//! back at once (the [`Lease`] is dropped unreceived); its rpm slot stays used, as a single
//! call that timed out after Redis ran it does. A batch call that fails or runs out of time may
//! still be run by Redis: its requests' leases go on the key's [`Releases`] as released ones.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use redis::Script;
use tokio::sync::oneshot;

use super::admission::{refusal, Lease, Releases, Verdict};
use super::admit_script::{self, Shape};
use super::{note_error, Store, StoreError};

/// Requests sent in one batch at most (the rest wait for the next one).
pub(super) const MAX_BATCH: usize = 128;

/// One key's queue of admissions.
pub(super) struct AdmitQueue {
    store: Arc<Store>,
    shape: Shape,
    /// The batch script, built on the key's first batch.
    script: OnceLock<Arc<Script>>,
    tpm_key: Option<Arc<str>>,
    /// The key's lease set, and where its leases go when released.
    releases: Option<Arc<Releases>>,
    rpm_key: Option<Arc<str>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for AdmitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmitQueue")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// A call admitting requests of this key is in flight; its end hands the queue on.
    busy: bool,
    waiting: Vec<Waiting>,
}

/// A request's lease to take, if its key has `max_concurrent`: id and member.
pub(super) type LeaseToTake = Option<(u64, String)>;

struct Waiting {
    lease: LeaseToTake,
    answer: oneshot::Sender<Result<Verdict, StoreError>>,
}

/// What a request does to be admitted.
pub(super) enum Entry {
    /// Nothing of its key is in flight: it calls Redis itself, holding the turn until then.
    Call(Turn, LeaseToTake),
    /// It waits for its place in the next batch.
    Wait(oneshot::Receiver<Result<Verdict, StoreError>>),
}

/// The turn of a request calling alone; when it ends (answered, failed or cancelled), the
/// requests that queued meanwhile go as the next batch.
pub(super) struct Turn(Arc<AdmitQueue>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.hand_on();
    }
}

impl AdmitQueue {
    /// The queue of a key of `shape` whose Redis keys are these (`None`: the key has no such
    /// limit).
    pub(super) fn new(
        store: &Arc<Store>,
        shape: &Shape,
        tpm_key: Option<Arc<str>>,
        releases: Option<Arc<Releases>>,
        rpm_key: Option<Arc<str>>,
    ) -> AdmitQueue {
        AdmitQueue {
            store: store.clone(),
            shape: shape.clone(),
            script: OnceLock::new(),
            tpm_key,
            releases,
            rpm_key,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The request's turn to call alone, or its place in the next batch.
    pub(super) fn enter(self: &Arc<Self>, lease: LeaseToTake) -> Entry {
        let mut state = self.state();
        if !state.busy {
            state.busy = true;
            return Entry::Call(Turn(self.clone()), lease);
        }
        let (answer, received) = oneshot::channel();
        state.waiting.push(Waiting { lease, answer });
        Entry::Wait(received)
    }

    /// Waits for a queued request's verdict, `timeout_ms` at most.
    pub(super) async fn wait(
        &self,
        received: oneshot::Receiver<Result<Verdict, StoreError>>,
    ) -> Result<Verdict, StoreError> {
        match tokio::time::timeout(self.store.timeout(), received).await {
            Ok(Ok(verdict)) => verdict,
            // The batch was dropped unsent (the runtime is shutting down).
            Ok(Err(_)) => Err(StoreError::Protocol),
            Err(_) => {
                note_error("admit", &StoreError::Timeout);
                Err(StoreError::Timeout)
            }
        }
    }

    /// The call in flight ended: the requests queued meanwhile go next, from a task of their
    /// own (the request that called alone goes on with its answer).
    fn hand_on(self: &Arc<Self>) {
        let mut state = self.state();
        if state.waiting.is_empty() {
            state.busy = false;
            return;
        }
        drop(state);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.clone().send_batches());
            }
            Err(_) => {
                let mut state = self.state();
                state.busy = false;
                state.waiting.clear();
            }
        }
    }

    /// Sends batch after batch while requests keep queueing, then frees the turn.
    async fn send_batches(self: Arc<Self>) {
        loop {
            let batch: Vec<Waiting> = {
                let mut state = self.state();
                if state.waiting.is_empty() {
                    state.busy = false;
                    return;
                }
                let n = state.waiting.len().min(MAX_BATCH);
                state.waiting.drain(..n).collect()
            };
            self.admit_batch(batch).await;
        }
    }

    /// One call of the batch script for `batch`, in its order; every request gets its verdict.
    async fn admit_batch(&self, batch: Vec<Waiting>) {
        let script = self
            .script
            .get_or_init(|| admit_script::batch_variant(&self.shape));
        let requests = &batch;
        let answer: Result<(u64, u64), StoreError> = self
            .store
            .call(super::Call::AdmitBatch, |mut conn| async move {
                // KEYS and ARGV in the order `Shape::batch_text` documents.
                let mut inv = script.prepare_invoke();
                if let Some(k) = &self.tpm_key {
                    inv.key(&**k);
                }
                match &self.releases {
                    Some(r) => {
                        inv.key(&*r.set);
                        for (_, member) in requests.iter().filter_map(|w| w.lease.as_ref()) {
                            inv.arg(member);
                        }
                    }
                    None => {
                        inv.arg(requests.len());
                    }
                }
                if let Some(k) = &self.rpm_key {
                    inv.key(&**k);
                }
                inv.invoke_async(&mut conn).await
            })
            .await;
        let (admitted, code) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                // Redis may have run the call all the same: leases it added for requests told
                // it failed go back as any release does, rather than hold their slots until
                // the lease TTL.
                let mut lost = Vec::new();
                for w in batch {
                    lost.extend(w.lease.map(|(_, member)| member));
                    let _ = w.answer.send(Err(e.clone()));
                }
                if let Some(r) = &self.releases {
                    r.give_back(&self.store, lost);
                }
                return;
            }
        };
        for (i, w) in batch.into_iter().enumerate() {
            let verdict = if (i as u64) < admitted {
                Ok(Verdict::Admitted(w.lease.and_then(|(id, member)| {
                    let releases = self.releases.as_ref()?;
                    Some(Lease::taken(&self.store, id, releases, member))
                })))
            } else {
                refusal(code)
            };
            // A request that stopped waiting drops its verdict here, and with it its lease.
            let _ = w.answer.send(verdict);
        }
    }
}
