//! The body phase: reads the request body under a size limit and a deadline, and — for JSON
//! endpoints — checks it is a JSON object while picking out the few fields later phases need
//! ([`peek`]), without building a tree. A full parse happens only when a phase will change
//! the body.

use std::borrow::Cow;
use std::time::Duration;

use std::future::Future;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::json_scan;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::routes::Route;

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

/// What the body phase learnt, for the phases after it.
pub struct Peeked<'b, 'k> {
    /// The model the body names (borrowed from it where it can be).
    pub model: Option<Cow<'b, str>>,
    pub facts: BodyFacts<'k>,
}

/// What the rewrite needs to know of a body, without borrowing it.
#[derive(Debug)]
pub struct BodyFacts<'k> {
    /// For chat requests (`None` for other `/v1` endpoints).
    pub chat: Option<ChatFacts>,
    /// Where the `field_aliases` keys are.
    pub renames: Renames<'k>,
    /// Whether the body is valid JSON (other endpoints' bodies need not be).
    pub json: bool,
}

/// Which fields a chat request has.
#[derive(Debug, Clone, Copy)]
pub struct ChatFacts {
    pub has_model: bool,
    pub has_temperature: bool,
    pub has_max_tokens: bool,
    pub stream: bool,
    pub include_usage: bool,
}

impl BodyFacts<'_> {
    /// A stream whose client did not ask for the final usage event.
    pub fn streams_without_usage(&self) -> bool {
        self.chat.is_some_and(|c| c.stream && !c.include_usage)
    }
}

/// Peeks at a chat body (which must be a JSON object) or another `/v1` endpoint's (which
/// may be anything; `restricted`: a key with a model allow-list, which needs the model of a
/// body that cannot be read, so that is a 400).
pub fn peek<'b, 'k>(
    route: &Route<'_>,
    bytes: &'b [u8],
    aliases: &'k [(String, String)],
    restricted: bool,
) -> Result<Peeked<'b, 'k>, GatewayError> {
    if *route == Route::ChatCompletions {
        let (peek, renames) = peek_chat_scanning(bytes, aliases)?;
        let chat = ChatFacts {
            has_model: peek.model.is_some(),
            has_temperature: peek.temperature.is_some(),
            has_max_tokens: peek.max_tokens.is_some(),
            stream: peek.stream == Some(true),
            include_usage: peek.include_usage(),
        };
        return Ok(Peeked {
            model: peek.model,
            facts: BodyFacts {
                chat: Some(chat),
                renames,
                json: true,
            },
        });
    }
    let (model, json, renames) = match peek_model_scanning(bytes, aliases) {
        Ok((m, renames)) => (m, true, renames),
        Err(e) if restricted => return Err(e),
        Err(_) => (None, false, Renames::NotScanned),
    };
    Ok(Peeked {
        model: model.map(Cow::Owned),
        facts: BodyFacts {
            chat: None,
            renames,
            json,
        },
    })
}

/// The body at DEBUG (target `sophgate::body`), cut at `max` bytes.
pub fn log_debug(body: &[u8], rid: &str, max: usize) {
    if tracing::enabled!(target: "sophgate::body", tracing::Level::DEBUG) {
        let cut = &body[..body.len().min(max)];
        let mut text = String::from_utf8_lossy(cut).into_owned();
        if body.len() > max {
            text.push_str(&format!("…[{} more bytes]", body.len() - max));
        }
        tracing::debug!(
            target: "sophgate::body",
            request_id = %rid,
            bytes = body.len(),
            body = %text,
            "request body"
        );
    }
}

/// What the gateway needs to know about a chat request, read in one validating pass.
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

/// [`peek_model`] and the search for `field_aliases` keys in one pass over the body, as
/// [`peek_chat_scanning`] does for chat requests (embeddings bodies can be as large).
pub fn peek_model_scanning<'k>(
    body: &[u8],
    aliases: &'k [(String, String)],
) -> Result<(Option<String>, Renames<'k>), GatewayError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Ok((None, Renames::NotScanned));
    }
    if let Some(scan) = json_scan::scan(body, aliases, &["model"]) {
        if scan.object && scan.depth <= SCAN_DEPTH {
            let model = match scan.top[0].and_then(|(start, end)| body.get(start..end)) {
                None | Some(b"null") => Some(None),
                Some(text) => json_str(text).map(|m| Some(m.into_owned())),
            };
            if let Some(model) = model {
                return Ok((model, Renames::of(scan.renames)));
            }
        }
    }
    Ok((peek_model(body)?, Renames::NotScanned))
}

