//! Stage 4: the seed's `default_model` / `default_temperature` / `default_max_tokens`, filled
//! only where the request lacks the field (absent or null) — the Python forwarder's behaviour.
//! Also home of the seed's `field_aliases` renaming until the script stage takes it over.

use serde_json::{Map, Value};

use crate::config::Defaults;

use super::request_body::ChatPeek;

/// Whether applying `defaults` would change a request that looks like `peek`.
pub fn needed(defaults: &Defaults, peek: &ChatPeek<'_>) -> bool {
    (defaults.model.is_some() && peek.model.is_none())
        || (defaults.temperature.is_some() && peek.temperature.is_none())
        || (defaults.max_tokens.is_some() && peek.max_tokens.is_none())
}

/// Fills absent fields of the request object.
pub fn apply(defaults: &Defaults, body: &mut Map<String, Value>) {
    fn absent(body: &Map<String, Value>, key: &str) -> bool {
        body.get(key).is_none_or(Value::is_null)
    }
    if let Some(m) = &defaults.model {
        if absent(body, "model") {
            body.insert("model".into(), Value::String(m.clone()));
        }
    }
    if let Some(t) = defaults.temperature {
        if absent(body, "temperature") {
            if let Some(n) = serde_json::Number::from_f64(t) {
                body.insert("temperature".into(), Value::Number(n));
            }
        }
    }
    if let Some(n) = defaults.max_tokens {
        if absent(body, "max_tokens") {
            body.insert("max_tokens".into(), Value::from(n));
        }
    }
}

/// Renames keys everywhere in the tree (nested objects and objects inside arrays), as the
/// Python forwarder's `field_aliases` did. An existing target key is overwritten.
/// Returns whether anything was renamed (an unchanged body need not be re-serialised).
pub fn rename_fields(value: &mut Value, aliases: &[(String, String)]) -> bool {
    let mut renamed = false;
    match value {
        Value::Object(map) => {
            for (from, to) in aliases {
                if let Some(v) = map.shift_remove(from) {
                    map.insert(to.clone(), v);
                    renamed = true;
                }
            }
            for v in map.values_mut() {
                renamed |= rename_fields(v, aliases);
            }
        }
        Value::Array(items) => {
            for v in items {
                renamed |= rename_fields(v, aliases);
            }
        }
        _ => {}
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_only_absent_fields() {
        let d = Defaults {
            model: Some("dm".into()),
            temperature: Some(0.5),
            max_tokens: Some(100),
        };
        let mut v = json!({"model": "mine", "temperature": null});
        apply(&d, v.as_object_mut().unwrap());
        assert_eq!(
            v,
            json!({"model": "mine", "temperature": 0.5, "max_tokens": 100})
        );
    }

    #[test]
    fn renames_recursively() {
        let mut v = json!({"model": "x", "messages": [{"model": 1}], "n": {"model": 2}});
        rename_fields(&mut v, &[("model".into(), "model_id".into())]);
        assert_eq!(
            v,
            json!({"model_id": "x", "messages": [{"model_id": 1}], "n": {"model_id": 2}})
        );
    }
}
