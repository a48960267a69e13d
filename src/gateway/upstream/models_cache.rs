//! An upstream's cached model lists, one per credential actually used (keyed by a digest of the
//! `Authorization` value sent, so two accounts never see each other's list): each fresh for
//! `models_cache_ttl`, refreshed by one request at a time, served stale when a refresh fails
//! for a reason other than the upstream refusing that credential. At most [`MAX_ENTRIES`]
//! credentials are remembered; the least recently refreshed one makes room.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::HeaderValue;
use sha2::{Digest, Sha256};

/// How many credentials' lists one upstream remembers.
pub const MAX_ENTRIES: usize = 64;

struct Cached {
    at: Instant,
    body: Bytes,
}

/// One credential's list.
#[derive(Default)]
struct Slot {
    cached: ArcSwapOption<Cached>,
    /// One refresh at a time; others wait for it and then read the cache.
    refresh: tokio::sync::Mutex<()>,
}

impl Slot {
    fn fresh(&self, ttl: Duration) -> Option<Bytes> {
        let c = self.cached.load();
        c.as_ref()
            .filter(|c| c.at.elapsed() < ttl)
            .map(|c| c.body.clone())
    }

    /// When the list was last stored (`None`: never).
    fn stored_at(&self) -> Option<Instant> {
        self.cached.load().as_ref().map(|c| c.at)
    }
}

/// Whether a failed refresh may be covered by the stale copy.
pub trait StaleCovers {
    /// `false` when the upstream refused the credential itself: its old list must not
    /// outlive the refusal.
    fn stale_covers(&self) -> bool;
}

/// The cache key: a digest of the credential sent, never the credential itself.
type Key = [u8; 32];

fn key_of(authorization: Option<&HeaderValue>) -> Key {
    let mut h = Sha256::new();
    match authorization {
        Some(v) => {
            h.update([1u8]);
            h.update(v.as_bytes());
        }
        None => h.update([0u8]),
    }
    h.finalize().into()
}

#[derive(Default)]
pub struct ModelsCache {
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
}

impl std::fmt::Debug for ModelsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelsCache")
    }
}

impl ModelsCache {
    fn slot(&self, key: Key) -> Arc<Slot> {
        // A panic elsewhere while holding this lock leaves the map itself intact.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(&key) {
            return s.clone();
        }
        if slots.len() >= MAX_ENTRIES {
            let oldest = slots
                .iter()
                .min_by_key(|(_, s)| s.stored_at())
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                slots.remove(&k);
            }
        }
        let slot = Arc::new(Slot::default());
        slots.insert(key, slot.clone());
        slot
    }

    /// How many credentials have a slot (for tests).
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The list cached for this credential while it is fresh; else `fetch`'s (one refresh
    /// at a time per credential), or the stale copy when the refresh fails and the failure
    /// is not a refusal of the credential.
    pub async fn get<E: StaleCovers + std::fmt::Display>(
        &self,
        ttl: Duration,
        authorization: Option<&HeaderValue>,
        fetch: impl Future<Output = Result<Bytes, E>>,
    ) -> Result<Bytes, E> {
        let slot = self.slot(key_of(authorization));
        if let Some(b) = slot.fresh(ttl) {
            return Ok(b);
        }
        let _guard = slot.refresh.lock().await;
        if let Some(b) = slot.fresh(ttl) {
            return Ok(b);
        }
        match fetch.await {
            Ok(body) => {
                slot.cached.store(Some(Arc::new(Cached {
                    at: Instant::now(),
                    body: body.clone(),
                })));
                Ok(body)
            }
            Err(e) if !e.stale_covers() => {
                slot.cached.store(None);
                Err(e)
            }
            Err(e) => match slot.cached.load_full() {
                Some(stale) => {
                    tracing::warn!(error = %e, "model list refresh failed; serving the cached copy");
                    Ok(stale.body.clone())
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fail(bool);
    impl StaleCovers for Fail {
        fn stale_covers(&self) -> bool {
            self.0
        }
    }
    impl std::fmt::Display for Fail {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fail")
        }
    }

    fn ok(s: &'static str) -> impl Future<Output = Result<Bytes, Fail>> {
        std::future::ready(Ok(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test]
    async fn each_credential_has_its_own_list() {
        let cache = ModelsCache::default();
        let ttl = Duration::from_secs(60);
        let a = HeaderValue::from_static("Bearer a");
        let b = HeaderValue::from_static("Bearer b");
        assert_eq!(cache.get(ttl, Some(&a), ok("A")).await.unwrap(), "A");
        assert_eq!(cache.get(ttl, Some(&b), ok("B")).await.unwrap(), "B");
        assert_eq!(cache.get(ttl, Some(&a), ok("A2")).await.unwrap(), "A");
        assert_eq!(cache.get(ttl, None, ok("none")).await.unwrap(), "none");
        assert_eq!(cache.len(), 3);
    }

    #[tokio::test]
    async fn a_refusal_is_not_covered_by_the_stale_copy() {
        let cache = ModelsCache::default();
        let a = HeaderValue::from_static("Bearer a");
        let zero = Duration::ZERO;
        cache.get(zero, Some(&a), ok("A")).await.unwrap();
        let stale = cache
            .get(zero, Some(&a), std::future::ready(Err(Fail(true))))
            .await;
        assert_eq!(
            stale.unwrap(),
            "A",
            "a transport failure serves the stale copy"
        );
        let refused = cache
            .get(zero, Some(&a), std::future::ready(Err(Fail(false))))
            .await;
        assert!(refused.is_err(), "a refusal passes through");
        let again = cache
            .get(zero, Some(&a), std::future::ready(Err(Fail(true))))
            .await;
        assert!(again.is_err(), "and forgets the old copy");
    }

    #[tokio::test]
    async fn the_map_is_bounded() {
        let cache = ModelsCache::default();
        let ttl = Duration::from_secs(60);
        for i in 0..(MAX_ENTRIES + 10) {
            let v = HeaderValue::from_str(&format!("Bearer k{i}")).unwrap();
            cache.get(ttl, Some(&v), ok("L")).await.unwrap();
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
    }
}
