//! The mock's answers besides chat and models, in OpenAI's shapes and deterministic (derived
//! from the request), so passthrough of `/v1/*` can be shown and tested:
//! `POST …/embeddings` (floats, or base64 as the Python SDK asks by default; `dimensions`
//! honoured), `POST …/completions` (legacy text completions, JSON or SSE) and
//! `POST …/moderations` (an input containing `flag-me` is flagged for violence).

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use super::MOCK_CREATED;

/// Dimensions of a mock embedding when the request names none.
const DEFAULT_DIMENSIONS: usize = 8;
const MAX_DIMENSIONS: usize = 4096;

/// A non-chat endpoint the mock answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Embeddings,
    Completions,
    Moderations,
}

impl Endpoint {
    /// The endpoint a path ends with (`…/chat/completions` is not a legacy completion).
    pub fn of(path: &str) -> Option<Endpoint> {
        if path.ends_with("/embeddings") {
            Some(Endpoint::Embeddings)
        } else if path.ends_with("/moderations") {
            Some(Endpoint::Moderations)
        } else if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
            Some(Endpoint::Completions)
        } else {
            None
        }
    }
}

/// The answer to a parsed request: a JSON value, or an event stream's bytes; `Err` is a
/// message for a 400.
pub enum Answer {
    Json(Value),
    Events(Bytes),
}

pub fn answer(endpoint: Endpoint, req: &Value, body: &[u8]) -> Result<Answer, String> {
    match endpoint {
        Endpoint::Embeddings => embeddings(req).map(Answer::Json),
        Endpoint::Completions => completions(req, body),
        Endpoint::Moderations => moderations(req).map(Answer::Json),
    }
}

/// `input` as a list of texts: a string, a list of strings, or token lists (as text).
fn inputs(req: &Value, field: &str) -> Result<Vec<String>, String> {
    match req.get(field) {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => Ok(items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()),
        _ => Err(format!("`{field}` must be a string or a non-empty list")),
    }
}

fn model(req: &Value, default: &str) -> String {
    req.get("model")
        .or_else(|| req.get("model_id"))
        .and_then(Value::as_str)
        .unwrap_or(default)
        .to_owned()
}

fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

/// A unit-length vector derived from the text.
fn vector(text: &str, dims: usize) -> Vec<f32> {
    let mut h = super::fnv1a(text.as_bytes());
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn embeddings(req: &Value) -> Result<Value, String> {
    let texts = inputs(req, "input")?;
    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(d) => d
            .as_u64()
            .filter(|d| (1..=MAX_DIMENSIONS as u64).contains(d))
            .map(|d| d as usize)
            .ok_or_else(|| format!("`dimensions` must be 1 to {MAX_DIMENSIONS}"))?,
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err("`encoding_format` must be float or base64".into()),
    };
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = vector(t, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let prompt: u64 = texts.iter().map(|t| tokens(t)).sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model(req, "mock-embedding"),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }))
}

fn completions(req: &Value, body: &[u8]) -> Result<Answer, String> {
    let prompts = inputs(req, "prompt")?;
    let model = model(req, "mock-model");
    let max = req
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(8)
        .clamp(1, 64) as usize;
    let words: Vec<&str> = (0..max)
        .map(|i| ["Once", " upon", " a", " time"][i % 4])
        .collect();
    let id = format!("cmpl-mock-{:016x}", super::fnv1a(body));
    let prompt_tokens: u64 = prompts.iter().map(|p| tokens(p)).sum();
    let completion_tokens = (max * prompts.len()) as u64;
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    if req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let mut out = String::new();
        for (index, _) in prompts.iter().enumerate() {
            for (i, w) in words.iter().enumerate() {
                let finish = (i + 1 == words.len()).then_some("length");
                let v = json!({
                    "id": id, "object": "text_completion", "created": MOCK_CREATED, "model": model,
                    "choices": [{"text": w, "index": index, "logprobs": null, "finish_reason": finish}],
                });
                out.push_str(&format!("data: {v}\n\n"));
            }
        }
        out.push_str("data: [DONE]\n\n");
        return Ok(Answer::Events(Bytes::from(out)));
    }
    let text: String = words.concat();
    let choices: Vec<Value> = (0..prompts.len())
        .map(|index| json!({"text": text, "index": index, "logprobs": null, "finish_reason": "length"}))
        .collect();
    Ok(Answer::Json(json!({
        "id": id, "object": "text_completion", "created": MOCK_CREATED, "model": model,
        "choices": choices, "usage": usage,
    })))
}

const CATEGORIES: &[&str] = &[
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "self-harm",
    "sexual",
    "violence",
    "violence/graphic",
];

fn moderations(req: &Value) -> Result<Value, String> {
    let texts = inputs(req, "input")?;
    let results: Vec<Value> = texts
        .iter()
        .map(|t| {
            let flagged = t.contains("flag-me");
            let mut categories = serde_json::Map::new();
            let mut scores = serde_json::Map::new();
            for c in CATEGORIES {
                let hit = flagged && *c == "violence";
                categories.insert((*c).into(), json!(hit));
                scores.insert((*c).into(), json!(if hit { 0.98 } else { 0.0001 }));
            }
            json!({"flagged": flagged, "categories": categories, "category_scores": scores})
        })
        .collect();
    let id = format!(
        "modr-mock-{:016x}",
        super::fnv1a(req.to_string().as_bytes())
    );
    Ok(json!({
        "id": id,
        "model": model(req, "omni-moderation-latest"),
        "results": results,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_pick_endpoints() {
        assert_eq!(Endpoint::of("/v1/embeddings"), Some(Endpoint::Embeddings));
        assert_eq!(Endpoint::of("/v1/completions"), Some(Endpoint::Completions));
        assert_eq!(Endpoint::of("/v1/moderations"), Some(Endpoint::Moderations));
        assert_eq!(Endpoint::of("/v1/chat/completions"), None);
        assert_eq!(Endpoint::of("/v1/models"), None);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors_in_either_encoding() {
        let req = json!({"model": "e", "input": ["a", "b"], "dimensions": 16});
        let Ok(a) = embeddings(&req) else { panic!() };
        let Ok(b) = embeddings(&req) else { panic!() };
        assert_eq!(a, b);
        let v: Vec<f32> = serde_json::from_value(a["data"][0]["embedding"].clone()).unwrap();
        assert_eq!(v.len(), 16);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_ne!(a["data"][0]["embedding"], a["data"][1]["embedding"]);
        let req64 = json!({"input": "a", "dimensions": 16, "encoding_format": "base64"});
        let Ok(c) = embeddings(&req64) else { panic!() };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(c["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = raw
            .chunks(4)
            .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]))
            .collect();
        assert_eq!(decoded, v);
        assert!(embeddings(&json!({"input": 5})).is_err());
    }

    #[test]
    fn moderations_flag_only_the_marker() {
        let Ok(v) = moderations(&json!({"input": ["hello", "please flag-me"]})) else {
            panic!()
        };
        assert_eq!(v["results"][0]["flagged"], false);
        assert_eq!(v["results"][1]["flagged"], true);
        assert_eq!(v["results"][1]["categories"]["violence"], true);
    }
}
