//! Which upstreams a request may go to, in order, and which credential each attempt uses.
//!
//! A key pinned to an upstream (`upstream:`) goes there; otherwise the first route whose
//! model globs match decides; otherwise the `default` upstream (the flat seed keys) serves.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::auth::Principal;
use super::forward::Upstream;
use crate::credentials::Credential;
use crate::error::GatewayError;
use crate::runtime::Generation;

/// A compiled `routes:` entry.
#[derive(Debug)]
pub struct Route {
    pub models: Vec<String>,
    pub upstreams: Arc<[Arc<Upstream>]>,
    pub rename: Vec<(String, String)>,
    pub attempts: usize,
    pub backoff: Duration,
}

/// The upstreams one request will try (shared with the route: no allocation per request).
#[derive(Debug, Clone)]
pub struct Plan {
    pub upstreams: Arc<[Arc<Upstream>]>,
    pub attempts: usize,
    pub backoff: Duration,
    /// Upstream model name, when the route renames the client's model.
    pub rename_to: Option<String>,
}

/// How an attempt authenticates to its upstream.
#[derive(Clone)]
pub enum CredentialChoice {
    Named(Arc<Credential>),
    Header(HeaderValue),
    None,
}

pub fn plan(
    generation: &Generation,
    principal: &Principal,
    model: Option<&str>,
) -> Result<Plan, GatewayError> {
    if let Some(name) = principal
        .policy
        .as_ref()
        .and_then(|p| p.upstream.as_deref())
    {
        let up = generation
            .upstream(name)
            .ok_or_else(|| GatewayError::internal("the key's upstream is not configured"))?;
        return Ok(Plan {
            upstreams: Arc::from([up]),
            attempts: 1,
            backoff: Duration::ZERO,
            rename_to: None,
        });
    }
    if let Some(m) = model {
        for r in &generation.routes {
            if crate::glob::any(&r.models, m) {
                let rename_to = r
                    .rename
                    .iter()
                    .find(|(from, _)| from == m)
                    .map(|(_, to)| to.clone());
                return Ok(Plan {
                    upstreams: r.upstreams.clone(),
                    attempts: r.attempts,
                    backoff: r.backoff,
                    rename_to,
                });
            }
        }
    }
    Ok(Plan {
        upstreams: generation.default_plan.clone(),
        attempts: 1,
        backoff: Duration::ZERO,
        rename_to: None,
    })
}

/// The key's own credential wins, then the upstream's, then the seed form's upstream key
/// (or, under `passthrough_unknown_keys`, the caller's own header).
pub fn credential_for(
    generation: &Generation,
    principal: &Principal,
    upstream: &Upstream,
) -> CredentialChoice {
    let named = principal
        .policy
        .as_ref()
        .and_then(|p| p.credential.as_deref())
        .or(upstream.credential.as_deref())
        .and_then(|name| generation.credentials.get(name));
    if let Some(c) = named {
        return CredentialChoice::Named(c);
    }
    match &principal.upstream_authorization {
        Some(h) => CredentialChoice::Header(h.clone()),
        None => CredentialChoice::None,
    }
}
