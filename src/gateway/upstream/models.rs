//! `GET /v1/models`: the static `models:` list when configured, else the upstream's list,
//! fetched with the caller's mapped credential and cached for `models_cache_ttl`. A failed
//! refresh serves the stale copy; with no copy at all the client gets 502.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use super::credential::{credential_for, CredentialChoice};
use super::errors::upstream_error_text;
use super::forward::Upstream;
use crate::config::ModelEntry;
use crate::credentials::Credentials;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::stages::auth::Principal;
use crate::gateway::stages::routing::RouteTable;

/// The model list a principal sees: the static list, or the merged lists of every upstream it
/// can reach; in both cases only the models its `models` globs allow.
pub async fn list_for(
    routing: &RouteTable,
    credentials: &Credentials,
    static_models: Option<&Bytes>,
    ttl: Duration,
    principal: &Principal,
) -> Result<Bytes, GatewayError> {
    let globs: &[String] = principal
        .policy
        .as_ref()
        .map(|p| p.models.as_slice())
        .unwrap_or(&[]);
    if let Some(list) = static_models {
        return if globs.is_empty() {
            Ok(list.clone())
        } else {
            filter_merge(std::slice::from_ref(list), globs)
        };
    }
    let upstreams = routing.reachable(principal);
    let mut lists = Vec::with_capacity(upstreams.len());
    let mut last_err = None;
    for up in &upstreams {
        let choice = credential_for(credentials, principal, up);
        let lease = match &choice {
            CredentialChoice::Named(c) => match c.lease().await {
                Ok(l) => Some(l),
                Err(e) => {
                    last_err = Some(e.into_gateway_error());
                    continue;
                }
            },
            _ => None,
        };
        let auth = match (&choice, &lease) {
            (CredentialChoice::Named(_), Some(l)) => Some(&l.authorization),
            (CredentialChoice::Header(h), _) => Some(h),
            _ => None,
        };
        match up
            .models_cache
            .get(ttl, fetch(up, up.models_url(), auth))
            .await
        {
            Ok(b) => lists.push(b),
            Err(e) => last_err = Some(e),
        }
    }
    if lists.is_empty() {
        return Err(last_err.unwrap_or_else(|| {
            GatewayError::new(
                ErrorKind::BadGateway,
                "upstream_models_unavailable",
                "No upstream model list",
            )
        }));
    }
    if lists.len() == 1 && globs.is_empty() {
        return Ok(lists.swap_remove(0));
    }
    filter_merge(&lists, globs)
}

/// Merges OpenAI model lists (first occurrence of an id wins) and keeps the allowed ids.
fn filter_merge(lists: &[Bytes], globs: &[String]) -> Result<Bytes, GatewayError> {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for list in lists {
        let v: serde_json::Value = serde_json::from_slice(list)
            .map_err(|_| GatewayError::internal("a cached model list is not JSON"))?;
        if let Some(items) = v.get("data").and_then(|d| d.as_array()) {
            for m in items {
                let Some(id) = m.get("id").and_then(|i| i.as_str()) else {
                    continue;
                };
                if (globs.is_empty() || crate::glob::any(globs, id)) && seen.insert(id.to_owned()) {
                    data.push(m.clone());
                }
            }
        }
    }
    Ok(Bytes::from(
        serde_json::json!({"object": "list", "data": data}).to_string(),
    ))
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
        tracing::warn!(error = %upstream_error_text(&e), "model list fetch failed");
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
        tracing::warn!(error = %upstream_error_text(&e), "model list body failed");
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