/// Deepest nesting a scan's peek is trusted with: serde_json stops at 128 levels, counted
/// slightly differently, so keep well clear of it (deeper bodies go to serde_json).
const SCAN_DEPTH: usize = 100;

/// The top-level keys [`ChatPeek`] reads, in the order [`peek_from_scan`] takes them.
const CHAT_FIELDS: [&str; 5] = [
    "model",
    "temperature",
    "max_tokens",
    "stream",
    "stream_options",
];

/// What the one pass over a chat body says about `field_aliases`.
#[derive(Debug)]
pub enum Renames<'k> {
    /// The body went through serde_json instead: nothing was looked for yet.
    NotScanned,
    /// The keys to rename in place (none: the body stays as it came).
    InText(Vec<json_scan::Rename<'k>>),
    /// A case the in-place edit does not cover: rename on the tree.
    NeedsTree,
}

impl<'k> Renames<'k> {
    /// What a finished scan found.
    fn of(found: Option<Vec<json_scan::Rename<'k>>>) -> Self {
        match found {
            Some(found) => Renames::InText(found),
            None => Renames::NeedsTree,
        }
    }
}

/// [`peek_chat`] and the search for `field_aliases` keys in one pass over the body
/// ([`json_scan`]). When the scan gives up, serde_json peeks as before (its error is the
/// client's answer) and the renames are left for later.
pub fn peek_chat_scanning<'a, 'k>(
    body: &'a [u8],
    aliases: &'k [(String, String)],
) -> Result<(ChatPeek<'a>, Renames<'k>), GatewayError> {
    if let Some(scan) = json_scan::scan(body, aliases, &CHAT_FIELDS) {
        if let Some(peek) = peek_from_scan(body, &scan) {
            return Ok((peek, Renames::of(scan.renames)));
        }
    }
    Ok((peek_chat(body)?, Renames::NotScanned))
}

/// The peek from a scan's top-level values; `None` where serde_json might read the body
/// differently (not an object, deep nesting, a value of the wrong type, a `model` that is not
/// UTF-8): the caller asks serde_json then.
fn peek_from_scan<'a>(body: &'a [u8], scan: &json_scan::Scan<'_>) -> Option<ChatPeek<'a>> {
    if !scan.object || scan.depth > SCAN_DEPTH {
        return None;
    }
    let value = |field: usize| -> Option<&'a [u8]> {
        let (start, end) = (*scan.top.get(field)?)?;
        body.get(start..end).filter(|v| *v != b"null")
    };
    let model = match value(0) {
        None => None,
        Some(text) => Some(json_str(text)?),
    };
    let stream = match value(3) {
        None => None,
        Some(b"true") => Some(true),
        Some(b"false") => Some(false),
        Some(_) => return None,
    };
    let stream_options = match value(4) {
        None => None,
        Some(text) => Some(serde_json::from_slice::<StreamOptionsPeek>(text).ok()?),
    };
    Some(ChatPeek {
        model,
        temperature: value(1).map(|_| IgnoredAny),
        max_tokens: value(2).map(|_| IgnoredAny),
        stream,
        stream_options,
    })
}

/// A JSON string token's text: borrowed unless it has escapes; `None` for another token or
/// text that is not UTF-8.
fn json_str(token: &[u8]) -> Option<Cow<'_, str>> {
    let inner = token.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(token).ok().map(Cow::Owned)
    } else {
        std::str::from_utf8(inner).ok().map(Cow::Borrowed)
    }
}

