//! What the gateway fills in or answers itself: `default_*` request values, `field_aliases`,
//! and the static `models:` list with its cache lifetime.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Collector;
use crate::config::raw::RawModel;
use crate::config::yaml_path::{k, Segment};
use crate::config::{Defaults, ModelEntry};

pub(super) fn defaults(
    c: &mut Collector,
    model: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u64>,
) -> Defaults {
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            c.err(
                &[k("default_temperature")],
                format!("must be between 0 and 2, got {t}"),
            );
        }
    }
    if max_tokens == Some(0) {
        c.err(&[k("default_max_tokens")], "must be at least 1");
    }
    Defaults {
        model: model.filter(|m| !m.trim().is_empty()),
        temperature,
        max_tokens,
    }
}

/// `from → to` pairs; renaming a field to itself is dropped.
pub(super) fn field_aliases(
    c: &mut Collector,
    raw: Option<BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (from, to) in raw.unwrap_or_default() {
        if from.is_empty() || to.is_empty() {
            c.err(
                &[k("field_aliases"), Segment::Key(from.clone())],
                "field names must not be empty",
            );
            continue;
        }
        if from != to {
            out.push((from, to));
        }
    }
    out
}

pub(super) fn models(c: &mut Collector, raw: Option<Vec<RawModel>>) -> Option<Vec<ModelEntry>> {
    let list = raw?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        let (id, owned_by, created) = match m {
            RawModel::Id(id) => (id, None, None),
            RawModel::Full(o) => (o.id, o.owned_by, o.created),
        };
        if id.trim().is_empty() {
            c.err(
                &[k("models"), Segment::Index(i)],
                "a model id must not be empty",
            );
            continue;
        }
        out.push(ModelEntry {
            id,
            owned_by: owned_by.unwrap_or_else(|| "sophgate".into()),
            created: created.unwrap_or(0),
        });
    }
    Some(out)
}

/// 0 turns the cache off.
pub(super) fn models_cache_ttl(c: &mut Collector, raw: Option<f64>) -> Duration {
    match raw {
        Some(0.0) => Duration::ZERO,
        other => c.seconds(&[k("models_cache_ttl")], other, 300.0),
    }
}
