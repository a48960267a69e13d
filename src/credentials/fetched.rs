//! The cache in front of a fetched token (oauth2, token_endpoint, command).
//!
//! - **Hot path**: an `ArcSwapOption` load and two `Instant` comparisons; no lock, no await.
//! - **Single flight**: every fetch runs under one async mutex per credential. A request that
//!   finds no usable token queues on it; when its turn comes it first looks again (the fetch it
//!   waited for usually left a token) and, if an attempt finished while it queued and failed,
//!   shares that failure instead of starting another. So 100 requests on a cold cache cause
//!   exactly one fetch, and a failing source sees one attempt per wave, not one per request.
//! - **Detached fetches**: the fetch runs on its own task holding the mutex, so a client that
//!   disconnects mid-fetch does not cancel the fetch the other waiters are counting on.
//! - **Refresh ahead**: once a token passes its refresh point, the next lease spawns a background
//!   refresh and returns the current token immediately; no request waits for a refresh.
//! - **Failure**: a failed refresh keeps the still-valid token, and background refreshes back
//!   off exponentially (250 ms doubling to 10 s) so a broken source is not asked on every
//!   request. With nothing valid cached there is no backoff: each wave of requests gets one
//!   attempt (shared through the single flight), so service resumes as soon as the source does.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::header::HeaderValue;

use super::source::Source;

/// Shortest lifetime believed, so an `expires_in: 0` cannot turn every request into a fetch.
const MIN_LIFETIME: Duration = Duration::from_secs(1);
const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
/// Bounds of the default refresh margin (a fifth of the lifetime).
const MIN_REFRESH_MARGIN: Duration = Duration::from_secs(1);
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(300);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct Token {
    authorization: HeaderValue,
    generation: u64,
    expires_at: Instant,
    refresh_at: Instant,
}

pub(super) struct Fetched {
    name: Arc<str>,
    source: Source,
    cached: ArcSwapOption<Token>,
    /// Held for the whole of every fetch: the single flight.
    flight: Arc<tokio::sync::Mutex<()>>,
    /// Finished fetch attempts; lets a queued request see that an attempt ran while it waited.
    attempts: AtomicU64,
    last_attempt_ok: AtomicBool,
    fetches: AtomicU64,
    generation: AtomicU64,
    /// A background refresh task exists.
    refreshing: AtomicBool,
    failures: AtomicU32,
    /// No background refresh before this many ms since `epoch` (after failures).
    retry_at: AtomicU64,
    epoch: Instant,
}

impl Fetched {
    pub(super) fn new(name: &str, source: Source) -> Fetched {
        Fetched {
            name: Arc::from(name),
            source,
            cached: ArcSwapOption::empty(),
            flight: Arc::new(tokio::sync::Mutex::new(())),
            attempts: AtomicU64::new(0),
            last_attempt_ok: AtomicBool::new(false),
            fetches: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            retry_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub(super) fn kind(&self) -> super::CredentialKind {
        self.source.kind()
    }

    pub(super) fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Acquire)
    }

    /// A usable token and its generation, or `None` when the source failed with nothing valid
    /// cached (the cause is already logged).
    pub(super) async fn token(self: &Arc<Self>) -> Option<(HeaderValue, u64)> {
        let now = Instant::now();
        if let Some((value, generation, refresh_due)) = self.usable(now) {
            if refresh_due {
                self.spawn_refresh(now);
            }
            return Some((value, generation));
        }
        // Boxed: the fetch future is ~17 KB, and unboxed it would be part of every request's
        // state (allocated and moved per request) even when the token comes from the cache.
        Box::pin(self.fetch_cold()).await
    }

    /// Drops the cached token if it is still generation `generation`. True when it did.
    pub(super) fn invalidate(&self, generation: u64) -> bool {
        let before = self.cached.rcu(|cur| match cur {
            Some(t) if t.generation == generation => None,
            other => other.clone(),
        });
        before.is_some_and(|t| t.generation == generation)
    }

    fn usable(&self, now: Instant) -> Option<(HeaderValue, u64, bool)> {
        let guard = self.cached.load();
        let token = guard.as_ref()?;
        (now < token.expires_at).then(|| {
            (
                token.authorization.clone(),
                token.generation,
                now >= token.refresh_at,
            )
        })
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.load(Ordering::Acquire) > self.now_ms(now)
    }

