//! A request that passed every phase before the upstream, and where on an upstream it goes.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use super::forward::Upstream;
use crate::gateway::relay::body::ResponseBody;
use crate::gateway::stages::auth::Principal;
use crate::gateway::stages::routing::Plan;

/// What the phases before the upstream decided: answer now, or send this upstream.
pub enum Step {
    Respond(Response<ResponseBody>),
    Forward(Box<Prepared>),
}

/// Where on an upstream a request goes.
#[derive(Debug, Clone)]
pub enum Target {
    Chat,
    /// `/v1/<rest>` under the upstream's base URL.
    V1(String),
    /// A path (with query) a script chose, on the upstream's origin.
    Path(String),
}

impl Target {
    pub fn url<'u>(&self, upstream: &'u Upstream, query: Option<&str>) -> Cow<'u, str> {
        match self {
            Target::Chat => upstream.chat_url(query),
            Target::V1(rest) => Cow::Owned(upstream.url_for(rest, query)),
            Target::Path(path) => Cow::Owned(format!("{}{}", upstream.origin(), path)),
        }
    }

    /// Path and query of [`Target::url`] (what scripts see as `req.path`).
    pub fn path(&self, upstream: &Upstream, query: Option<&str>) -> String {
        match self {
            Target::Path(p) => p.clone(),
            _ => {
                let url = self.url(upstream, query);
                url.strip_prefix(upstream.origin())
                    .unwrap_or(&url)
                    .to_owned()
            }
        }
    }
}

/// A request ready for the upstream.
pub struct Prepared {
    pub principal: Arc<Principal>,
    pub method: http::Method,
    pub target: Target,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Concurrency slot of the key, held until the response ends.
    pub permit: Option<crate::gateway::stages::policy::Slot>,
    /// The key's usage meter, handed to the relay.
    pub usage: Option<crate::usage::RequestMeter>,
    /// Whether the gateway (not the client) asked for `stream_options.include_usage`.
    pub injected_usage: bool,
    /// What `on_request` hooks left in `req.ctx`, for the response hooks.
    pub script_ctx: Option<rhai::Map>,
    /// The upstreams to try, in order.
    pub plan: Plan,
}