/// Validates that `body` is a JSON object and peeks at its fields.
pub fn peek_chat(body: &[u8]) -> Result<ChatPeek<'_>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GatewayError::bad_request(
            "invalid_json",
            "The request body is empty; expected a JSON object",
        ));
    }
    // serde reads a struct from a JSON array too (`[]` would be a chat request with no
    // fields, `[1,2]` one whose `model` is not a string): anything but an object is refused
    // here, with serde_json's own message when it is not JSON at all.
    if body.trim_ascii_start().first() != Some(&b'{') {
        let what = match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => "expected a JSON object".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(GatewayError::bad_request(
            "invalid_json",
            format!("Invalid JSON body: {what}"),
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
    use super::json_scan::fuzz;
    use super::*;

    #[test]
    fn peeks_fields_and_rejects_non_objects() {
        let p = peek_chat(br#"{"model":"m","messages":[],"temperature":null}"#).unwrap();
        assert_eq!(p.model.as_deref(), Some("m"));
        assert!(p.temperature.is_none());
        assert!(p.max_tokens.is_none());
        assert!(peek_chat(b"[1,2]").is_err());
        for array in [&b"[]"[..], b" [1,2]", b"[\"m\"]", b"[{}]"] {
            let e = peek_chat(array).unwrap_err();
            assert_eq!(e.code, "invalid_json");
            assert_eq!(e.message, "Invalid JSON body: expected a JSON object");
            // The scanning path (what the pipeline calls) says the same.
            let e = peek_chat_scanning(array, &[]).unwrap_err();
            assert_eq!(e.message, "Invalid JSON body: expected a JSON object");
        }
        assert!(peek_chat(b"\"s\"")
            .unwrap_err()
            .message
            .contains("expected a JSON object"));
        assert!(!peek_chat(b"[1,")
            .unwrap_err()
            .message
            .contains("expected a string"));
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

    /// The fields of a peek, to compare the scan's with serde_json's.
    fn fields(
        p: &ChatPeek<'_>,
    ) -> (
        Option<String>,
        bool,
        bool,
        Option<bool>,
        Option<Option<bool>>,
    ) {
        (
            p.model.as_deref().map(str::to_owned),
            p.temperature.is_some(),
            p.max_tokens.is_some(),
            p.stream,
            p.stream_options.as_ref().map(|o| o.include_usage),
        )
    }

    #[test]
    fn the_scan_peeks_usual_bodies_itself() {
        let aliases = vec![("model".to_string(), "model_id".to_string())];
        for body in [
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"gpt\u002d4o","stream":true,"stream_options":{"include_usage":true}}"#,
            r#" {"messages":[],"temperature":0.2,"max_tokens":null,"stream":false} "#,
            r#"{"model":null,"stream":null,"stream_options":null,"tools":[{"a":{"b":[1]}}]}"#,
        ] {
            let (peek, renames) = peek_chat_scanning(body.as_bytes(), &aliases).unwrap();
            assert!(matches!(renames, Renames::InText(_)), "{body}");
            assert_eq!(
                fields(&peek),
                fields(&peek_chat(body.as_bytes()).unwrap()),
                "{body}"
            );
        }
        // Where serde_json would answer differently, it answers.
        for body in [
            r#"{"model":5}"#,
            r#"{"stream":"yes"}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"[1,2]"#,
            r#"{"stream_options":{"include_usage":1}}"#,
        ] {
            assert!(
                peek_chat_scanning(body.as_bytes(), &aliases).is_err(),
                "{body}"
            );
        }
        assert!(peek_chat_scanning(b"{\"model\":\"\xff\"}", &aliases).is_err());
        // A lone surrogate: refused in `model` (decoded), passed in a message (skipped), as
        // serde_json does.
        assert!(peek_chat_scanning(br#"{"model":"\uDE00"}"#, &aliases).is_err());
        let body = br#"{"model":"m","messages":[{"role":"user","content":"\uD83D"}]}"#;
        let (peek, renames) = peek_chat_scanning(body, &aliases).unwrap();
        assert_eq!(peek.model.as_deref(), Some("m"));
        assert!(matches!(renames, Renames::InText(ref found) if found.len() == 1));
        let (_, renames) =
            peek_chat_scanning(br#"{"model":"a","model_id":"b"}"#, &aliases).unwrap();
        assert!(matches!(renames, Renames::NeedsTree));
    }

    /// Random edits of chat bodies: wherever the scan peeks itself, serde_json reads the same
    /// fields, and the renames it found give what the tree path gives.
    #[test]
    fn the_scan_agrees_with_serde_json() {
        use crate::gateway::stages::rewrite::{apply_renames, rename_fields, TextRename};
        let aliases = vec![
            ("model".to_string(), "model_id".to_string()),
            ("max_tokens".to_string(), "max_new_tokens".to_string()),
        ];
        let bases: [&[u8]; 3] = [
            br#"{"model":"m","messages":[{"role":"user","content":"h\u00e9"}],"stream":true}"#,
            br#"{"temperature":1,"max_tokens":null,"stream_options":{"include_usage":false},"x":{"model":2}}"#,
            br#"{"model":"a\"b","stream":false,"max_tokens":[1,{"model_id":0}],"n":-0.5e1}"#,
        ];
        let tokens: [&[u8]; 17] = [
            b"\"",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"null",
            b"true",
            b"1",
            b"\"model\"",
            b"\"stream\":",
            b"\xff",
            b" ",
            b"\"model\":\"x\",",
            b"\"stream\":1,",
            b"\"stream_options\":{\"include_usage\":true},",
        ];
        let mut rng = fuzz::Rng(0x9e37_79b9_7f4a_7c15);
        let (mut scanned, mut renamed) = (0, 0);
        for round in 0..30_000 {
            let edits = rng.below(3);
            let body = fuzz::edited(bases[round % bases.len()], &tokens, edits, &mut rng);
            let shown = String::from_utf8_lossy(&body).into_owned();
            let Ok((peek, renames)) = peek_chat_scanning(&body, &aliases) else {
                continue;
            };
            if matches!(renames, Renames::NotScanned) {
                continue;
            }
            scanned += 1;
            let by_serde = peek_chat(&body).unwrap_or_else(|e| panic!("{shown}: {}", e.message));
            assert_eq!(fields(&peek), fields(&by_serde), "{shown}");
            // The tree needs UTF-8 throughout; the peek does not.
            let Ok(mut tree) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            let tree_renamed = rename_fields(&mut tree, &aliases);
            if let Renames::InText(found) = renames {
                let text = match apply_renames(&body, &found) {
                    TextRename::Renamed(out) => out,
                    TextRename::Unchanged => body.clone(),
                    TextRename::NeedsTree => panic!("{shown}"),
                };
                assert_eq!(found.is_empty(), !tree_renamed, "{shown}");
                let text: serde_json::Value = serde_json::from_slice(&text).unwrap();
                assert_eq!(text, tree, "{shown}");
                renamed += usize::from(!found.is_empty());
            }
        }
        assert!(renamed > 1_000, "{renamed}");
        assert!(scanned > 3_000, "{scanned}");
    }

    /// Other endpoints' model peek: the scan's answer is serde_json's, random edits included.
    #[test]
    fn the_model_scan_agrees_with_serde_json() {
        let aliases = vec![("model".to_string(), "model_id".to_string())];
        let (m, renames) =
            peek_model_scanning(br#"{"model":"e\u002d1","input":["a","b"]}"#, &aliases).unwrap();
        assert_eq!(m.as_deref(), Some("e-1"));
        assert!(matches!(renames, Renames::InText(ref found) if found.len() == 1));
        let (m, renames) = peek_model_scanning(b"[1,2]", &aliases).unwrap();
        assert!(m.is_none() && matches!(renames, Renames::NotScanned));
        assert!(peek_model_scanning(br#"{"model":5}"#, &aliases).is_err());
        assert!(peek_model_scanning(br#"{"model":"a","model":"b"}"#, &aliases).is_err());
        let base =
            br#"{"model":"emb","input":["t\u00e9xt",{"model":1}],"dimensions":256,"x":null}"#;
        let tokens: [&[u8]; 10] = [
            b"\"",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"null",
            b"\"model\":\"m\",",
            b"\xff",
        ];
        let mut rng = fuzz::Rng(0x1234_5678_9abc_def1);
        let mut scanned = 0;
        for _ in 0..20_000 {
            let edits = rng.below(3);
            let body = fuzz::edited(base, &tokens, edits, &mut rng);
            let shown = String::from_utf8_lossy(&body).into_owned();
            let Ok((model, renames)) = peek_model_scanning(&body, &aliases) else {
                continue;
            };
            if matches!(renames, Renames::NotScanned) {
                continue;
            }
            scanned += 1;
            let by_serde = peek_model(&body).unwrap_or_else(|e| panic!("{shown}: {}", e.message));
            assert_eq!(model, by_serde, "{shown}");
        }
        assert!(scanned > 3_000, "{scanned}");
    }
}
