//! An upstream's cached model list: fresh for `models_cache_ttl`, refreshed by one request at
//! a time, served stale when a refresh fails.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use crate::error::GatewayError;

struct Cached {
    at: Instant,
    body: Bytes,
}

#[derive(Default)]
pub struct ModelsCache {
    cached: ArcSwapOption<Cached>,
    /// One refresh at a time; others wait for it and then read the cache.
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ModelsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelsCache")
    }
}

impl ModelsCache {
    fn fresh(&self, ttl: Duration) -> Option<Bytes> {
        let c = self.cached.load();
        c.as_ref()
            .filter(|c| c.at.elapsed() < ttl)
            .map(|c| c.body.clone())
    }

    /// The cached list while it is fresh; else `fetch`'s (one refresh at a time), or the
    /// stale copy when the refresh fails.
    pub async fn get(
        &self,
        ttl: Duration,
        fetch: impl Future<Output = Result<Bytes, GatewayError>>,
    ) -> Result<Bytes, GatewayError> {
        if let Some(b) = self.fresh(ttl) {
            return Ok(b);
        }
        let _guard = self.refresh.lock().await;
        if let Some(b) = self.fresh(ttl) {
            return Ok(b);
        }
        match fetch.await {
            Ok(body) => {
                self.cached.store(Some(Arc::new(Cached {
                    at: Instant::now(),
                    body: body.clone(),
                })));
                Ok(body)
            }
            Err(e) => match self.cached.load_full() {
                Some(stale) => {
                    tracing::warn!(error = %e, "model list refresh failed; serving the cached copy");
                    Ok(stale.body.clone())
                }
                None => Err(e),
            },
        }
    }
}
