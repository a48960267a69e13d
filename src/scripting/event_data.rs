//! `ev.data` for `on_event` hooks: the script value an event's data is given as, and the
//! verdict on the event from what the hooks left there.
//!
//! Hooks that can only read the data (see [`Reach::body_writes`]) and name fields of it get
//! those parsed straight from the event's text ([`partial_parse`]); nothing is merged back, so
//! no `serde_json::Value` of the event is built. Hooks that can write get the parsed value
//! converted as far as they reach it, and the result merged back into it.

use rhai::Dynamic;
use serde_json::Value;

use super::api::EventData;
use super::partial;
use super::partial_parse;
use super::plugin::EventVerdict;
use super::reach::{BodyReach, Reach};

/// An event's data as the caller has it.
#[derive(Clone, Copy)]
pub(super) enum EventInput<'a> {
    /// The `data:` text, not parsed yet.
    Text(&'a str),
    /// Already classified.
    Data(&'a EventData),
}

/// The value hooks that reach `reach` of the data get as `ev.data`, and the data to merge
/// their result into (`None` when they cannot write it: the event then goes on unchanged).
pub(super) fn to_script(
    input: EventInput<'_>,
    reach: &Reach,
) -> Result<(Dynamic, Option<EventData>), String> {
    if let (EventInput::Text(text), BodyReach::Fields(fields), false) =
        (input, reach.body(), reach.body_writes())
    {
        // Text that is not JSON (`[DONE]`) is given as the string it is, as `EventData::parse`
        // classifies it.
        let value =
            partial_parse::parse(text, fields).unwrap_or_else(|_| Dynamic::from(text.to_owned()));
        return Ok((value, None));
    }
    let data = match input {
        EventInput::Text(text) => EventData::parse(text),
        EventInput::Data(data) => data.clone(),
    };
    let value = match &data {
        EventData::Json(value) => partial::to_script(value, reach.body())?.unwrap_or(Dynamic::UNIT),
        EventData::Raw(text) => Dynamic::from(text.clone()),
    };
    Ok((value, reach.body_writes().then_some(data)))
}

/// What becomes of an event whose data was `before` once the hooks left `after` as `ev.data`
/// (made by [`to_script`] with the same `reach`).
pub(super) fn verdict(
    before: EventData,
    after: Dynamic,
    reach: &BodyReach,
) -> Result<EventVerdict, String> {
    if after.is_string() {
        let text = after.to_string();
        let same = match &before {
            EventData::Raw(t) => *t == text,
            EventData::Json(Value::String(t)) => *t == text,
            EventData::Json(_) => false,
        };
        return Ok(if same {
            EventVerdict::Unchanged
        } else {
            EventVerdict::Changed(EventData::Raw(text))
        });
    }
    // Raw text came in and something else goes out: always a change.
    let (mut value, raw_before) = match before {
        EventData::Json(value) => (value, false),
        EventData::Raw(_) => (Value::Null, true),
    };
    let changed = partial::merge(&mut value, after, reach)?;
    Ok(if changed || raw_before {
        EventVerdict::Changed(EventData::Json(value))
    } else {
        EventVerdict::Unchanged
    })
}
