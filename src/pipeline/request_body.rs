//! Stage 3: reads the request body under a size limit and a deadline, and — for JSON
//! endpoints — checks it is a JSON object while picking out the few fields later stages need,
//! without building a tree. A full parse happens only when a stage will change the body.

use std::borrow::Cow;
use std::time::Duration;

use std::future::Future;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::error::{ErrorKind, GatewayError};

fn too_large(limit: usize) -> GatewayError {
    GatewayError::new(
        ErrorKind::PayloadTooLarge,
        "request_too_large",
        format!("Request body is larger than the limit of {limit} bytes"),
    )
}

/// Reads the whole body, failing with 413 past `limit` bytes and 408-like 400 on a stall.
/// Most bodies have arrived with the request head: the first poll runs without a timer, and a
/// body of one chunk is kept as it came (no copy).
pub async fn read<B>(
    body: B,
    content_length: Option<u64>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if content_length.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let mut collect = std::pin::pin!(collect(body, content_length, limit));
    let first = std::future::poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(result) => result,
        Poll::Pending => match tokio::time::timeout(timeout, collect).await {
            Ok(result) => result,
            Err(_) => Err(GatewayError::bad_request(
                "body_timeout",
                format!(
                    "The request body did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
            )),
        },
    }
}

/// The body's data frames joined, at most `limit` bytes (trailers are dropped).
async fn collect<B>(
    body: B,
    content_length: Option<u64>,
    limit: usize,
) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    // The first chunk as it came; later ones joined in `joined`.
    let mut only: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|_| {
            GatewayError::bad_request("body_read_error", "The request body could not be read")
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(too_large(limit));
        }
        if let Some(buf) = joined.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(first) = only.take() {
            let hint = content_length
                .map_or(total, |n| n as usize)
                .clamp(total, limit);
            let mut buf = BytesMut::with_capacity(hint);
            buf.extend_from_slice(&first);
            buf.extend_from_slice(&data);
            joined = Some(buf);
        } else {
            only = Some(data);
        }
    }
    Ok(match (joined, only) {
        (Some(buf), _) => buf.freeze(),
        (None, Some(first)) => first,
        (None, None) => Bytes::new(),
    })
}

/// What the pipeline needs to know about a chat request, read in one validating pass.
#[derive(Debug, Default, Deserialize)]
pub struct ChatPeek<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub temperature: Option<IgnoredAny>,
    #[serde(default)]
    pub max_tokens: Option<IgnoredAny>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptionsPeek>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptionsPeek {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

impl ChatPeek<'_> {
    /// Whether the client asked for the usage event of a stream.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// Just the `model` of a JSON object body (other endpoints: embeddings, …).
#[derive(Debug, Default, Deserialize)]
pub struct ModelPeek<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    pub model: Option<Cow<'a, str>>,
}

/// An optional JSON string, borrowed from the body unless it has escapes. serde's own
/// `Option<Cow<str>>` always copies (its borrowing applies to a bare `Cow` only): one
/// allocation per chat request.
fn borrowed_str<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Str;
    impl<'de> serde::de::Visitor<'de> for Str {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
    }
    d.deserialize_option(Str)
}

/// The `model` of a body that looks like a JSON object. `Ok(None)` for other bodies; an
/// error for an object that does not parse (so a key's model rules cannot be sidestepped by a
/// body the gateway cannot read but the upstream might).
pub fn peek_model(body: &[u8]) -> Result<Option<String>, GatewayError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Ok(None);
    }
    serde_json::from_slice::<ModelPeek<'_>>(body)
        .map(|p| p.model.map(Cow::into_owned))
        .map_err(|e| GatewayError::bad_request("invalid_json", format!("Invalid JSON body: {e}")))
}

/// Validates that `body` is a JSON object and peeks at its fields.
pub fn peek_chat(body: &[u8]) -> Result<ChatPeek<'_>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GatewayError::bad_request(
            "invalid_json",
            "The request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice::<ChatPeek<'_>>(body).map_err(|e| {
        let what = if e.is_data() {
            match e.to_string() {
                s if s.contains("expected struct") => "expected a JSON object".to_string(),
                s => s,
            }
        } else {
            e.to_string()
        };
        GatewayError::bad_request("invalid_json", format!("Invalid JSON body: {what}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_fields_and_rejects_non_objects() {
        let p = peek_chat(br#"{"model":"m","messages":[],"temperature":null}"#).unwrap();
        assert_eq!(p.model.as_deref(), Some("m"));
        assert!(p.temperature.is_none());
        assert!(p.max_tokens.is_none());
        assert!(peek_chat(b"[1,2]").is_err());
        assert!(peek_chat(b"{\"model\":").is_err());
        assert!(peek_chat(b"").is_err());
        assert_eq!(peek_chat(b"nope").unwrap_err().status(), 400);
    }

    #[test]
    fn model_is_borrowed_unless_escaped() {
        let p = peek_chat(br#"{"model":"gpt-4o"}"#).unwrap();
        assert!(matches!(p.model, Some(Cow::Borrowed("gpt-4o"))));
        let p = peek_chat(br#"{"model":"gpt\u002d4o"}"#).unwrap();
        assert!(matches!(p.model, Some(Cow::Owned(ref m)) if m == "gpt-4o"));
        assert!(peek_chat(br#"{"model":null}"#).unwrap().model.is_none());
        assert!(peek_chat(br#"{"messages":[]}"#).unwrap().model.is_none());
        let e = peek_chat(br#"{"model":5}"#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert!(e.message.contains("expected a string"), "{}", e.message);
        assert_eq!(
            peek_model(br#"{"model":"m\n"}"#).unwrap().as_deref(),
            Some("m\n")
        );
        assert!(peek_model(br#"{"model":[]}"#).is_err());
    }
}
