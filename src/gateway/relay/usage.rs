//! Counting real token usage for `tpm` limits: from the `usage` of a JSON answer, or from the
//! usage event of a stream. When the gateway itself asked the upstream for
//! `stream_options.include_usage`, that extra event is removed before the client sees it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::gateway::relay::body::{BodyObserver, EventAction, EventFilter};

use crate::gateway::stages::policy::{usage_total, UsageMeter};

/// Largest JSON answer kept in memory to read its `usage`.
const MAX_OBSERVED: usize = 4 * 1024 * 1024;

/// The input and output tokens an answer reported, shared between the tap that reads them
/// and the access-log record that reports them when the answer ends.
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

    /// Reads `usage.prompt_tokens` / `usage.completion_tokens` of an answer or chunk.
    fn add_from(&self, json: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Usage {
            prompt_tokens: Option<u64>,
            completion_tokens: Option<u64>,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            usage: Option<Usage>,
        }
        if let Ok(Answer { usage: Some(u) }) = serde_json::from_slice::<Answer>(json) {
            self.input
                .fetch_add(u.prompt_tokens.unwrap_or(0), Ordering::Relaxed);
            self.output
                .fetch_add(u.completion_tokens.unwrap_or(0), Ordering::Relaxed);
        }
    }
}

pub struct UsageFilter {
    meter: UsageMeter,
    tally: Arc<UsageTally>,
    /// The client did not ask for usage: drop the usage-only event after counting it.
    strip: bool,
}

impl UsageFilter {
    pub fn new(meter: UsageMeter, tally: Arc<UsageTally>, strip: bool) -> Self {
        UsageFilter {
            meter,
            tally,
            strip,
        }
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl EventFilter for UsageFilter {
    fn on_event(&mut self, event: &[u8]) -> EventAction {
        // Cheap test first: almost every event has no usage object.
        if !contains(event, b"\"usage\":{") && !contains(event, b"\"usage\": {") {
            return EventAction::Keep;
        }
        let Some(data) = event_data(event) else {
            return EventAction::Keep;
        };
        if let Some(total) = usage_total(data) {
            self.meter.charge(total);
            self.tally.add_from(data);
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
    tally: Arc<UsageTally>,
    buf: Vec<u8>,
    overflow: bool,
    charged: bool,
}

impl UsageObserver {
    pub fn new(meter: UsageMeter, tally: Arc<UsageTally>) -> Self {
        UsageObserver {
            meter,
            tally,
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
            self.tally.add_from(&self.buf);
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
