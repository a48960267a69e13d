//! Counting real token usage for `tpm` limits: from the `usage` of a JSON answer, or from the
//! usage event of a stream. When the gateway itself asked the upstream for
//! `stream_options.include_usage` (for `tpm` or the metrics), that extra event is removed
//! before the client (or an `on_event` hook) sees it.

use crate::gateway::relay::body::{BodyObserver, EventAction, EventFilter};
use crate::gateway::relay::sse::has_usage_object;

use crate::gateway::stages::policy::{usage_total, UsageMeter};

/// Largest JSON answer kept in memory to read its `usage`.
const MAX_OBSERVED: usize = 4 * 1024 * 1024;

pub struct UsageFilter {
    /// The key's tpm bucket, if it has one.
    meter: Option<UsageMeter>,
    /// The client did not ask for usage: drop the usage-only event after counting it.
    strip: bool,
}

impl UsageFilter {
    pub fn new(meter: Option<UsageMeter>, strip: bool) -> Self {
        UsageFilter { meter, strip }
    }
}

/// The JSON after `data:` of one event, if it is a single-line data event.
fn event_data(event: &[u8]) -> Option<&[u8]> {
    let text = event.strip_prefix(b"data:")?;
    let text = text.strip_prefix(b" ").unwrap_or(text);
    let end = text
        .iter()
        .position(|b| *b == b'\n' || *b == b'\r')
        .unwrap_or(text.len());
    Some(&text[..end])
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
        if let (Some(meter), Some(total)) = (&self.meter, usage_total(data)) {
            meter.charge(total);
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
}

pub struct UsageObserver {
    meter: UsageMeter,
    buf: Vec<u8>,
    overflow: bool,
    charged: bool,
}

impl UsageObserver {
    pub fn new(meter: UsageMeter) -> Self {
        UsageObserver {
            meter,
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
        if let Some(total) = usage_total(&self.buf) {
            self.charged = true;
            self.meter.charge(total);
        }
    }
}

impl BodyObserver for UsageObserver {
    fn on_chunk(&mut self, chunk: &[u8]) {
        if self.overflow || self.buf.len() + chunk.len() > MAX_OBSERVED {
            self.overflow = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(chunk);
        // Charge as soon as the answer is complete, before its last bytes leave: a client's
        // next request must already see the spend.
        if self.buf.trim_ascii_end().ends_with(b"}") {
            self.try_charge();
        }
    }

    fn on_end(&mut self) {
        self.try_charge();
    }
}
