//! `on_event` over the events of one stream. The events of a stream have the same shape, and a
//! hook that can only read `ev.data` (see [`Reach::body_writes`]) leaves the argument as it was
//! given, so one event's argument — the `ev` map, and the maps, arrays and
//! strings of `ev.data` parsed into it ([`partial_parse::parse_into`]) — is filled again for the
//! next instead of being built and freed per event. Every other hook takes the per-event path
//! ([`Plugins::run_on_event`]).

use rhai::{Dynamic, Map};

use super::event_data::EventInput;
use super::outcome::{check_event, Given};
use super::partial_parse;
use super::plugin::{EventVerdict, Hook, Plugins, ScriptFailure};
use super::reach::BodyReach;

/// What the `on_event` hooks of one stream carry from event to event: `ctx`, and the argument
/// the last event was given, kept for the next.
pub struct EventStream {
    /// `ev.ctx`, always a map (as a [`Dynamic`], so moving it in and out of `ev` boxes nothing).
    pub(super) ctx: Dynamic,
    /// The `ev` map, holding exactly the fields calls given `Given` get.
    arg: Option<(Given, Dynamic)>,
}

impl EventStream {
    /// A stream whose hooks start with `ctx` (what the request's hooks left there).
    pub fn new(ctx: Map) -> Self {
        Self {
            ctx: Dynamic::from_map(ctx),
            arg: None,
        }
    }

    /// `ctx` as the hooks left it.
    pub fn into_ctx(self) -> Map {
        self.ctx.try_cast::<Map>().unwrap_or_default()
    }
}

/// The keys of the `ev` map a reusing call gives: `ctx` and `drop` when the hooks name them,
/// and `data`.
const CTX: &str = "ctx";
const DROP: &str = "drop";
const DATA: &str = "data";

impl Plugins {
    /// Runs every plugin's `on_event` for one event of a stream (its `data:` text), as
    /// [`on_event_text`](Self::on_event_text) does, carrying `ctx` in `stream`.
    pub fn on_stream_event(
        &self,
        data: &str,
        stream: &mut EventStream,
    ) -> Result<EventVerdict, ScriptFailure> {
        let reach = &self.reach[Hook::Event.index()];
        // Hooks that reach `ev.data` whole, write it, let it escape, or reach nothing (the
        // blind ones) take the per-event path.
        let fields = match reach.body() {
            BodyReach::Fields(fields) if !reach.body_writes() && !reach.escapes() => fields,
            _ => {
                let mut ctx = std::mem::take(&mut stream.ctx)
                    .try_cast::<Map>()
                    .unwrap_or_default();
                let verdict = self.run_on_event(EventInput::Text(data), &mut ctx);
                stream.ctx = Dynamic::from_map(ctx);
                return verdict;
            }
        };
        let Some(first) = self.first_with(Hook::Event) else {
            return Ok(EventVerdict::Unchanged);
        };
        let given = self.given[Hook::Event.index()];
        let keys = 1 + usize::from(given.ctx) + usize::from(given.drop);
        let mut arg = match stream.arg.take() {
            // Kept by plugins that give the same fields (a caller could switch plugins).
            Some((kept, arg)) if kept == given => arg,
            _ => {
                let mut map = Map::new();
                for (key, given) in [(CTX, given.ctx), (DROP, given.drop), (DATA, true)] {
                    if given {
                        map.insert(key.into(), Dynamic::UNIT);
                    }
                }
                Dynamic::from_map(map)
            }
        };
        {
            let Some(mut map) = arg.write_lock::<Map>() else {
                return Err(self.fail(first, Hook::Event, "cannot give ev", "not a map"));
            };
            if given.ctx {
                if let Some(slot) = map.get_mut(CTX) {
                    std::mem::swap(slot, &mut stream.ctx);
                }
            }
            if let Some(slot) = map.get_mut(DROP) {
                *slot = Dynamic::FALSE;
            }
            if let Some(slot) = map.get_mut(DATA) {
                // Text that is not JSON (`[DONE]`) is given as the string it is, as
                // `EventData::parse` classifies it.
                if partial_parse::parse_into(data, fields, slot).is_err() {
                    *slot = Dynamic::from(data.to_owned());
                }
            }
        }
        let check = |map: &Map| check_event(map, given);
        let (last, mut arg) = match self.run_each(first, Hook::Event, arg, &check) {
            Ok(done) => done,
            Err(failure) => {
                stream.ctx = Dynamic::from_map(Map::new());
                return Err(failure);
            }
        };
        let Some(mut map) = arg.write_lock::<Map>() else {
            stream.ctx = Dynamic::from_map(Map::new());
            return Err(self.fail(last, Hook::Event, "bad result", "the argument is not a map"));
        };
        if given.ctx {
            let ctx = map.get_mut(CTX).map(std::mem::take).unwrap_or_default();
            match plain_map(ctx) {
                Some(ctx) => stream.ctx = ctx,
                None => {
                    stream.ctx = Dynamic::from_map(Map::new());
                    return Err(self.fail(last, Hook::Event, "bad ev.ctx", "ctx must be a map"));
                }
            }
        }
        let dropped = map
            .get(DROP)
            .and_then(|d| d.as_bool().ok())
            .unwrap_or(false);
        // A hook may have added fields to `ev`; the next event must not see them.
        let reusable = map.len() == keys;
        drop(map);
        if reusable {
            stream.arg = Some((given, arg));
        }
        Ok(if dropped {
            EventVerdict::Drop
        } else {
            EventVerdict::Unchanged
        })
    }
}

/// `ctx` as the next call is given it: a map of its own, with no tag or access mode a script
/// set on the value (as moving the map out of its `Dynamic` and into a new one leaves it).
fn plain_map(ctx: Dynamic) -> Option<Dynamic> {
    if !ctx.is_shared() && !ctx.is_read_only() && ctx.tag() == 0 && ctx.is_map() {
        return Some(ctx);
    }
    ctx.try_cast::<Map>().map(Dynamic::from_map)
}
