//! One request's meter: created once the key is known, told the model, the budget, the
//! answer's status and the upstream's `usage`, and recorded with the backend. The counts go
//! out as soon as the usage is known (so the key's next request already sees the spend);
//! whatever is left (the request itself, a failure) goes when the meter is dropped, at the end
//! of the answer's body.

use std::sync::Arc;
use std::time::SystemTime;

use super::backend::{self, Charge, Delta};
use super::period::Period;
use super::pricing::Price;
use crate::error::{ErrorKind, GatewayError};

/// Token counts of an OpenAI `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    /// `total_tokens`, or input + output when absent.
    pub total: u64,
}

/// The `usage` of an OpenAI answer or chunk, if present.
pub fn read_usage(json: &[u8]) -> Option<TokenUsage> {
    #[derive(serde::Deserialize)]
    struct Usage {
        total_tokens: Option<u64>,
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    let u = serde_json::from_slice::<Answer>(json).ok()?.usage?;
    let input = u.prompt_tokens.unwrap_or(0);
    let output = u.completion_tokens.unwrap_or(0);
    Some(TokenUsage {
        input,
        output,
        total: u.total_tokens.unwrap_or(input + output),
    })
}

/// Whether a refusal came from the key's own limits (rpm, tpm, max_concurrent, budget).
fn is_key_limit(e: &GatewayError) -> bool {
    e.kind == ErrorKind::RateLimited && matches!(e.code, "rate_limit_exceeded" | "budget_exceeded")
}

#[derive(Debug)]
pub struct RequestMeter {
    key: Arc<str>,
    model: Box<str>,
    /// The key's budget period and the model's price, when the key has a budget.
    period: Option<Period>,
    price: Option<Price>,
    /// Answered below 400 and, for a relayed body, not broken.
    ok: bool,
    rate_limited: bool,
    /// The request itself was counted already (with its usage).
    counted: bool,
}

impl RequestMeter {
    pub fn new(key: Arc<str>) -> Self {
        RequestMeter {
            key,
            model: Box::from(""),
            period: None,
            price: None,
            ok: false,
            rate_limited: false,
            counted: false,
        }
    }

    /// The client's model name (`None`: counted under `""`).
    pub fn set_model(&mut self, model: Option<&str>) {
        self.model = Box::from(model.unwrap_or(""));
    }

    /// The key has a budget: its spend also counts in `period`, priced by `price`.
    pub fn set_budget(&mut self, period: Period, price: Option<Price>) {
        self.period = Some(period);
        self.price = price;
    }

    /// The gateway answered with this error.
    pub fn refused(&mut self, e: &GatewayError) {
        self.ok = false;
        self.rate_limited |= is_key_limit(e);
    }

    /// The status the client gets.
    pub fn answered(&mut self, status: http::StatusCode) {
        self.ok = status.as_u16() < 400;
    }

    /// The relayed body broke off (upstream gone, idle or total timeout).
    pub fn broken(&mut self) {
        self.ok = false;
    }

    /// The upstream's real usage for this request: recorded now.
    pub fn usage(&mut self, u: TokenUsage) {
        let delta = Delta {
            requests: u64::from(!self.counted),
            input_tokens: u.input,
            output_tokens: u.output,
            cost: self.price.map_or(0.0, |p| p.cost(u.input, u.output)),
            ..Delta::default()
        };
        self.counted = true;
        self.record(delta);
    }

    /// What it takes to count a failure after this meter went with the body (an `on_response`
    /// hook that fails once the answer was read).
    pub fn failure_note(&self) -> FailureNote {
        FailureNote {
            key: self.key.clone(),
            model: self.model.clone(),
            period: self.period,
        }
    }

    fn record(&self, delta: Delta) {
        backend::record(&Charge {
            key: &self.key,
            model: &self.model,
            delta,
            period: self.period,
            at: SystemTime::now(),
        });
    }
}

/// A failure to count for a request whose meter is gone.
#[derive(Debug)]
pub struct FailureNote {
    key: Arc<str>,
    model: Box<str>,
    period: Option<Period>,
}

impl FailureNote {
    pub fn record(self) {
        backend::record(&Charge {
            key: &self.key,
            model: &self.model,
            delta: Delta {
                errors: 1,
                ..Delta::default()
            },
            period: self.period,
            at: SystemTime::now(),
        });
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        let delta = Delta {
            requests: u64::from(!self.counted),
            errors: u64::from(!self.ok),
            rate_limited: u64::from(self.rate_limited),
            ..Delta::default()
        };
        if !delta.is_empty() {
            self.record(delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read() {
        let u = read_usage(br#"{"usage":{"prompt_tokens":2,"completion_tokens":3}}"#).unwrap();
        assert_eq!((u.input, u.output, u.total), (2, 3, 5));
        let u = read_usage(
            br#"{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":9}}"#,
        )
        .unwrap();
        assert_eq!(u.total, 9);
        assert_eq!(read_usage(br#"{"usage":null}"#), None);
        assert_eq!(read_usage(b"not json"), None);
    }

    #[test]
    fn only_the_keys_own_limits_count_as_rate_limited() {
        let own = GatewayError::new(ErrorKind::RateLimited, "budget_exceeded", "x");
        let pool = GatewayError::new(ErrorKind::RateLimited, "upstream_keys_cooling_down", "x");
        assert!(is_key_limit(&own));
        assert!(!is_key_limit(&pool));
        assert!(!is_key_limit(&GatewayError::unauthorized("x")));
    }
}
