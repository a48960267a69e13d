//! JSON text parsed straight into the script value of what the hooks reach of it (see
//! [`reach`](super::reach)), with nothing else built: an event's `data:` for a hook that reads
//! `ev.data.choices[0].delta.content` becomes a map holding `choices`, an array of one map
//! holding `delta`, a map holding `content` — no `serde_json::Value` of the whole event.
//!
//! The result equals [`partial::to_script`](super::partial::to_script) of the parsed value, and
//! the text is accepted or refused exactly as `serde_json::from_str::<Value>` does: values no
//! hook reaches are still run through serde_json's `deserialize_any` (every string decoded and
//! checked, every number parsed, the same nesting limit), only nothing is kept of them. Where
//! a key repeats, the last value wins, as in a parsed `Value`.

use std::collections::BTreeMap;
use std::fmt;

use rhai::{Array, Dynamic, Identifier, ImmutableString, Map};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::reach::Part;

/// The script value of `text` as far as `fields` (the top-level fields the hooks name) reach
/// it: an object with only those fields, each as far as its [`Part`] says; any other JSON
/// value whole. Fails where `serde_json::from_str::<Value>(text)` fails.
pub(crate) fn parse(
    text: &str,
    fields: &BTreeMap<String, Part>,
) -> Result<Dynamic, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Reached::Props(fields).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// [`parse`] into `slot`, reusing the maps, arrays and strings an earlier parse with the same
/// `fields` left there (one stream's events have the same shape, so most calls allocate and free
/// nothing). On success `slot` equals what [`parse`] returns; on failure it holds some value the
/// caller must replace.
pub(crate) fn parse_into(
    text: &str,
    fields: &BTreeMap<String, Part>,
    slot: &mut Dynamic,
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    Into {
        slot,
        reached: Reached::Props(fields),
    }
    .deserialize(&mut de)?;
    de.end()
}