    /// No usable token: join (or become) the single flight.
    async fn fetch_cold(self: &Arc<Self>) -> Option<(HeaderValue, u64)> {
        let seen = self.attempts.load(Ordering::Acquire);
        let guard = Arc::clone(&self.flight).lock_owned().await;
        let now = Instant::now();
        if let Some((value, generation, _)) = self.usable(now) {
            return Some((value, generation));
        }
        if self.attempts.load(Ordering::Acquire) != seen
            && !self.last_attempt_ok.load(Ordering::Acquire)
        {
            // The attempt we queued behind failed; its failure is ours too.
            return None;
        }
        // No backoff here: without a valid token every request fails anyway, so recovering at
        // the first request after the source is back matters more, and the single flight
        // already limits a dead source to one attempt at a time.
        let this = Arc::clone(self);
        let task = async move {
            let _flight = guard;
            this.fetch_and_store().await
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.spawn(task).await.ok().flatten(),
            Err(_) => task.await,
        }
    }

    /// Starts one background refresh unless one runs or the source is backing off.
    fn spawn_refresh(self: &Arc<Self>, now: Instant) {
        if self.backing_off(now) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        rt.spawn(async move {
            let _done = ClearOnDrop(Arc::clone(&this));
            let _flight = this.flight.lock().await;
            // A cold fetch (after an invalidation) may have renewed it while we queued.
            let fresh = this
                .cached
                .load()
                .as_ref()
                .is_some_and(|t| Instant::now() < t.refresh_at);
            if !fresh {
                this.fetch_and_store().await;
            }
        });
    }

    /// One attempt; call with `flight` held.
    async fn fetch_and_store(&self) -> Option<(HeaderValue, u64)> {
        let started = Instant::now();
        let result = self.source.fetch().await;
        self.fetches.fetch_add(1, Ordering::AcqRel);
        crate::observe::metrics::credential_fetch(&self.name, result.is_ok());
        let out = match result {
            Ok(token) => {
                let lifetime = token
                    .lifetime
                    .unwrap_or(self.source.default_ttl())
                    .clamp(MIN_LIFETIME, MAX_LIFETIME);
                let margin = self.source.refresh_before().unwrap_or_else(|| {
                    (lifetime / 5).clamp(MIN_REFRESH_MARGIN, MAX_REFRESH_MARGIN)
                });
                // Never refresh in the first half of the lifetime: a margin as long as the
                // lifetime would otherwise refresh on every request.
                let refresh_after = lifetime.saturating_sub(margin).max(lifetime / 2);
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                let value = token.authorization.clone();
                self.cached.store(Some(Arc::new(Token {
                    authorization: token.authorization,
                    generation,
                    expires_at: started + lifetime,
                    refresh_at: started + refresh_after,
                })));
                self.failures.store(0, Ordering::Release);
                self.retry_at.store(0, Ordering::Release);
                self.last_attempt_ok.store(true, Ordering::Release);
                tracing::debug!(
                    credential = %self.name,
                    lifetime_secs = lifetime.as_secs_f64(),
                    refresh_in_secs = refresh_after.as_secs_f64(),
                    "token fetched"
                );
                Some((value, generation))
            }
            Err(cause) => {
                let failures = self
                    .failures
                    .fetch_add(1, Ordering::AcqRel)
                    .saturating_add(1);
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1u32 << (failures - 1).min(8))
                    .min(MAX_BACKOFF);
                let now = Instant::now();
                self.retry_at
                    .store(self.now_ms(now + backoff), Ordering::Release);
                self.last_attempt_ok.store(false, Ordering::Release);
                match self.usable(now) {
                    Some((_, _, _)) => tracing::warn!(
                        credential = %self.name,
                        error = %cause,
                        "token refresh failed; still serving the cached token until it expires"
                    ),
                    None => tracing::error!(
                        credential = %self.name,
                        error = %cause,
                        "token fetch failed and no valid token is cached"
                    ),
                }
                None
            }
        };
        self.attempts.fetch_add(1, Ordering::AcqRel);
        out
    }
}

/// Clears `refreshing` when the refresh task ends, however it ends.
struct ClearOnDrop(Arc<Fetched>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}
