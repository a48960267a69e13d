//! The body as a hook call sees it: converted to script values only as far as the hooks can
//! reach it (see [`reach`](super::reach)), and merged back only where a hook changed it, so a
//! body no hook changed stays the value (and the bytes) it came as.
//!
//! A body the hooks only rename keys in (`body.rename_keys(aliases)`, see
//! [`BodyReach::Renamed`]) is given to them as a stand-in map holding a [`RenameLog`]: the
//! `rename_keys` helper records its aliases there, and [`merge`] renames the JSON value itself.

use rhai::{Dynamic, Map};
use serde_json::Value;

use super::api::{dynamic_to_json, json_to_dynamic};
use super::reach::BodyReach;

/// The one key of the stand-in map a renaming-only hook gets as its body. The value under it
/// is a [`RenameLog`], which no JSON converts to, so a real body is never taken for it.
pub(crate) const RENAME_LOG_KEY: &str = "\u{0}rename_log";

/// The aliases `rename_keys` was called with on the stand-in body, in call order, each as the
/// (from, to) pairs in the order the script helper applies them.
#[derive(Debug, Clone, Default)]
pub(crate) struct RenameLog(pub Vec<Vec<(String, String)>>);

/// The log of a stand-in body map, when `map` is one.
pub(crate) fn rename_log(map: &mut Map) -> Option<rhai::DynamicWriteLock<'_, RenameLog>> {
    if map.len() != 1 {
        return None;
    }
    map.get_mut(RENAME_LOG_KEY)
        .and_then(|v| v.write_lock::<RenameLog>())
}

/// The named fields of a JSON object are all a hook can see of it.
fn partial<'a>(
    json: &'a Value,
    reach: &'a BodyReach,
) -> Option<(
    &'a serde_json::Map<String, Value>,
    &'a std::collections::BTreeSet<String>,
)> {
    match (json, reach) {
        (Value::Object(obj), BodyReach::Fields(names)) => Some((obj, names)),
        _ => None,
    }
}

/// The script value of `json` for hooks that reach `reach` of it; `None` when they never name
/// it (the argument then has no such field).
pub(crate) fn to_script(json: &Value, reach: &BodyReach) -> Result<Option<Dynamic>, String> {
    if *reach == BodyReach::Untouched {
        return Ok(None);
    }
    if *reach == BodyReach::Renamed && json.is_object() {
        let mut map = Map::new();
        map.insert(RENAME_LOG_KEY.into(), Dynamic::from(RenameLog::default()));
        return Ok(Some(Dynamic::from_map(map)));
    }
    if let Some((obj, names)) = partial(json, reach) {
        let mut map = Map::new();
        for name in names {
            if let Some(v) = obj.get(name) {
                map.insert(name.as_str().into(), json_to_dynamic(v)?);
            }
        }
        return Ok(Some(Dynamic::from_map(map)));
    }
    json_to_dynamic(json).map(Some)
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
    if *reach == BodyReach::Renamed {
        let log = after
            .write_lock::<Map>()
            .and_then(|mut m| rename_log(&mut m).map(|mut log| std::mem::take(&mut log.0)));
        if let Some(log) = log {
            let mut changed = false;
            for aliases in &log {
                changed |= rename_in_json(json, aliases, 0)?;
            }
            return Ok(changed);
        }
    }
    if partial(json, reach).is_some() {
        if let Some(mut map) = after.read_lock::<Map>().map(|m| m.clone()) {
            return merge_fields(json, &mut map, reach);
        }
    }
    let new = dynamic_to_json(&after)?;
    if new == *json {
        return Ok(false);
    }
    *json = new;
    Ok(true)
}

fn merge_fields(json: &mut Value, after: &mut Map, reach: &BodyReach) -> Result<bool, String> {
    let (Value::Object(obj), BodyReach::Fields(names)) = (json, reach) else {
        return Ok(false);
    };
    let mut changed = false;
    for name in names {
        match after.remove(name.as_str()) {
            Some(v) => {
                let new = dynamic_to_json(&v)?;
                if obj.get(name) != Some(&new) {
                    obj.insert(name.clone(), new);
                    changed = true;
                }
            }
            None => changed |= obj.shift_remove(name).is_some(),
        }
    }
    // Fields the hooks could not name can only have been added by a plugin reaching the whole
    // body, which would have made the reach whole; kept anyway, never lost.
    for (name, v) in after.iter() {
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
    if depth > super::api::MAX_DEPTH {
        return Err(super::api::too_deep());
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
        BodyReach::Fields(names.iter().map(|s| s.to_string()).collect())
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
