//! The body as a hook call sees it: converted to script values only as far as the hooks can
//! reach it (see [`reach`](super::reach)), and merged back only where a hook changed it, so a
//! body no hook changed stays the value (and the bytes) it came as.
//!
//! A body the hooks only rename keys in (`body.rename_keys(aliases)`, see
//! [`BodyReach::Renamed`]) is given to them as a [`RenameLog`], a stand-in scripts see as a
//! map: its `rename_keys` records the aliases, and [`merge`] renames the JSON value itself.

use rhai::{Dynamic, ImmutableString, Map};
use serde_json::Value;

use super::api::{alias_list, check_aliases, dynamic_to_json, json_to_dynamic};
use std::collections::BTreeMap;

use super::api::{too_deep, MAX_DEPTH};
use super::reach::{BodyReach, Part, Reach};

/// The body a renaming-only hook gets for a JSON object. The engine registers it under the
/// name `map` (so `type_of` says what it would of the real body) with one method,
/// `rename_keys`, which records its aliases here. A type of its own rather than a map holding
/// a marker: `type_of(req.body)` copies the value, and this copies with two small allocations
/// where a map needs a tree node too; and no script can make one.
#[derive(Debug, Clone, Default)]
pub(crate) struct RenameLog(pub Renames);

impl RenameLog {
    /// `rename_keys` on the stand-in: the same check of `aliases` as on a real map, then kept
    /// as it came (the by-value argument is the script's copy already).
    pub(crate) fn record(&mut self, mut aliases: Map) -> Result<(), String> {
        check_aliases(&aliases)?;
        // A name shared with a closure could change after this call: kept as it is now, as
        // renaming a real map would have used it.
        for to in aliases.values_mut() {
            if to.is_shared() {
                *to = to.flatten_clone();
            }
        }
        self.0.push(Aliases(aliases));
        Ok(())
    }
}

/// The aliases map one `rename_keys` call passed, every value a string (checked when
/// recorded); applied in key order.
#[derive(Debug, Clone, Default)]
pub struct Aliases(Map);

impl Aliases {
    /// The (from, to) pairs in the order `rename_keys` applies them.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, ImmutableString)> + '_ {
        self.0.iter().filter_map(|(from, to)| {
            let to = to.clone().into_immutable_string().ok()?;
            Some((from.as_str(), to))
        })
    }

    /// Whether these are exactly `pairs`, in the same order (no allocation).
    pub fn is(&self, pairs: &[(String, String)]) -> bool {
        self.0.len() == pairs.len()
            && self.0.iter().zip(pairs).all(|((from, to), (f, t))| {
                from.as_str() == f
                    && to
                        .read_lock::<ImmutableString>()
                        .is_some_and(|to| to.as_str() == t)
            })
    }

    /// The pairs as owned strings, for the JSON helpers that take them.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.pairs()
            .map(|(from, to)| (from.to_owned(), to.to_string()))
            .collect()
    }
}

/// Key renamings, the aliases of each `rename_keys` call in call order.
pub type Renames = Vec<Aliases>;

/// The renamings recorded in `after`, the stand-in body of hooks that only rename (`None` for
/// any other body).
pub(crate) fn take_renames(after: &mut Dynamic, reach: &BodyReach) -> Option<Renames> {
    if *reach != BodyReach::Renamed {
        return None;
    }
    after
        .write_lock::<RenameLog>()
        .map(|mut log| std::mem::take(&mut log.0))
}

/// See [`Plugins::expected_renames`](super::Plugins::expected_renames): given each hook's
/// plugin constants and reach, in run order, the pairs that the only `rename_keys` call among
/// them records when it passes a constant holding a map of names.
pub(crate) fn expected_renames<'a>(
    hooks: impl Iterator<Item = (&'a [(String, Dynamic)], &'a Reach)>,
) -> Option<Vec<(String, String)>> {
    let mut calls = hooks
        .flat_map(|(constants, reach)| reach.rename_args().iter().map(move |a| (constants, a)));
    let (constants, Some(var)) = calls.next()? else {
        return None;
    };
    if calls.next().is_some() {
        return None;
    }
    // Of two constants of one name, the hooks see the last.
    let (_, value) = constants.iter().rev().find(|(name, _)| name == var)?;
    alias_list(&*value.read_lock::<Map>()?).ok()
}

