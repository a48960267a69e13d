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
use crate::gateway::stages::json_scan;

/// Token counts of an OpenAI `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    /// `total_tokens`, or input + output when absent.
    pub total: u64,
}

/// The `usage` of an OpenAI answer or chunk, if present. Only the `usage` member is
/// deserialized: [`top_level_member`] finds it without parsing the rest (an answer is mostly
/// its completion text).
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
    let u = match top_level_member(json, b"usage") {
        Member::Found(value) => serde_json::from_slice::<Option<Usage>>(value).ok()??,
        Member::Absent => return None,
        // An escaped key might spell `usage`: serde_json decodes it.
        Member::Unsure => serde_json::from_slice::<Answer>(json).ok()?.usage?,
    };
    let input = u.prompt_tokens.unwrap_or(0);
    let output = u.completion_tokens.unwrap_or(0);
    Some(TokenUsage {
        input,
        output,
        total: u.total_tokens.unwrap_or(input + output),
    })
}

enum Member<'a> {
    /// The text of its value.
    Found(&'a [u8]),
    /// Not there, the text is not one whole object, or the member is given twice (which
    /// serde_json refuses).
    Absent,
    /// A top-level key has an escape.
    Unsure,
}

/// The member `name` of the top-level object in `json`, found in one skim: strings are
/// skipped whole (`json_scan::string_end`) and brackets counted, so a `"usage"` inside a
/// string or a nested object is not taken for it. Numbers and literals are not checked: the
/// member's own value is, by the caller's parse.
fn top_level_member<'a>(json: &'a [u8], name: &[u8]) -> Member<'a> {
    let skip_ws = |mut i: usize| {
        while json.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if json.get(i) != Some(&b'{') {
        return Member::Absent;
    }
    i += 1;
    let mut depth = 1usize;
    // Where the wanted member's value starts, while it is being skipped.
    let mut value_start: Option<usize> = None;
    let mut found: Option<&[u8]> = None;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => {
                let Some((end, escaped)) = json_scan::string_end(json, i) else {
                    return Member::Absent;
                };
                if depth == 1 && value_start.is_none() {
                    let after = skip_ws(end);
                    if json.get(after) == Some(&b':') {
                        if escaped {
                            return Member::Unsure;
                        }
                        if &json[i + 1..end - 1] == name {
                            if found.is_some() {
                                return Member::Absent;
                            }
                            value_start = Some(skip_ws(after + 1));
                            i = after + 1;
                            continue;
                        }
                    }
                }
                i = end;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    // The top-level object's end also ends a value being skipped.
                    if let Some(start) = value_start.take() {
                        found = Some(&json[start..i]);
                    }
                    return match found {
                        Some(value) if skip_ws(i + 1) == json.len() => Member::Found(value),
                        _ => Member::Absent,
                    };
                }
            }
            b',' if depth == 1 => {
                if let Some(start) = value_start.take() {
                    found = Some(&json[start..i]);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Member::Absent
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
    fn only_the_top_level_usage_member_counts() {
        let tokens = |json: &str| read_usage(json.as_bytes()).map(|u| (u.input, u.output));
        // A "usage" in a string, in a nested object, as a string value: not the answer's.
        let in_text =
            r#"{"choices":[{"message":{"content":"say \"usage\":{\"prompt_tokens\":9}}"}}]}"#;
        assert_eq!(tokens(in_text), None);
        let nested =
            r#"{"choices":[{"usage":{"prompt_tokens":9,"completion_tokens":9}}],"object":"usage"}"#;
        assert_eq!(tokens(nested), None);
        let key_in_text = r#"{"a":"\"usage\":{\"prompt_tokens\":9}","b":["usage",{"usage":{"prompt_tokens":9}}]}"#;
        assert_eq!(tokens(key_in_text), None);
        // The top-level one, wherever it is and whatever surrounds it.
        let both = r#"{"choices":[{"usage":{"prompt_tokens":9}}],"usage" : {"prompt_tokens":2,"completion_tokens":3} ,"x":"}"}"#;
        assert_eq!(tokens(both), Some((2, 3)));
        let first =
            r#" {"usage":{"completion_tokens":4,"extra":{"a":[1,{"b":"}"}]}},"choices":[]} "#;
        assert_eq!(tokens(first), Some((0, 4)));
        // An escaped key is decoded as serde_json decodes it.
        assert_eq!(
            tokens(r#"{"us\u0061ge":{"prompt_tokens":5}}"#),
            Some((5, 0))
        );
        // What serde_json refuses counts nothing: a member twice, a wrong shape, a truncated
        // or trailing text, a top level that is not an object.
        for refused in [
            r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":"1"}}"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"usage":{"prompt_tokens":1}} x"#,
            r#"{"choices":[{"message":{"content":"}"}}],"usage":{"prompt_tokens":1"#,
            r#"[{"usage":{"prompt_tokens":1}}]"#,
            r#"{"usage":{"prompt_tokens":1},"#,
            "",
        ] {
            assert_eq!(tokens(refused), None, "{refused}");
        }
    }

    /// On every edit of real answers that serde_json reads as an object, the skim finds the
    /// same usage as deserializing the whole answer.
    #[test]
    fn agrees_with_serde_json_on_edited_answers() {
        use crate::gateway::stages::json_scan::fuzz;
        #[derive(serde::Deserialize)]
        struct Answer {
            usage: Option<serde_json::Value>,
        }
        let by_serde = |json: &[u8]| -> Option<Option<TokenUsage>> {
            let value: serde_json::Value = serde_json::from_slice(json).ok()?;
            value.as_object()?;
            let answer: Answer = serde_json::from_slice(json).ok()?;
            let u = answer.usage.filter(|u| !u.is_null());
            let Some(u) = u else {
                return Some(None);
            };
            let n = |k: &str| u.get(k).and_then(serde_json::Value::as_u64);
            let input = n("prompt_tokens").unwrap_or(0);
            let output = n("completion_tokens").unwrap_or(0);
            Some(Some(TokenUsage {
                input,
                output,
                total: n("total_tokens").unwrap_or(input + output),
            }))
        };
        let bases: [&[u8]; 3] = [
            br#"{"id":"c-1","choices":[{"message":{"content":"a \"usage\": {} }"}}],"usage":{"prompt_tokens":16,"completion_tokens":64,"total_tokens":80},"x":null}"#,
            br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"choices":[{"usage":{"prompt_tokens":7}}]}"#,
            br#"{"choices":[],"object":"usage","data":["usage",{"usage":1}]}"#,
        ];
        let tokens: [&[u8]; 12] = [
            b"\"",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"null",
            b"\"usage\"",
            b"\\",
            b"1",
            b" ",
        ];
        let mut rng = fuzz::Rng(0x005e_ed0f_0a5e);
        let mut compared = 0;
        for round in 0..20_000 {
            let edits = rng.below(3);
            let text = fuzz::edited(bases[round % bases.len()], &tokens, edits, &mut rng);
            // Only where serde_json reads the usage as numbers (a wrong shape is refused by
            // both, differently typed here).
            let Some(expected) = by_serde(&text) else {
                continue;
            };
            let typed = serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("usage").cloned())
                .filter(|u| !u.is_null())
                .is_none_or(|u| {
                    u.as_object().is_some_and(|o| {
                        o.iter().all(|(k, v)| {
                            !matches!(
                                k.as_str(),
                                "prompt_tokens" | "completion_tokens" | "total_tokens"
                            ) || v.is_u64()
                                || v.is_null()
                        })
                    })
                });
            if !typed {
                continue;
            }
            compared += 1;
            assert_eq!(
                read_usage(&text),
                expected,
                "{}",
                String::from_utf8_lossy(&text)
            );
        }
        assert!(compared > 5_000, "{compared}");
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
