//! `GET /v1/models`: the static `models:` list when configured, else the upstream's list,
//! fetched with the caller's mapped credential and cached per credential for
//! `models_cache_ttl`. A failed refresh serves that credential's stale copy; with no copy at
//! all the client gets 502. An upstream that refuses the credential (401/403) is answered
//! with its own status and error.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use super::credential::{credential_for, CredentialChoice};
use super::errors::upstream_error_text;
use super::forward::Upstream;
use super::models_cache::StaleCovers;
use crate::config::ModelEntry;
use crate::credentials::Credentials;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::stages::auth::Principal;
use crate::gateway::stages::routing::RouteTable;

/// Why there is no list.
#[derive(Debug)]
pub enum ModelsError {
    /// The gateway's own answer (502 and the like).
    Gateway(GatewayError),
    /// The upstream refused the credential: its status (401 or 403) and its error body, which
    /// the client gets as they are, as with any other upstream error.
    Refused { status: StatusCode, body: Bytes },
}

impl From<GatewayError> for ModelsError {
    fn from(e: GatewayError) -> Self {
        ModelsError::Gateway(e)
    }
}

impl StaleCovers for ModelsError {
    fn stale_covers(&self) -> bool {
        matches!(self, ModelsError::Gateway(_))
    }
}

impl std::fmt::Display for ModelsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelsError::Gateway(e) => e.fmt(f),
            ModelsError::Refused { status, .. } => {
                write!(f, "the upstream refused the credential ({status})")
            }
        }
    }
}

/// The model list a principal sees: the static list, or the merged lists of every upstream it
/// can reach; in both cases only the models its `models` globs allow.
pub async fn list_for(
    routing: &RouteTable,
    credentials: &Credentials,
    static_models: Option<&Bytes>,
    ttl: Duration,
    principal: &Principal,
) -> Result<Bytes, ModelsError> {
    let globs: &[String] = principal
        .policy
        .as_ref()
        .map(|p| p.models.as_slice())
        .unwrap_or(&[]);
    if let Some(list) = static_models {
        return if globs.is_empty() {
            Ok(list.clone())
        } else {
            Ok(filter_merge(std::slice::from_ref(list), globs)?)
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
                    last_err = Some(ModelsError::Gateway(e.into_gateway_error()));
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
            .get(ttl, auth, fetch(up, up.models_url(), auth))
            .await
        {
            Ok(b) => lists.push(b),
            Err(e) => last_err = Some(e),
        }
    }
    if lists.is_empty() {
        return Err(last_err.unwrap_or_else(|| {
            ModelsError::Gateway(GatewayError::new(
                ErrorKind::BadGateway,
                "upstream_models_unavailable",
                "No upstream model list",
            ))
        }));
    }
    if lists.len() == 1 && globs.is_empty() {
        return Ok(lists.swap_remove(0));
    }
    Ok(filter_merge(&lists, globs)?)
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
) -> Result<Bytes, ModelsError> {
    let mut req = upstream.client().get(url).timeout(Duration::from_secs(30));
    if let Some(a) = authorization {
        req = req.header(http::header::AUTHORIZATION, a.clone());
    }
    let bad = |msg: &'static str| {
        GatewayError::new(ErrorKind::BadGateway, "upstream_models_unavailable", msg)
    };
    let resp = req.send().await.map_err(|e| {
        tracing::warn!(error = %upstream_error_text(&e), "model list fetch failed");
        ModelsError::from(bad("The upstream model list could not be fetched"))
    })?;
    let status = resp.status();
    if !status.is_success() {
        tracing::warn!(
            upstream = %upstream.name,
            status = status.as_u16(),
            "upstream refused the model list"
        );
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(refused(status, resp).await);
        }
        return Err(bad("The upstream refused the model list request").into());
    }
    let body = resp.bytes().await.map_err(|e| {
        tracing::warn!(error = %upstream_error_text(&e), "model list body failed");
        ModelsError::from(bad("The upstream model list could not be read"))
    })?;
    // Only cache something that is a model list.
    let ok = serde_json::from_slice::<serde_json::Value>(&body)
        .map(|v| v.get("data").is_some_and(|d| d.is_array()))
        .unwrap_or(false);
    if !ok {
        return Err(bad("The upstream model list was not in the OpenAI format").into());
    }
    Ok(body)
}

/// The upstream's refusal as the client gets it: its status, and its JSON error body (a body
/// that is not JSON, or cannot be read, is replaced by the gateway's own error of that status).
async fn refused(status: StatusCode, resp: reqwest::Response) -> ModelsError {
    let body = resp.bytes().await.ok().filter(|b| {
        b.len() <= MAX_REFUSAL_BYTES
            && serde_json::from_slice::<serde_json::Value>(b).is_ok_and(|v| v.is_object())
    });
    let body = body.unwrap_or_else(|| {
        let kind = if status == StatusCode::FORBIDDEN {
            ErrorKind::Forbidden
        } else {
            ErrorKind::Unauthorized
        };
        GatewayError::new(
            kind,
            "upstream_refused",
            "The upstream refused the credential for the model list",
        )
        .body_bytes()
    });
    ModelsError::Refused { status, body }
}

/// The largest upstream refusal body passed on.
const MAX_REFUSAL_BYTES: usize = 64 * 1024;