/// Applies `renames` to `json`; whether a key was renamed.
pub(crate) fn apply_renames(json: &mut Value, renames: &Renames) -> Result<bool, String> {
    // An empty object (the text path's stand-in for the body) has nothing to rename: no pairs
    // are built for it.
    if json.as_object().is_some_and(serde_json::Map::is_empty) {
        return Ok(false);
    }
    let mut changed = false;
    for aliases in renames {
        changed |= rename_in_json(json, &aliases.to_vec(), 0)?;
    }
    Ok(changed)
}

/// The script value of `json` for hooks that reach `reach` of it; `None` when they never name
/// it (the argument then has no such field).
pub(crate) fn to_script(json: &Value, reach: &BodyReach) -> Result<Option<Dynamic>, String> {
    if *reach == BodyReach::Untouched {
        return Ok(None);
    }
    if *reach == BodyReach::Renamed && json.is_object() {
        return Ok(Some(Dynamic::from(RenameLog::default())));
    }
    match (json, reach) {
        // The named fields of a JSON object are all a hook can see of it.
        (Value::Object(obj), BodyReach::Fields(fields)) => {
            props_to_script(obj, fields, 0).map(Some)
        }
        _ => json_to_dynamic(json).map(Some),
    }
}

fn props_to_script(
    obj: &serde_json::Map<String, Value>,
    fields: &BTreeMap<String, Part>,
    depth: usize,
) -> Result<Dynamic, String> {
    let mut map = Map::new();
    for (name, part) in fields {
        if let Some(v) = obj.get(name) {
            map.insert(name.as_str().into(), part_to_script(v, part, depth + 1)?);
        }
    }
    Ok(Dynamic::from_map(map))
}

/// `json` as far as `part` reaches it: an object with only the named properties, an array with
/// only the indexed elements (the others `()`, which no constant index names), else whole.
fn part_to_script(json: &Value, part: &Part, depth: usize) -> Result<Dynamic, String> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    match (json, part) {
        (Value::Object(obj), Part::Props(fields)) => props_to_script(obj, fields, depth),
        (Value::Array(items), Part::Items(indices)) => {
            let len = indices
                .keys()
                .next_back()
                .map_or(0, |last| items.len().min(last.saturating_add(1)));
            let mut array = vec![Dynamic::UNIT; len];
            for (i, part) in indices.range(..len) {
                if let (Some(slot), Some(item)) = (array.get_mut(*i), items.get(*i)) {
                    *slot = part_to_script(item, part, depth + 1)?;
                }
            }
            Ok(Dynamic::from_array(array))
        }
        _ => json_to_dynamic(json),
    }
}

/// Merges what the hooks left (`after`, made by [`to_script`] with the same `reach`) into
/// `json`; whether that changed it.
pub(crate) fn merge(
    json: &mut Value,
    mut after: Dynamic,
    reach: &BodyReach,
) -> Result<bool, String> {
    if *reach == BodyReach::Untouched {
        return Ok(false);
    }
    if let Some(log) = take_renames(&mut after, reach) {
        return apply_renames(json, &log);
    }
    match (json, reach) {
        (Value::Object(obj), BodyReach::Fields(fields)) if after.is_map() => {
            merge_props(obj, after, fields, 0)
        }
        (json, _) => merge_whole(json, &after),
    }
}

fn merge_whole(json: &mut Value, after: &Dynamic) -> Result<bool, String> {
    let new = dynamic_to_json(after)?;
    if new == *json {
        return Ok(false);
    }
    *json = new;
    Ok(true)
}

/// Merges `after`, made by [`part_to_script`] from `json` and `part`, back into `json`. A value
/// that is not the map or array it was made as is a new value a hook put there: taken whole.
fn merge_part(json: &mut Value, after: Dynamic, part: &Part, depth: usize) -> Result<bool, String> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    match (json, part) {
        (Value::Object(obj), Part::Props(fields)) if after.is_map() => {
            merge_props(obj, after, fields, depth)
        }
        (Value::Array(items), Part::Items(indices)) if after.is_array() => {
            let mut array = after.cast::<rhai::Array>();
            let mut changed = false;
            for (i, part) in indices {
                if let (Some(have), Some(v)) = (items.get_mut(*i), array.get_mut(*i)) {
                    changed |= merge_part(have, std::mem::take(v), part, depth + 1)?;
                }
            }
            Ok(changed)
        }
        (json, _) => merge_whole(json, &after),
    }
}

