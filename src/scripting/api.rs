//! The values hooks see, as plain Rust structs the pipeline fills and reads back, and their
//! conversion to and from script values.
//!
//! A hook receives one object map (`req`, `res` or `ev`). What a hook leaves in it is read back
//! from the call's scope (see `hook_call`) and is what the next plugin, and finally the
//! pipeline, sees.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use rhai::{Dynamic, Map};
use serde_json::Value;

/// The request as `on_request` hooks see it. What the hooks leave here goes upstream.
///
/// The caller must not put credentials in `headers` (strip the client's `authorization` and
/// any upstream key before the script stage, add them after): scripts never see secrets.
#[derive(Debug, Clone, Default)]
pub struct ScriptRequest {
    /// The JSON body (`req.body`, writable).
    pub body: Value,
    /// Upstream request headers (`req.headers`: lower-case name → string, or an array of
    /// strings for a repeated header; writable).
    pub headers: HeaderMap,
    /// The upstream path with query, e.g. `/v1/chat/completions` (`req.path`, writable; must
    /// stay a valid path starting with `/`).
    pub path: String,
    /// `req.method`, read-only.
    pub method: String,
    /// `req.client_ip`, read-only.
    pub client_ip: String,
    /// `req.key`: the principal's label, never the key itself; read-only.
    pub key: String,
    /// `req.ctx`: data shared by all hooks of this request. Move it into the
    /// [`ScriptResponse`] / [`ScriptEvent`] of the same request.
    pub ctx: Map,
}

/// A non-streamed answer as `on_response` hooks see it. What the hooks leave here goes to the
/// client.
#[derive(Debug, Clone, Default)]
pub struct ScriptResponse {
    /// `res.status` (writable; must stay a valid HTTP status).
    pub status: u16,
    /// Client response headers (`res.headers`, same shape as `req.headers`).
    pub headers: HeaderMap,
    /// The JSON body (`res.body`, writable).
    pub body: Value,
    /// `res.ctx`: what the request's hooks left in `req.ctx`.
    pub ctx: Map,
}

/// The `data` of one SSE event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    /// The data parsed as JSON (scripts see a map).
    Json(Value),
    /// Data that is not JSON, such as `[DONE]` (scripts see a string).
    Raw(String),
}

impl EventData {
    /// Classifies an event's data: JSON if it parses, raw text otherwise.
    pub fn parse(data: &str) -> Self {
        serde_json::from_str(data).map_or_else(|_| Self::Raw(data.to_owned()), Self::Json)
    }

    /// The text to send as the event's `data:`.
    pub fn to_data_string(&self) -> String {
        match self {
            Self::Json(value) => value.to_string(),
            Self::Raw(text) => text.clone(),
        }
    }
}

/// One SSE event of a streamed answer as `on_event` hooks see it. Reuse one `ScriptEvent` for
/// the whole stream (replace only `data`) so `ctx` carries from event to event.
#[derive(Debug, Clone)]
pub struct ScriptEvent {
    /// `ev.data`. After the hooks, a string becomes [`EventData::Raw`] (sent as is) and any
    /// other value [`EventData::Json`].
    pub data: EventData,
    /// `ev.ctx`: the request's ctx, shared by all events of the stream.
    pub ctx: Map,
}

/// Whether an event goes on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Send the (possibly changed) event.
    Keep,
    /// A hook set `ev.drop = true`: send nothing for this event.
    Drop,
}

// === conversions ===

/// Deepest nesting the conversions below and [`rename_keys`] walk. Request JSON is at most 128
/// deep (serde_json's parser limit) and scripts cannot build deep values cheaply (Rhai copies a
/// value to nest it), but a fixed bound keeps native recursion off the edge of the stack.
pub(crate) const MAX_DEPTH: usize = 512;

pub(crate) fn too_deep() -> String {
    format!("value nested deeper than {MAX_DEPTH} levels")
}

/// JSON → script value. Objects become maps (Rhai maps are sorted, so key order is not kept),
/// integers that fit `i64` become ints, other numbers floats. Written out rather than through
/// `rhai::serde`, which is several times slower on chat bodies.
pub(crate) fn json_to_dynamic(value: &Value) -> Result<Dynamic, String> {
    to_dynamic_at(value, 0)
}