/// What is reached of one value; a value of another type than the one named is reached whole.
#[derive(Clone, Copy)]
enum Reached<'p> {
    Whole,
    Props(&'p BTreeMap<String, Part>),
    Items(&'p BTreeMap<usize, Part>),
}

impl<'p> Reached<'p> {
    fn of(part: &'p Part) -> Self {
        match part {
            Part::Whole => Reached::Whole,
            Part::Props(fields) => Reached::Props(fields),
            Part::Items(indices) => Reached::Items(indices),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Reached<'_> {
    type Value = Dynamic;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Dynamic, D::Error> {
        de.deserialize_any(self)
    }
}

/// The conversions of [`json_to_dynamic`](super::api::json_to_dynamic), taken from the parser's
/// events instead of a `Value`.
impl<'de> Visitor<'de> for Reached<'_> {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_unit<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Dynamic, E> {
        Ok(Dynamic::from_bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_int(i))
    }

    /// An integer beyond `i64` is a float, as `Number::as_i64` then `as_f64` make it.
    fn visit_u64<E>(self, u: u64) -> Result<Dynamic, E> {
        Ok(i64::try_from(u).map_or_else(|_| Dynamic::from_float(u as f64), Dynamic::from_int))
    }

    /// A parsed `Value` holds a non-finite float as `null`.
    fn visit_f64<E>(self, f: f64) -> Result<Dynamic, E> {
        Ok(if f.is_finite() {
            Dynamic::from_float(f)
        } else {
            Dynamic::UNIT
        })
    }

    fn visit_str<E>(self, s: &str) -> Result<Dynamic, E> {
        Ok(Dynamic::from(ImmutableString::from(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        let mut array = Array::new();
        let Reached::Items(indices) = self else {
            while let Some(v) = seq.next_element_seed(Reached::Whole)? {
                array.push(v);
            }
            return Ok(Dynamic::from_array(array));
        };
        // Elements up to the last index named; those not named are `()`, which no constant
        // index reaches (as `partial::to_script` leaves them).
        let kept = indices
            .keys()
            .next_back()
            .map_or(0, |i| i.saturating_add(1));
        while array.len() < kept {
            let element = match indices.get(&array.len()) {
                Some(part) => seq.next_element_seed(Reached::of(part))?,
                None => seq.next_element_seed(Skip)?.map(|()| Dynamic::UNIT),
            };
            match element {
                Some(v) => array.push(v),
                None => return Ok(Dynamic::from_array(array)),
            }
        }
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(Dynamic::from_array(array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Dynamic, A::Error> {
        let mut map = Map::new();
        let Reached::Props(fields) = self else {
            while let Some(key) = access.next_key_seed(Key)? {
                let value = access.next_value_seed(Reached::Whole)?;
                map.insert(key, value);
            }
            return Ok(Dynamic::from_map(map));
        };
        while let Some(named) = access.next_key_seed(NamedKey(fields))? {
            match named {
                Some((name, part)) => {
                    let value = access.next_value_seed(Reached::of(part))?;
                    map.insert(name.as_str().into(), value);
                }
                None => access.next_value_seed(Skip)?,
            }
        }
        Ok(Dynamic::from_map(map))
    }
}

/// A value parsed into the slot that held the value parsed before, leaving the slot as the
/// [`Reached`] visitor would make it. Containers are reused only when unshared, so nothing else
/// can see them change; everything else is built as [`Reached`] builds it.
struct Into<'s, 'p> {
    slot: &'s mut Dynamic,
    reached: Reached<'p>,
}

/// Object fields a reused map can track in one bitmask; an object with more named fields is
/// built afresh.
const TRACKED_FIELDS: usize = 64;

impl<'de> DeserializeSeed<'de> for Into<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Into<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        *self.slot = Dynamic::UNIT;
        Ok(())
    }

    fn visit_bool<E>(self, b: bool) -> Result<(), E> {
        *self.slot = Dynamic::from_bool(b);
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<(), E> {
        *self.slot = Reached::Whole.visit_i64(i)?;
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<(), E> {
        *self.slot = Reached::Whole.visit_u64(u)?;
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, f: f64) -> Result<(), E> {
        *self.slot = Reached::Whole.visit_f64(f)?;
        Ok(())
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        if !self.slot.is_shared() {
            if let Some(mut string) = self.slot.write_lock::<ImmutableString>() {
                // Copies only when a script kept the old string (`make_mut` of a shared one).
                let text = string.make_mut();
                text.clear();
                text.push_str(s);
                return Ok(());
            }
        }
        *self.slot = Dynamic::from(ImmutableString::from(s));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        if let (Reached::Items(indices), false) = (self.reached, self.slot.is_shared()) {
            if let Some(mut array) = self.slot.write_lock::<Array>() {
                return items_into(&mut array, indices, seq);
            }
        }
        *self.slot = self.reached.visit_seq(seq)?;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<(), A::Error> {
        if let Reached::Props(fields) = self.reached {
            if fields.len() <= TRACKED_FIELDS && !self.slot.is_shared() {
                if !self.slot.is_map() {
                    *self.slot = Dynamic::from_map(Map::new());
                }
                if let Some(mut map) = self.slot.write_lock::<Map>() {
                    return props_into(&mut map, fields, access);
                }
            }
        }
        *self.slot = self.reached.visit_map(access)?;
        Ok(())
    }
}

/// The elements of a JSON array into `array`, as [`Reached::Items`] keeps them: up to the last
/// index named, the named ones parsed into what is there, the others `()`.
fn items_into<'de, A: SeqAccess<'de>>(
    array: &mut Array,
    indices: &BTreeMap<usize, Part>,
    mut seq: A,
) -> Result<(), A::Error> {
    let kept = indices
        .keys()
        .next_back()
        .map_or(0, |i| i.saturating_add(1));
    let mut n = 0;
    while n < kept {
        if array.len() <= n {
            array.push(Dynamic::UNIT);
        }
        let Some(slot) = array.get_mut(n) else {
            break;
        };
        let more = match indices.get(&n) {
            Some(part) => seq
                .next_element_seed(Into {
                    slot,
                    reached: Reached::of(part),
                })?
                .is_some(),
            None => {
                *slot = Dynamic::UNIT;
                seq.next_element_seed(Skip)?.is_some()
            }
        };
        if !more {
            array.truncate(n);
            return Ok(());
        }
        n += 1;
    }
    array.truncate(n);
    while seq.next_element_seed(Skip)?.is_some() {}
    Ok(())
}

/// The entries of a JSON object into `map`, as [`Reached::Props`] keeps them: the named fields
/// present (the last of a repeated key wins), each parsed into what is there, and no others.
fn props_into<'de, A: MapAccess<'de>>(
    map: &mut Map,
    fields: &BTreeMap<String, Part>,
    mut access: A,
) -> Result<(), A::Error> {
    let bit = |found: Option<usize>| found.map_or(0u64, |i| 1u64 << i);
    let mut seen = 0u64;
    while let Some(named) = access.next_key_seed(NamedKey(fields))? {
        let Some((name, part)) = named else {
            access.next_value_seed(Skip)?;
            continue;
        };
        // `name` is the map's own key: found by address, not by comparing text.
        seen |= bit(fields.keys().position(|k| std::ptr::eq(k, name)));
        let reached = Reached::of(part);
        match map.get_mut(name.as_str()) {
            Some(slot) => access.next_value_seed(Into { slot, reached })?,
            None => {
                let mut value = Dynamic::UNIT;
                access.next_value_seed(Into {
                    slot: &mut value,
                    reached,
                })?;
                map.insert(name.as_str().into(), value);
            }
        }
    }
    // Every field seen is in the map, so it holds no other key exactly when the counts agree.
    if map.len() != seen.count_ones() as usize {
        map.retain(|key, _| seen & bit(fields.keys().position(|k| k == key.as_str())) != 0);
    }
    Ok(())
}

/// An object key, decoded.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Identifier;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Identifier, D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for Key {
    type Value = Identifier;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, s: &str) -> Result<Identifier, E> {
        Ok(s.into())
    }
}

/// Named fields up to which a key is looked up by a scan rather than a search.
const SCANNED_FIELDS: usize = 8;

/// An object key, decoded and looked up among the named fields: the field and what is reached
/// of it, or `None` for a key no hook names.
struct NamedKey<'p>(&'p BTreeMap<String, Part>);

impl<'de, 'p> DeserializeSeed<'de> for NamedKey<'p> {
    type Value = Option<(&'p String, &'p Part)>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'p> Visitor<'_> for NamedKey<'p> {
    type Value = Option<(&'p String, &'p Part)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        // A hook names a few fields: comparing lengths first skips most string comparisons
        // a search of the map would make.
        if self.0.len() <= SCANNED_FIELDS {
            return Ok(self
                .0
                .iter()
                .find(|(k, _)| k.len() == s.len() && k.as_str() == s));
        }
        Ok(self.0.get_key_value(s))
    }
}

/// A value no hook reaches: parsed and checked as a `Value` would be, nothing kept. Not
/// `serde::de::IgnoredAny`: serde_json skips that without decoding strings (a lone surrogate
/// escape passes), without parsing numbers (`1e999` passes) and without its nesting limit,
/// so text a `Value` refuses would be accepted.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
        while access.next_key_seed(Skip)?.is_some() {
            access.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::scripting::partial;
    use crate::scripting::reach::{self, BodyReach};
    use serde_json::Value;

    /// What `hook` (an `on_event` hook) reaches of `ev.data`: its named top-level fields.
    fn fields_of(hook: &str) -> BTreeMap<String, Part> {
        let ast = rhai::Engine::new_raw().compile(hook).unwrap();
        match reach::of_hook(&ast, "on_event", "data").body() {
            BodyReach::Fields(fields) => fields.clone(),
            other => panic!("{hook}: reaches {other:?}, not named fields"),
        }
    }

    /// The value as the full parse and `partial::to_script` give it.
    fn full(text: &str, fields: &BTreeMap<String, Part>) -> Option<String> {
        let value: Value = serde_json::from_str(text).ok()?;
        let reach = BodyReach::Fields(fields.clone());
        let d = partial::to_script(&value, &reach).unwrap().unwrap();
        Some(format!("{d:?}"))
    }

    fn seeded(text: &str, fields: &BTreeMap<String, Part>) -> Option<String> {
        parse(text, fields).ok().map(|d| format!("{d:?}"))
    }

    const HOOKS: [&str; 8] = [
        "fn on_event(ev) { ev.data.choices[0].delta.content }",
        "fn on_event(ev) { ev.data.choices[0].delta.content; ev.data.model; ev.data.choices[0].index }",
        "fn on_event(ev) { ev.data.choices[2].delta; ev.data.choices[0].finish_reason }",
        "fn on_event(ev) { ev.data.choices }",
        r#"fn on_event(ev) { ev.data["x y"]["a\"b"] }"#,
        "fn on_event(ev) { let t = type_of(ev.data); }",
        r#"fn on_event(ev) { let m = "model" in ev.data; }"#,
        "fn on_event(ev) { ev.data.usage.total_tokens; ev.data.choices[1] }",
    ];

    const VALID: [&str; 30] = [
        r#"{"id":"c1","object":"chat.completion.chunk","created":1767225600,"model":"m","choices":[{"index":0,"delta":{"content":" tok7"},"finish_reason":null}]}"#,
        r#"{"id":"c1","choices":[]}"#,
        r#"{"id":"c1"}"#,
        r#"{}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"total_tokens":9}}"#,
        r#"{"choices":[1, "two", null]}"#,
        r#"{"choices":[{"delta":"text"}]}"#,
        r#"{"choices":[{"delta":[1,{"content":2}]}]}"#,
        r#"{"choices":{"0":{"delta":{"content":"obj"}}}}"#,
        r#"{"choices":"not an array","model":null}"#,
        r#"{"choices":[{"delta":{"content":null}}, {"delta":{"content":"b"}}, {"delta":{"content":"c"}}, {"x":[]}]}"#,
        r#"{"ch\u006fices":[{"d\u0065lta":{"c\u006Fntent":"esc\n\"aped\" \u00e9 \ud83d\ude00 \\ \/"}}]}"#,
        r#"{"x y":{"a\"b":[1,2.5,-3,"s"],"ab":0}}"#,
        r#"{"choices":[1],"choices":[{"delta":{"content":"last wins"}}]}"#,
        r#"{"choices":[{"delta":{"content":"first","content":"second"}}]}"#,
        r#"{"choices":[{"delta":{"content":"a"}}],"choices":"now a string"}"#,
        r#"{"model":1,"model":{"deep":[{"x":1}]},"model":[true,false]}"#,
        r#"  {"choices" : [ { "delta" : { "content" : "spaced" } } ] }  "#,
        r#"{"choices":[{"delta":{"content":18446744073709551615}}],"n":-9223372036854775808}"#,
        r#"{"choices":[{"delta":{"content":-0}}],"usage":{"total_tokens":1e300}}"#,
        r#"{"choices":[{"delta":{"content":1.5e-7}}],"usage":{"total_tokens":9223372036854775807}}"#,
        r#"{"choices":[{"delta":{"content":{"nested":{"a":[1,{"b":null}]}}}}]}"#,
        r#"{"usage":[1,2],"choices":[[0],[1]]}"#,
        r#"[1,2,{"choices":[]}]"#,
        r#""a string""#,
        "5",
        "-0",
        "18446744073709551615",
        "null",
        "true",
    ];

    #[test]
    fn seeded_parse_gives_what_the_full_parse_gives() {
        for hook in HOOKS {
            let fields = fields_of(hook);
            for text in VALID {
                let want = full(text, &fields);
                assert!(want.is_some(), "{text} must be valid JSON");
                assert_eq!(seeded(text, &fields), want, "{hook} on {text}");
            }
        }
    }

    /// One slot parsed into text after text (as a stream's events are) equals a fresh parse of
    /// each, whatever the previous text left in it.
    #[test]
    fn parsing_into_what_the_last_text_left_gives_a_fresh_parse() {
        let odd = [
            "[DONE]",
            r#"{"a":1e999}"#,
            r#"{"choices":[{"delta":{"content":"a string longer than an inline one, to be sure"}}]}"#,
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
            r#"{"choices":[{"delta":{"content":"x"}}, {"delta":{"content":"y"}}, 3]}"#,
            r#"{"choices":[{"delta":{"content":"x"}}]"#,
        ];
        let texts: Vec<&str> = VALID.iter().chain(odd.iter()).copied().collect();
        for hook in HOOKS {
            let fields = fields_of(hook);
            for order in [texts.clone(), texts.iter().rev().copied().collect()] {
                let mut slot = Dynamic::UNIT;
                // A script that kept a string of the last event: it must not change.
                let mut kept = Vec::new();
                for text in order.iter().chain(order.iter()) {
                    let got = parse_into(text, &fields, &mut slot).map(|()| format!("{slot:?}"));
                    assert_eq!(
                        got.as_ref().ok().cloned(),
                        seeded(text, &fields),
                        "{hook} on {text}"
                    );
                    if got.is_err() {
                        slot = Dynamic::from(text.to_string());
                    }
                    got_string(&slot, &mut kept);
                }
                for (value, want) in &kept {
                    assert_eq!(&format!("{value:?}"), want);
                }
            }
        }
    }

    /// Keeps a clone of the first string found in `slot` with its text, as a script storing it
    /// in `ctx` would; `None` when `slot` is not a map.
    fn got_string(slot: &Dynamic, kept: &mut Vec<(Dynamic, String)>) -> Option<()> {
        let map = slot.read_lock::<Map>()?;
        let choices = map
            .get("choices")
            .and_then(|c| c.read_lock::<Array>().map(|a| a.clone()));
        let first = choices.and_then(|c| c.first().cloned());
        let delta = first.and_then(|f| f.read_lock::<Map>().and_then(|m| m.get("delta").cloned()));
        let content =
            delta.and_then(|d| d.read_lock::<Map>().and_then(|m| m.get("content").cloned()));
        if let Some(c) = content.filter(Dynamic::is_string) {
            let text = format!("{c:?}");
            kept.push((c, text));
        }
        Some(())
    }

    #[test]
    fn only_the_reached_path_is_built() {
        let fields = fields_of(HOOKS[0]);
        let got = seeded(VALID[0], &fields).unwrap();
        assert_eq!(got, r#"#{"choices": [#{"delta": #{"content": " tok7"}}]}"#);
        let fields = fields_of(HOOKS[2]);
        let text = r#"{"choices":[{"finish_reason":"stop","delta":{"content":"x"}},{"a":1},{"delta":{"c":2},"x":3},{"z":4}]}"#;
        assert_eq!(
            seeded(text, &fields).unwrap(),
            r#"#{"choices": [#{"finish_reason": "stop"}, (), #{"delta": #{"c": 2}}]}"#
        );
        // An empty `fields` (only `type_of(ev.data)`) keeps nothing of an object.
        assert_eq!(seeded(VALID[0], &fields_of(HOOKS[5])).unwrap(), "#{}");
    }

    #[test]
    fn text_a_value_refuses_is_refused_wherever_it_is() {
        let deep_skipped = format!(r#"{{"x":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        let deep_reached = format!(r#"{{"choices":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        let just_deep_enough = format!(r#"{{"x":{}{}}}"#, "[".repeat(126), "]".repeat(126));
        let texts = [
            "[DONE]",
            "",
            "   ",
            "{",
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{"b":2}"#,
            r#"{"a" 1}"#,
            "{'a':1}",
            r#"{"a":tru}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00x"}"#,
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
            r#"{"\ud800":1}"#,
            r#"{"a":1e999}"#,
            r#"{"a":-1e999}"#,
            r#"{"choices":[{"delta":{"content":1e400}}]}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":NaN}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"\q"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"choices":[1,]}"#,
            r#"{"choices":[{"delta":{"content":"x"}}]"#,
            r#"{"choices":[{"delta":{"content":"x"}]}"#,
            deep_skipped.as_str(),
            deep_reached.as_str(),
            just_deep_enough.as_str(),
            r#"{"a":"\ud83d\ude00"}"#,
        ];
        for hook in HOOKS {
            let fields = fields_of(hook);
            for text in texts {
                let want = full(text, &fields);
                assert_eq!(seeded(text, &fields), want, "{hook} on {text}");
            }
        }
        let fields = fields_of(HOOKS[0]);
        assert!(parse(&deep_skipped, &fields).is_err());
        assert!(parse(&just_deep_enough, &fields).is_ok());
        assert!(parse(r#"{"a":"\ud800"}"#, &fields).is_err());
        assert!(parse(r#"{"a":1e999}"#, &fields).is_err());
    }
}
