//! Which upstreams a request may go to, in order, and which credential each attempt uses.
//!
//! A key pinned to an upstream (`upstream:`) goes there; otherwise the first route whose
//! model globs match decides; otherwise the `default` upstream (the flat seed keys) serves.

use std::sync::Arc;
use std::time::Duration;

use super::auth::Principal;
use crate::error::GatewayError;
use crate::gateway::upstream::forward::Upstream;

/// A compiled `routes:` entry.
#[derive(Debug)]
pub struct ModelRoute {
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

/// The generation's upstreams and routes.
#[derive(Debug)]
pub struct RouteTable {
    /// Every configured upstream, `default` first.
    pub upstreams: Vec<Arc<Upstream>>,
    pub routes: Vec<ModelRoute>,
    pub default_upstream: Arc<Upstream>,
    /// The plan of a model no route matches: the default upstream alone.
    pub default_plan: Arc<[Arc<Upstream>]>,
}

impl RouteTable {
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        routes: Vec<ModelRoute>,
        default_upstream: Arc<Upstream>,
    ) -> Self {
        RouteTable {
            upstreams,
            routes,
            default_plan: Arc::from([default_upstream.clone()]),
            default_upstream,
        }
    }

    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name).cloned()
    }

    /// Every upstream a principal's requests can reach (for `/v1/models`).
    pub fn reachable(&self, principal: &Principal) -> Vec<Arc<Upstream>> {
        if let Some(name) = principal
            .policy
            .as_ref()
            .and_then(|p| p.upstream.as_deref())
        {
            return self.upstream(name).into_iter().collect();
        }
        let mut out: Vec<Arc<Upstream>> = Vec::new();
        let candidates = self
            .routes
            .iter()
            .flat_map(|r| r.upstreams.iter())
            .chain(std::iter::once(&self.default_upstream));
        for up in candidates {
            if !out.iter().any(|u| u.name == up.name) {
                out.push(up.clone());
            }
        }
        out
    }

    /// The upstreams a request tries, in order: the key's pinned upstream, else the first
    /// route whose globs match the model, else the default upstream.
    pub fn plan(&self, principal: &Principal, model: Option<&str>) -> Result<Plan, GatewayError> {
        if let Some(name) = principal
            .policy
            .as_ref()
            .and_then(|p| p.upstream.as_deref())
        {
            let up = self
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
            for r in &self.routes {
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
            upstreams: self.default_plan.clone(),
            attempts: 1,
            backoff: Duration::ZERO,
            rename_to: None,
        })
    }
}