/// [`merge_part`] for an object of which `fields` are reached; `after` is a map.
fn merge_props(
    obj: &mut serde_json::Map<String, Value>,
    after: Dynamic,
    fields: &BTreeMap<String, Part>,
    depth: usize,
) -> Result<bool, String> {
    let mut map = after.cast::<Map>();
    let mut changed = false;
    for (name, part) in fields {
        match (map.remove(name.as_str()), obj.get_mut(name)) {
            (Some(v), Some(have)) => changed |= merge_part(have, v, part, depth + 1)?,
            (Some(v), None) => {
                obj.insert(name.clone(), dynamic_to_json(&v)?);
                changed = true;
            }
            (None, _) => changed |= obj.shift_remove(name).is_some(),
        }
    }
    // Properties the hooks could not name can only have been added by a plugin reaching this
    // value whole, which would have made the reach whole; kept anyway, never lost.
    for (name, v) in map.iter() {
        obj.insert(name.to_string(), dynamic_to_json(v)?);
        changed = true;
    }
    Ok(changed)
}

/// `rename_keys` on a JSON value: what the script helper does on script values (each alias in
/// turn at this level, then every value below), without converting them.
fn rename_in_json(
    value: &mut Value,
    aliases: &[(String, String)],
    depth: usize,
) -> Result<bool, String> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let mut changed = false;
    match value {
        Value::Object(obj) => {
            for (from, to) in aliases {
                if let Some(v) = obj.shift_remove(from) {
                    changed |= from != to;
                    obj.insert(to.clone(), v);
                }
            }
            for v in obj.values_mut() {
                changed |= rename_in_json(v, aliases, depth + 1)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                changed |= rename_in_json(v, aliases, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(names: &[&str]) -> BodyReach {
        BodyReach::Fields(names.iter().map(|s| (s.to_string(), Part::Whole)).collect())
    }

    #[test]
    fn recorded_aliases_keep_their_order_and_compare_without_building() {
        let mut log = RenameLog::default();
        let mut aliases = Map::new();
        aliases.insert("model".into(), Dynamic::from("model_id"));
        aliases.insert("a".into(), Dynamic::from("b"));
        log.record(aliases.clone()).unwrap();
        let recorded = &log.0[0];
        let pairs = [("a", "b"), ("model", "model_id")].map(|(f, t)| (f.into(), t.into()));
        assert_eq!(recorded.to_vec(), pairs);
        assert!(recorded.is(&pairs));
        assert!(!recorded.is(&pairs[..1]));
        assert!(!recorded.is(&[pairs[1].clone(), pairs[0].clone()]));
        // A shared name is kept as it was when recorded.
        let mut shared = Dynamic::from("c").into_shared();
        let mut later = Map::new();
        later.insert("a".into(), shared.clone());
        log.record(later).unwrap();
        *shared.write_lock::<ImmutableString>().unwrap() = "d".into();
        assert_eq!(log.0[1].to_vec(), [("a".to_owned(), "c".to_owned())]);
        log.0.truncate(1);
        aliases.insert("n".into(), Dynamic::from_int(1));
        assert!(log.record(aliases).is_err());
        assert_eq!(log.0.len(), 1);
    }

    #[test]
    fn only_named_fields_convert_and_unchanged_stays() {
        let mut body = json!({"model": "m", "messages": [1, 2], "n": 1});
        let reach = fields(&["model", "user"]);
        let d = to_script(&body, &reach).unwrap().unwrap();
        assert_eq!(d.clone().cast::<Map>().len(), 1);
        assert!(!merge(&mut body, d, &reach).unwrap());
        assert_eq!(body, json!({"model": "m", "messages": [1, 2], "n": 1}));
    }

    #[test]
    fn set_fields_merge() {
        let mut body = json!({"model": "m", "n": 1});
        let reach = fields(&["model", "user"]);
        let mut d = to_script(&body, &reach).unwrap().unwrap();
        {
            let mut m = d.write_lock::<Map>().unwrap();
            m.insert("user".into(), Dynamic::from("u"));
        }
        assert!(merge(&mut body, d, &reach).unwrap());
        assert_eq!(body, json!({"model": "m", "n": 1, "user": "u"}));
    }

    #[test]
    fn untouched_and_whole() {
        let mut body = json!([1, 2]);
        assert!(to_script(&body, &BodyReach::Untouched).unwrap().is_none());
        // Not an object: converted whole even where fields were named.
        let d = to_script(&body, &fields(&["a"])).unwrap().unwrap();
        assert!(d.is_array());
        assert!(!merge(&mut body, d, &fields(&["a"])).unwrap());
        assert!(merge(&mut body, Dynamic::from_int(3), &BodyReach::Whole).unwrap());
        assert_eq!(body, json!(3));
    }
}
