//! The relay phase: the upstream's answer on its way to the client. [`body`] is the response
//! body (fixed bytes, or the upstream relay with SSE framing, idle timeout and a final error
//! event), [`sse`] the event framer, [`usage`] the usage taps (tpm, the key's meter),
//! [`access_log`] the record written when the body ends. [`Taps`] attaches what a request
//! needs to its answer.

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
    permit: Option<crate::gateway::stages::policy::Slot>,
    usage: Option<crate::usage::RequestMeter>,
    /// Where the usage taps put the answer's tokens, for the request's end record.
    tally: Arc<usage::UsageTally>,
    injected_usage: bool,
    script_ctx: Option<rhai::Map>,
}

impl Taps {
    pub fn take(p: &mut Prepared) -> Self {
        Taps {
            principal: p.principal.clone(),
            permit: p.permit.take(),
            usage: p.usage.take(),
            tally: Arc::default(),
            injected_usage: p.injected_usage,
            script_ctx: p.script_ctx.take(),
        }
    }

    /// The tally the usage taps fill, for the request's end record.
    pub fn usage_tally(&self) -> Option<Arc<usage::UsageTally>> {
        Some(self.tally.clone())
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
            usage: mut meter,
            tally,
            injected_usage,
            mut script_ctx,
        } = self;
        if let Some(meter) = meter.as_mut() {
            meter.answered(resp.status());
        }
        let is_sse = resp.body().is_event_stream();
        let runs_on_response = !is_sse && plugins.has_on_response();
        // The hook may fail or answer an error of its own after the meter (with the body it
        // read) has counted a success: that failure is counted here.
        let failure = meter
            .as_ref()
            .filter(|_| runs_on_response && resp.status().as_u16() < 400)
            .map(|m| m.failure_note());
        let is_json = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| {
                v.as_bytes()
                    .windows(4)
                    .any(|w| w.eq_ignore_ascii_case(b"json"))
            });
        if let Some(relay) = resp.body_mut().relay_mut() {
            if let Some(permit) = permit {
                relay.guard(Box::new(permit));
            }
            let taps = usage::UsageTaps {
                tpm: principal.policy.as_ref().and_then(UsageMeter::of),
                request: meter.take(),
                tally,
            };
            if relay.is_sse() {
                if !taps.is_empty() || injected_usage {
                    relay.filter(Box::new(usage::UsageFilter::new(taps, injected_usage)));
                }
            } else if taps.tpm.is_some() || (taps.request.is_some() && is_json) {
                relay.observe(Box::new(usage::UsageObserver::new(taps)));
            } else if let Some(meter) = taps.request {
                // No usage to read (a file, audio, …): the meter only counts the request,
                // when its body ends.
                relay.guard(Box::new(meter));
            }
        }
        // After the usage filter: `on_event` sees the stream as the client gets it, without
        // the usage event the gateway asked for.
        if is_sse && plugins.has_on_event() {
            if let Some(relay) = resp.body_mut().relay_mut() {
                relay.filter(Box::new(scripts::ScriptEventFilter::new(
                    plugins.clone(),
                    script_ctx.take().unwrap_or_default(),
                )));
            }
        }
        if runs_on_response {
            let answered = scripts::on_response(
                plugins,
                resp,
                script_ctx.unwrap_or_default(),
                max_body_bytes,
            )
            .await;
            let failed = answered
                .as_ref()
                .map_or(true, |r| r.status().as_u16() >= 400);
            if let Some(note) = failure.filter(|_| failed) {
                note.record();
            }
            resp = answered?;
        }
        Ok(resp)
    }
}
