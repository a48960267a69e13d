//! The relay phase: the upstream's answer on its way to the client. [`body`] is the response
//! body (fixed bytes, or the upstream relay with SSE framing, idle timeout and a final error
//! event), [`sse`] the event framer, [`usage`] the `tpm` taps, [`access_log`] the record
//! written when the body ends. [`Taps`] attaches what a request needs to its answer.

pub mod access_log;
pub mod body;
pub mod sse;
pub mod usage;

use std::sync::Arc;

use http::Response;

use crate::error::GatewayError;
use crate::gateway::stages::auth::Principal;
use crate::gateway::stages::policy::UsageMeter;
use crate::gateway::stages::scripts;
use crate::gateway::upstream::prepared::Prepared;
use crate::scripting::Plugins;
use body::ResponseBody;

/// What the relay needs of a prepared request, taken from it before it is dropped.
pub struct Taps {
    principal: Arc<Principal>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    injected_usage: bool,
    script_ctx: Option<rhai::Map>,
}

impl Taps {
    pub fn take(p: &mut Prepared) -> Self {
        Taps {
            principal: p.principal.clone(),
            permit: p.permit.take(),
            injected_usage: p.injected_usage,
            script_ctx: p.script_ctx.take(),
        }
    }

    /// Attaches the stream filters (`on_event` hooks, usage metering), the key's concurrency
    /// slot (held until the body ends) and runs `on_response` on a buffered answer.
    pub async fn attach(
        self,
        plugins: &Arc<Plugins>,
        max_body_bytes: usize,
        mut resp: Response<ResponseBody>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let Taps {
            principal,
            permit,
            injected_usage,
            mut script_ctx,
        } = self;
        let is_sse = resp.body().is_event_stream();
        if let Some(relay) = resp.body_mut().relay_mut() {
            if let Some(permit) = permit {
                relay.guard(Box::new(permit));
            }
            let meter = principal
                .policy
                .as_ref()
                .and_then(|pol| pol.tpm.clone())
                .map(UsageMeter::new);
            // Before the scripts' filter: the usage event the gateway asked for is its own.
            if relay.is_sse() {
                if meter.is_some() || injected_usage {
                    relay.filter(Box::new(usage::UsageFilter::new(meter, injected_usage)));
                }
            } else if let Some(meter) = meter {
                relay.observe(Box::new(usage::UsageObserver::new(meter)));
            }
        }
        if is_sse && plugins.has_on_event() {
            if let Some(relay) = resp.body_mut().relay_mut() {
                relay.filter(Box::new(scripts::ScriptEventFilter::new(
                    plugins.clone(),
                    script_ctx.take().unwrap_or_default(),
                )));
            }
        }
        if !is_sse && plugins.has_on_response() {
            resp = scripts::on_response(
                plugins,
                resp,
                script_ctx.unwrap_or_default(),
                max_body_bytes,
            )
            .await?;
        }
        Ok(resp)
    }
}