fn to_dynamic_at(value: &Value, depth: usize) -> Result<Dynamic, String> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    Ok(match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => n.as_f64().map_or(Dynamic::UNIT, Dynamic::from_float),
        },
        Value::String(s) => Dynamic::from(rhai::ImmutableString::from(s.as_str())),
        Value::Array(items) => Dynamic::from_array(
            items
                .iter()
                .map(|v| to_dynamic_at(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Dynamic::from_map(
            map.iter()
                .map(|(k, v)| Ok((k.as_str().into(), to_dynamic_at(v, depth + 1)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Script value → JSON. Chars become strings and blobs arrays of bytes; fails on values JSON
/// cannot hold (functions, timestamps, non-finite floats).
pub(crate) fn dynamic_to_json(value: &Dynamic) -> Result<Value, String> {
    to_json_at(value, 0)
}

fn to_json_at(value: &Dynamic, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    if let Some(s) = value.read_lock::<rhai::ImmutableString>() {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(map) = value.read_lock::<Map>() {
        return map
            .iter()
            .map(|(k, v)| Ok((k.to_string(), to_json_at(v, depth + 1)?)))
            .collect::<Result<serde_json::Map<_, _>, String>>()
            .map(Value::Object);
    }
    if let Some(items) = value.read_lock::<rhai::Array>() {
        return items
            .iter()
            .map(|v| to_json_at(v, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} is not a JSON number"));
    }
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if let Some(blob) = value.read_lock::<rhai::Blob>() {
        return Ok(Value::Array(blob.iter().map(|b| Value::from(*b)).collect()));
    }
    Err(format!(
        "a {} cannot be converted to JSON",
        value.type_name()
    ))
}

/// Renames keys everywhere in `value` (nested maps and maps inside arrays), in place: for each
/// map, each `from → to` of `aliases` in key order moves `from`'s value to `to` (overwriting),
/// then the map's values are walked. These are the seed's `field_aliases` rules. Native because
/// a script walk of a chat body costs ~100 µs per request in release builds; this costs ~1 µs.
pub(crate) fn rename_keys(map: &mut Map, aliases: &Map) -> Result<(), String> {
    let pairs = alias_pairs(aliases)?;
    rename_in_map(map, &pairs, 0)
}

/// `aliases` as the (from, to) pairs [`rename_keys`] applies, in the order it applies them.
pub(crate) fn alias_list(aliases: &Map) -> Result<Vec<(String, String)>, String> {
    let pairs = alias_pairs(aliases)?;
    Ok(pairs
        .into_iter()
        .map(|(from, to)| (from.to_owned(), to.to_string()))
        .collect())
}

/// [`rename_keys`] for an array of values.
pub(crate) fn rename_keys_in_array(items: &mut rhai::Array, aliases: &Map) -> Result<(), String> {
    let pairs = alias_pairs(aliases)?;
    rename_in_array(items, &pairs, 0)
}

/// The error [`rename_keys`] gives for `aliases`, if any (the check alone, nothing built).
pub(crate) fn check_aliases(aliases: &Map) -> Result<(), String> {
    match aliases
        .iter()
        .find(|(_, to)| to.read_lock::<rhai::ImmutableString>().is_none())
    {
        Some((from, _)) => Err(bad_alias(from)),
        None => Ok(()),
    }
}

fn bad_alias(from: &str) -> String {
    format!("rename_keys: the new name for {from:?} must be a string")
}

type Aliases<'a> = [(&'a str, rhai::ImmutableString)];

fn alias_pairs(aliases: &Map) -> Result<Vec<(&str, rhai::ImmutableString)>, String> {
    aliases
        .iter()
        .map(|(from, to)| {
            to.read_lock::<rhai::ImmutableString>()
                .map(|to| (from.as_str(), to.clone()))
                .ok_or_else(|| bad_alias(from))
        })
        .collect()
}

fn rename_in_map(map: &mut Map, aliases: &Aliases<'_>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    for (from, to) in aliases {
        if let Some(v) = map.remove(*from) {
            map.insert(to.as_str().into(), v);
        }
    }
    map.values_mut()
        .try_for_each(|v| rename_in_value(v, aliases, depth + 1))
}

fn rename_in_array(
    items: &mut rhai::Array,
    aliases: &Aliases<'_>,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    items
        .iter_mut()
        .try_for_each(|v| rename_in_value(v, aliases, depth + 1))
}

fn rename_in_value(value: &mut Dynamic, aliases: &Aliases<'_>, depth: usize) -> Result<(), String> {
    if value.is_map() {
        if let Some(mut map) = value.write_lock::<Map>() {
            return rename_in_map(&mut map, aliases, depth);
        }
    } else if value.is_array() {
        if let Some(mut items) = value.write_lock::<rhai::Array>() {
            return rename_in_array(&mut items, aliases, depth);
        }
    }
    Ok(())
}

/// Headers → `name → value` map; a repeated header becomes an array of its values. Values that
/// are not UTF-8 are converted lossily (they do not occur in practice on this API).
pub(crate) fn headers_to_dynamic(headers: &HeaderMap) -> Dynamic {
    let mut map = Map::new();
    for name in headers.keys() {
        let mut values = headers
            .get_all(name)
            .iter()
            .map(|v| Dynamic::from(String::from_utf8_lossy(v.as_bytes()).into_owned()));
        let value = match (values.next(), values.next()) {
            (Some(only), None) => only,
            (Some(first), Some(second)) => {
                let mut all = vec![first, second];
                all.extend(values);
                Dynamic::from_array(all)
            }
            (None, _) => continue,
        };
        map.insert(name.as_str().into(), value);
    }
    Dynamic::from_map(map)
}

/// Checks what a hook left in `headers` without building anything (run after each plugin, so
/// a bad header is blamed on the plugin that wrote it).
pub(crate) fn check_headers(value: &Dynamic) -> Result<(), String> {
    let map = value
        .read_lock::<Map>()
        .ok_or_else(|| format!("headers must be a map, found {}", value.type_name()))?;
    for (name, value) in map.iter() {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        for_each_header_value(value, &mut |text| {
            HeaderValue::from_str(text)
                .map(|_| ())
                .map_err(|_| format!("invalid value for header {name:?}"))
        })?;
    }
    Ok(())
}

/// `name → value` map → headers. A unit value `()` removes the header; numbers and booleans are
/// written as text; an array gives the header once per element.
pub(crate) fn headers_from_dynamic(value: &Dynamic) -> Result<HeaderMap, String> {
    let map = value
        .read_lock::<Map>()
        .ok_or_else(|| format!("headers must be a map, found {}", value.type_name()))?;
    let mut headers = HeaderMap::with_capacity(map.len());
    for (name, value) in map.iter() {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        for_each_header_value(value, &mut |text| {
            let v = HeaderValue::from_str(text)
                .map_err(|_| format!("invalid value for header {name:?}"))?;
            headers.append(header.clone(), v);
            Ok(())
        })?;
    }
    Ok(headers)
}

fn for_each_header_value(
    value: &Dynamic,
    f: &mut dyn FnMut(&str) -> Result<(), String>,
) -> Result<(), String> {
    if value.is_unit() {
        Ok(())
    } else if let Some(items) = value.read_lock::<rhai::Array>() {
        items
            .iter()
            .try_for_each(|item| scalar_header_value(item, f))
    } else {
        scalar_header_value(value, f)
    }
}

fn scalar_header_value(
    value: &Dynamic,
    f: &mut dyn FnMut(&str) -> Result<(), String>,
) -> Result<(), String> {
    if let Some(text) = value.read_lock::<rhai::ImmutableString>() {
        return f(text.as_str());
    }
    if value.is_int() || value.is_float() || value.is_bool() || value.is_char() {
        return f(&value.to_string());
    }
    Err(format!(
        "a header value must be a string, found {}",
        value.type_name()
    ))
}

/// Whether `value` is plain data (what JSON holds, plus chars and blobs): no functions, no
/// shared references. Values that outlive one hook call (`ctx`, top-level constants) must be,
/// so no closure can keep one request's data alive or leak it into another request.
pub(crate) fn is_plain_data(value: &Dynamic) -> bool {
    plain_at(value, 0)
}

fn plain_at(value: &Dynamic, depth: usize) -> bool {
    if depth > MAX_DEPTH || value.is_shared() || value.is_fnptr() {
        return false;
    }
    if let Some(map) = value.read_lock::<Map>() {
        return map.values().all(|v| plain_at(v, depth + 1));
    }
    if let Some(items) = value.read_lock::<rhai::Array>() {
        return items.iter().all(|v| plain_at(v, depth + 1));
    }
    value.is_unit()
        || value.is_bool()
        || value.is_int()
        || value.is_float()
        || value.is_char()
        || value.is_string()
        || value.is_blob()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_parse_and_print() {
        assert_eq!(EventData::parse("[DONE]"), EventData::Raw("[DONE]".into()));
        let json = EventData::parse(r#"{"a":1}"#);
        assert_eq!(json, EventData::Json(serde_json::json!({"a": 1})));
        assert_eq!(json.to_data_string(), r#"{"a":1}"#);
    }

    #[test]
    fn headers_round_trip_with_repeats() {
        let mut h = HeaderMap::new();
        h.insert("x-one", HeaderValue::from_static("1"));
        h.append("x-many", HeaderValue::from_static("a"));
        h.append("x-many", HeaderValue::from_static("b"));
        let d = headers_to_dynamic(&h);
        check_headers(&d).unwrap();
        let back = headers_from_dynamic(&d).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn header_values_are_checked() {
        let mut m = Map::new();
        m.insert("x-bad".into(), Dynamic::from("a\nb"));
        assert!(check_headers(&Dynamic::from_map(m.clone())).is_err());
        m.clear();
        m.insert("bad name".into(), Dynamic::from("v"));
        assert!(headers_from_dynamic(&Dynamic::from_map(m.clone())).is_err());
        m.clear();
        m.insert("x-n".into(), Dynamic::from(5_i64));
        m.insert("x-gone".into(), Dynamic::UNIT);
        let h = headers_from_dynamic(&Dynamic::from_map(m)).unwrap();
        assert_eq!(h.get("x-n").unwrap(), "5");
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn json_round_trip() {
        let v = serde_json::json!({
            "b": [1, 2.5, "x", null, true, u64::MAX, -1e300],
            "a": {"n": -3, "e": {}, "l": []}
        });
        let d = json_to_dynamic(&v).unwrap();
        assert!(is_plain_data(&d));
        let back = dynamic_to_json(&d).unwrap();
        assert_eq!(back["a"], v["a"]);
        assert_eq!(
            back["b"].as_array().unwrap()[..5],
            v["b"].as_array().unwrap()[..5]
        );
        assert_eq!(back["b"][5].as_f64(), Some(u64::MAX as f64));
        assert_eq!(back["b"][6], v["b"][6]);
    }

    #[test]
    fn script_only_values_convert_or_fail_clearly() {
        assert_eq!(dynamic_to_json(&Dynamic::from('c')).unwrap(), "c");
        let blob = Dynamic::from_blob(vec![1, 2]);
        assert_eq!(dynamic_to_json(&blob).unwrap(), serde_json::json!([1, 2]));
        assert!(dynamic_to_json(&Dynamic::from_float(f64::NAN)).is_err());
        let f = Dynamic::from(rhai::FnPtr::new("f").unwrap());
        assert!(dynamic_to_json(&f).unwrap_err().contains("Fn"));
    }

    #[test]
    fn deep_values_are_refused_not_overflowed() {
        let mut d = Dynamic::UNIT;
        for _ in 0..600 {
            d = Dynamic::from_array(vec![d]);
        }
        assert!(dynamic_to_json(&d).is_err());
        assert!(!is_plain_data(&d));
    }

    #[test]
    fn rename_keys_follows_the_seed_rules() {
        let v = serde_json::json!({"a": 1, "b": 2, "l": [{"a": {"a": 3}}]});
        let mut map = json_to_dynamic(&v).unwrap().try_cast::<Map>().unwrap();
        let mut aliases = Map::new();
        aliases.insert("a".into(), Dynamic::from("b"));
        rename_keys(&mut map, &aliases).unwrap();
        let expected = serde_json::json!({"b": 1, "l": [{"b": {"b": 3}}]});
        assert_eq!(
            dynamic_to_json(&Dynamic::from_map(map.clone())).unwrap(),
            expected
        );
        aliases.insert("x".into(), Dynamic::from(1_i64));
        assert!(rename_keys(&mut map, &aliases).is_err());
    }
}
