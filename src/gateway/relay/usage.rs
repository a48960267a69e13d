//! Reading the upstream's real token usage, from the `usage` of a JSON answer or from the
//! usage event of a stream, for the key's `tpm` bucket and its usage meter (the ledger and
//! budgets). When the gateway itself asked the upstream for `stream_options.include_usage`,
//! that extra event is removed before the client sees it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::gateway::relay::body::{BodyObserver, EventAction, EventFilter};
use crate::gateway::relay::sse::{event_data, has_usage_object};
use crate::gateway::stages::policy::UsageMeter;
use crate::usage::meter::{read_usage, TokenUsage};
use crate::usage::RequestMeter;

/// Largest JSON answer kept in memory to read its `usage`.
const MAX_OBSERVED: usize = 4 * 1024 * 1024;

/// The input and output tokens an answer reported, shared between the tap that reads them
/// and the request's end record.
#[derive(Debug, Default)]
pub struct UsageTally {
    input: AtomicU64,
    output: AtomicU64,
}

impl UsageTally {
    /// `(input, output)` tokens.
    pub fn get(&self) -> (u64, u64) {
        (
            self.input.load(Ordering::Relaxed),
            self.output.load(Ordering::Relaxed),
        )
    }

    fn add(&self, u: &TokenUsage) {
        self.input.fetch_add(u.input, Ordering::Relaxed);
        self.output.fetch_add(u.output, Ordering::Relaxed);
    }
}

/// Where a request's usage goes.
pub struct UsageTaps {
    pub tpm: Option<UsageMeter>,
    pub request: Option<RequestMeter>,
    pub tally: Arc<UsageTally>,
}

impl UsageTaps {
    pub fn is_empty(&self) -> bool {
        self.tpm.is_none() && self.request.is_none()
    }

    fn charge(&mut self, u: TokenUsage) {
        self.tally.add(&u);
        if let Some(tpm) = &self.tpm {
            tpm.charge(u.total);
        }
        if let Some(meter) = self.request.as_mut() {
            meter.usage(u);
        }
    }

    fn broken(&mut self) {
        if let Some(meter) = self.request.as_mut() {
            meter.broken();
        }
    }
}

pub struct UsageFilter {
    taps: UsageTaps,
    /// The client did not ask for usage: drop the usage-only event after counting it.
    strip: bool,
}

impl UsageFilter {
    pub fn new(taps: UsageTaps, strip: bool) -> Self {
        UsageFilter { taps, strip }
    }
}

impl EventFilter for UsageFilter {
    fn on_event(&mut self, event: &[u8]) -> EventAction {
        // Cheap test first: almost every event has no usage object.
        if !has_usage_object(event) {
            return EventAction::Keep;
        }
        let Some(data) = event_data(event) else {
            return EventAction::Keep;
        };
        if let Some(u) = read_usage(data) {
            self.taps.charge(u);
        }
        if self.strip {
            #[derive(serde::Deserialize)]
            struct Chunk {
                choices: Option<Vec<serde::de::IgnoredAny>>,
            }
            if let Ok(c) = serde_json::from_slice::<Chunk>(data) {
                if c.choices.is_none_or(|ch| ch.is_empty()) {
                    return EventAction::Drop;
                }
            }
        }
        EventAction::Keep
    }

    fn on_broken(&mut self, _code: &'static str) {
        self.taps.broken();
    }
}

pub struct UsageObserver {
    taps: UsageTaps,
    buf: Vec<u8>,
    overflow: bool,
    charged: bool,
}

impl UsageObserver {
    pub fn new(taps: UsageTaps) -> Self {
        UsageObserver {
            taps,
            buf: Vec::new(),
            overflow: false,
            charged: false,
        }
    }
}

impl UsageObserver {
    fn try_charge(&mut self) {
        if self.charged {
            return;
        }
        if let Some(u) = read_usage(&self.buf) {
            self.charged = true;
            self.taps.charge(u);
        }
    }
}

impl BodyObserver for UsageObserver {
    fn on_chunk(&mut self, chunk: &[u8]) {
        if self.charged || self.overflow {
            return;
        }
        if self.buf.len() + chunk.len() > MAX_OBSERVED {
            self.overflow = true;
            self.buf = Vec::new();
            return;
        }
        // Charge as soon as the answer is complete, before its last bytes leave: a client's
        // next request must already see the spend.
        let may_end = chunk.trim_ascii_end().ends_with(b"}");
        if self.buf.is_empty() {
            // An answer that comes whole in one chunk is read where it is, not copied.
            if let Some(u) = may_end.then(|| read_usage(chunk)).flatten() {
                self.charged = true;
                self.taps.charge(u);
                return;
            }
            self.buf.extend_from_slice(chunk);
            return;
        }
        self.buf.extend_from_slice(chunk);
        if may_end {
            self.try_charge();
        }
    }

    fn on_end(&mut self) {
        self.try_charge();
    }

    fn on_broken(&mut self, _code: &'static str) {
        self.taps.broken();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn observed(chunks: &[&[u8]], end: bool) -> (u64, u64) {
        let tally = Arc::new(UsageTally::default());
        let mut o = UsageObserver::new(UsageTaps {
            tpm: None,
            request: None,
            tally: tally.clone(),
        });
        for c in chunks {
            o.on_chunk(c);
        }
        if end {
            o.on_end();
        }
        tally.get()
    }

    #[test]
    fn a_plain_answer_is_charged_once_whole_or_in_pieces() {
        let whole: &[u8] =
            br#"{"choices":[{"message":{"content":"}"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        assert_eq!(observed(&[whole], false), (3, 4), "charged before the end");
        // Pieces whose first one ends with a brace but is not the whole answer.
        let (a, b) = whole.split_at(whole.iter().position(|c| *c == b'}').unwrap() + 1);
        assert_eq!(observed(&[a, b], false), (3, 4));
        let (a, b) = whole.split_at(20);
        assert_eq!(observed(&[a, b, b"\n"], true), (3, 4));
        assert_eq!(observed(&[whole, whole], true), (3, 4), "charged once");
        assert_eq!(observed(&[b"{\"usage\":null}"], true), (0, 0));
    }
}
