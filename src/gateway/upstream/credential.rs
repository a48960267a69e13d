//! Which credential an upstream attempt uses.

use std::sync::Arc;

use http::HeaderValue;

use super::forward::Upstream;
use crate::credentials::{Credential, Credentials};
use crate::gateway::stages::auth::Principal;

/// How an attempt authenticates to its upstream.
#[derive(Clone)]
pub enum CredentialChoice {
    Named(Arc<Credential>),
    Header(HeaderValue),
    None,
}

/// The key's own credential wins, then the upstream's, then the seed form's upstream key
/// (or, under `passthrough_unknown_keys`, the caller's own header).
pub fn credential_for(
    credentials: &Credentials,
    principal: &Principal,
    upstream: &Upstream,
) -> CredentialChoice {
    let named = principal
        .policy
        .as_ref()
        .and_then(|p| p.credential.as_deref())
        .or(upstream.credential.as_deref())
        .and_then(|name| credentials.get(name));
    if let Some(c) = named {
        return CredentialChoice::Named(c);
    }
    match &principal.upstream_authorization {
        Some(h) => CredentialChoice::Header(h.clone()),
        None => CredentialChoice::None,
    }
}
