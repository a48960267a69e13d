//! What an answer tells the end record as it passes: for streams, when the first content (or
//! tool call) arrived, the gaps between content events and the usage event; for other
//! answers, the `usage` of the JSON body. It only reads: removing the usage event the gateway
//! asked for is `relay::usage`'s job.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::finished::Usage;
use super::histogram::{LocalHistogram, TOKEN_GAP_BUCKETS};
use crate::gateway::relay::sse::{event_data, find, has_usage_object};
use crate::usage::meter::read_usage;

/// Largest plain answer kept to read its `usage`.
const MAX_KEPT: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct StreamTap {
    start: Instant,
    pub first_token: Option<Duration>,
    last_token: Option<Instant>,
    pub token_gaps: Option<LocalHistogram>,
    pub usage: Option<Usage>,
    /// Whether to read the answer's usage here: not when the usage taps
    /// (`gateway::relay::usage`) already read it for the request's meter, whose tally the end
    /// record then takes, so the answer is parsed once.
    reads_usage: bool,
    /// A plain answer's chunks (shared, not copied) until it ends.
    kept: Vec<Bytes>,
    kept_len: usize,
}

/// Whether an event carries output: a non-empty `content` (or `reasoning_content`) string, or
/// a tool call.
fn carries_token(event: &[u8]) -> bool {
    let mut rest = event;
    while let Some(i) = find(rest, b"content\":") {
        rest = &rest[i + 9..];
        let after = rest.trim_ascii_start();
        if after.first() == Some(&b'"') && after.get(1).is_some_and(|b| *b != b'"') {
            return true;
        }
    }
    find(event, b"\"tool_calls\"").is_some_and(|i| {
        let after = event[i + 12..].trim_ascii_start();
        after
            .strip_prefix(b":")
            .is_some_and(|v| v.trim_ascii_start().first() == Some(&b'['))
    })
}

fn usage_of(json: &[u8]) -> Option<Usage> {
    read_usage(json).map(|u| Usage {
        input: u.input,
        output: u.output,
    })
}

impl StreamTap {
    pub fn new(start: Instant) -> Self {
        StreamTap {
            start,
            first_token: None,
            last_token: None,
            token_gaps: None,
            usage: None,
            reads_usage: true,
            kept: Vec::new(),
            kept_len: 0,
        }
    }

    /// A tap that leaves the usage to the usage taps (timing only).
    pub fn without_usage(mut self) -> Self {
        self.reads_usage = false;
        self
    }

    /// One SSE event (with its blank line) as the upstream sent it.
    pub fn on_event(&mut self, event: &[u8]) {
        if carries_token(event) {
            let now = Instant::now();
            match self.last_token {
                None => self.first_token = Some(now.duration_since(self.start)),
                Some(last) => self
                    .token_gaps
                    .get_or_insert_with(|| LocalHistogram::new(TOKEN_GAP_BUCKETS))
                    .observe(now.duration_since(last)),
            }
            self.last_token = Some(now);
        }
        if !self.reads_usage || !has_usage_object(event) {
            return;
        }
        if let Some(usage) = event_data(event).and_then(usage_of) {
            self.usage = Some(usage);
        }
    }

    /// One chunk of a plain answer.
    pub fn on_chunk(&mut self, chunk: &Bytes) {
        if !self.reads_usage {
            return;
        }
        if self.kept_len + chunk.len() > MAX_KEPT {
            self.kept = Vec::new();
            self.kept_len = usize::MAX / 2;
            return;
        }
        self.kept_len += chunk.len();
        self.kept.push(chunk.clone());
    }

    /// A plain answer ended: read its usage.
    pub fn on_end(&mut self) {
        let kept = std::mem::take(&mut self.kept);
        let found = match kept.as_slice() {
            [] => None,
            [one] => usage_of(one),
            many => usage_of(&many.concat()),
        };
        if let Some(usage) = found {
            self.usage = Some(usage);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn content_and_tool_calls_are_tokens_an_empty_role_event_is_not() {
        assert!(!carries_token(
            br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(carries_token(
            br#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#
        ));
        assert!(carries_token(
            br#"data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#
        ));
        assert!(!carries_token(b"data: [DONE]\n\n"));
    }

    #[test]
    fn a_usage_event_is_read() {
        let ev =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n";
        let mut t = StreamTap::new(Instant::now());
        t.on_event(ev);
        assert_eq!(
            t.usage,
            Some(Usage {
                input: 7,
                output: 3
            })
        );
        let mut null = StreamTap::new(Instant::now());
        null.on_event(b"data: {\"choices\":[{}],\"usage\":null}\n\n");
        assert_eq!(null.usage, None);
    }

    #[test]
    fn gaps_are_counted_between_token_events() {
        let mut t = StreamTap::new(Instant::now());
        for _ in 0..3 {
            t.on_event(br#"data: {"choices":[{"delta":{"content":"x"}}]}"#);
        }
        assert!(t.first_token.is_some());
        assert_eq!(t.token_gaps.as_ref().unwrap().count(), 2);
    }

    #[test]
    fn a_plain_answer_split_in_chunks_gives_its_usage() {
        let mut t = StreamTap::new(Instant::now());
        t.on_chunk(&Bytes::from_static(
            b"{\"choices\":[{}],\"usage\":{\"prompt_",
        ));
        t.on_chunk(&Bytes::from_static(b"tokens\":5,\"completion_tokens\":9}}"));
        t.on_end();
        assert_eq!(
            t.usage,
            Some(Usage {
                input: 5,
                output: 9
            })
        );
    }
}
