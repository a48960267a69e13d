//! A pool of keys the operator owns: pick one per request, rest a key the upstream rate-limited
//! or rejected, and count requests in flight per key.
//!
//! All state is atomics, so picking a key never locks. Cooldowns are stored as milliseconds
//! since the pool was built (`0` = not cooling), which fits an `AtomicU64` and lets the last
//! writer of two overlapping cooldowns keep the later deadline (`fetch_max`).
//!
//! With a `store:`, a rest is also written to the store and rests read from it (other
//! replicas') are applied here ([`crate::store::cooldown`]), so every replica skips the key.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::StatusCode;

use super::PoolStrategy;
use crate::store::cooldown::Restable;
use crate::store::Store;

/// Longest rest a `Retry-After` can impose on a key, so a bogus value cannot retire it for good.
const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);

pub(super) struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    slots: Box<[Slot]>,
    strategy: PoolStrategy,
    cooldown: Duration,
    /// Rotates the starting point of each pick (round robin, and tie-breaks for least-in-flight).
    next: AtomicUsize,
    epoch: Instant,
    /// The store rests are shared through, and this pool's credential name there.
    shared: OnceLock<(Arc<Store>, Arc<str>)>,
}

impl Restable for PoolInner {
    fn key_count(&self) -> usize {
        self.slots.len()
    }

    fn rest_key(&self, index: usize, rest: Duration) {
        if let Some(slot) = self.slots.get(index) {
            let until = self.now_ms().saturating_add(millis(rest.min(MAX_COOLDOWN)));
            slot.cooling_until.fetch_max(until, Ordering::AcqRel);
        }
    }
}

struct Slot {
    authorization: HeaderValue,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` until which this key rests.
    cooling_until: AtomicU64,
}

/// One request in flight on one key; decrements the count when dropped (with its lease).
pub(super) struct InFlight {
    pool: Arc<PoolInner>,
    index: usize,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InFlight(key {})", self.index)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(slot) = self.pool.slots.get(self.index) {
            slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl PoolInner {
    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Pool {
    pub(super) fn new(keys: Vec<HeaderValue>, strategy: PoolStrategy, cooldown: Duration) -> Pool {
        let slots = keys
            .into_iter()
            .map(|authorization| Slot {
                authorization,
                in_flight: AtomicUsize::new(0),
                cooling_until: AtomicU64::new(0),
            })
            .collect();
        Pool {
            inner: Arc::new(PoolInner {
                slots,
                strategy,
                cooldown,
                next: AtomicUsize::new(0),
                epoch: Instant::now(),
                shared: OnceLock::new(),
            }),
        }
    }

    /// Shares this pool's rests with every replica through `store`, under `credential`'s name.
    pub(super) fn share(&self, store: &Arc<Store>, credential: &str) {
        if self
            .inner
            .shared
            .set((store.clone(), Arc::from(credential)))
            .is_ok()
        {
            let inner: Arc<dyn Restable> = self.inner.clone();
            store.watch_pool(credential, Arc::downgrade(&inner));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.inner.slots.len()
    }

    /// Picks a key that is not cooling down. `Err` carries the shortest remaining cooldown when
    /// every key rests.
    pub(super) fn pick(&self) -> Result<(usize, HeaderValue, InFlight), Duration> {
        let p = &self.inner;
        let n = p.slots.len();
        let now = p.now_ms();
        let start = p.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        for offset in 0..n {
            let index = (start.wrapping_add(offset)) % n;
            let Some(slot) = p.slots.get(index) else {
                continue;
            };
            if slot.cooling_until.load(Ordering::Acquire) > now {
                continue;
            }
            match p.strategy {
                PoolStrategy::RoundRobin => {
                    best = Some((index, 0));
                    break;
                }
                PoolStrategy::LeastInFlight => {
                    let load = slot.in_flight.load(Ordering::Acquire);
                    if best.is_none_or(|(_, b)| load < b) {
                        best = Some((index, load));
                        if load == 0 {
                            break;
                        }
                    }
                }
            }
        }
        match best.and_then(|(index, _)| p.slots.get(index).map(|s| (index, s))) {
            Some((index, slot)) => {
                slot.in_flight.fetch_add(1, Ordering::AcqRel);
                let guard = InFlight {
                    pool: Arc::clone(p),
                    index,
                };
                Ok((index, slot.authorization.clone(), guard))
            }
            None => {
                let soonest = p
                    .slots
                    .iter()
                    .map(|s| s.cooling_until.load(Ordering::Acquire).saturating_sub(now))
                    .min()
                    .unwrap_or(0);
                Err(Duration::from_millis(soonest.max(1)))
            }
        }
    }

    /// Rests key `index` after a 429 or 401. Returns the rest imposed, if any.
    pub(super) fn report(
        &self,
        index: usize,
        status: StatusCode,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::UNAUTHORIZED {
            return None;
        }
        let p = &self.inner;
        let slot = p.slots.get(index)?;
        let rest = retry_after.unwrap_or(p.cooldown).min(MAX_COOLDOWN);
        let until = p.now_ms().saturating_add(millis(rest));
        slot.cooling_until.fetch_max(until, Ordering::AcqRel);
        if let Some((store, credential)) = p.shared.get() {
            store.share_rest(credential, index, rest);
        }
        Some(rest)
    }

    #[cfg(test)]
    pub(super) fn in_flight(&self, index: usize) -> usize {
        self.inner
            .slots
            .get(index)
            .map_or(0, |s| s.in_flight.load(Ordering::Acquire))
    }
}
