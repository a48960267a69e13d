//! `GET /v1/models`: the static `models:` list when configured, else the upstream's list,
//! fetched with the caller's mapped credential and cached for `models_cache_ttl`. A failed
//! refresh serves the stale copy; with no copy at all the client gets 502.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::HeaderValue;

use crate::config::ModelEntry;
use crate::error::{ErrorKind, GatewayError};

use super::forward::{error_chain, Upstream};

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

/// Renders a static list in the OpenAI shape.
pub fn static_list(models: &[ModelEntry]) -> Bytes {
    let data: Vec<_> = models
        .iter()
        .map(|m| {
            serde_json::json!({"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by})
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

impl ModelsCache {
    fn fresh(&self, ttl: Duration) -> Option<Bytes> {
        let c = self.cached.load();
        c.as_ref()
            .filter(|c| c.at.elapsed() < ttl)
            .map(|c| c.body.clone())
    }

    pub async fn get(
        &self,
        upstream: &Upstream,
        url: String,
        authorization: Option<&HeaderValue>,
        ttl: Duration,
    ) -> Result<Bytes, GatewayError> {
        if let Some(b) = self.fresh(ttl) {
            return Ok(b);
        }
        let _guard = self.refresh.lock().await;
        if let Some(b) = self.fresh(ttl) {
            return Ok(b);
        }
        match fetch(upstream, &url, authorization).await {
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

async fn fetch(
    upstream: &Upstream,
    url: &str,
    authorization: Option<&HeaderValue>,
) -> Result<Bytes, GatewayError> {
    let mut req = upstream.client().get(url).timeout(Duration::from_secs(30));
    if let Some(a) = authorization {
        req = req.header(http::header::AUTHORIZATION, a.clone());
    }
    let bad = |msg: &'static str| {
        GatewayError::new(ErrorKind::BadGateway, "upstream_models_unavailable", msg)
    };
    let resp = req.send().await.map_err(|e| {
        tracing::warn!(error = %error_chain(&e), "model list fetch failed");
        bad("The upstream model list could not be fetched")
    })?;
    if !resp.status().is_success() {
        tracing::warn!(
            status = resp.status().as_u16(),
            "upstream refused the model list"
        );
        return Err(bad("The upstream refused the model list request"));
    }
    let body = resp.bytes().await.map_err(|e| {
        tracing::warn!(error = %error_chain(&e), "model list body failed");
        bad("The upstream model list could not be read")
    })?;
    // Only cache something that is a model list.
    let ok = serde_json::from_slice::<serde_json::Value>(&body)
        .map(|v| v.get("data").is_some_and(|d| d.is_array()))
        .unwrap_or(false);
    if !ok {
        return Err(bad("The upstream model list was not in the OpenAI format"));
    }
    Ok(body)
}
