//! The JSON of `GET /admin/usage`: every key's counters per model since the process started,
//! or (`?period=current`) each budgeted key's use in its current period against its budget.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::backend::{backend, Counts, Unavailable};
use super::budget::{Budget, Limit};
use super::period::rfc3339;
use crate::config::Config;
use crate::error::{ErrorKind, GatewayError};

/// What `?period=` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    SinceStart,
    CurrentPeriod,
}

fn view(query: Option<&str>) -> Result<View, GatewayError> {
    let mut view = View::SinceStart;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (name, value) {
            ("period", "current") => view = View::CurrentPeriod,
            ("period", _) => {
                return Err(GatewayError::bad_request(
                    "invalid_period",
                    "period must be `current` (or omitted for the counts since start)",
                ))
            }
            _ => {
                return Err(GatewayError::bad_request(
                    "invalid_parameter",
                    "the only query parameter is `period`",
                ))
            }
        }
    }
    Ok(view)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn unavailable(e: Unavailable) -> GatewayError {
    tracing::warn!(error = %e.0, "usage store unavailable");
    GatewayError::new(
        ErrorKind::Unavailable,
        "usage_unavailable",
        "The usage store is unavailable; try again",
    )
}

fn models_json(models: &BTreeMap<String, Counts>) -> (Value, Counts) {
    let mut total = Counts::default();
    let mut out = Map::new();
    for (model, c) in models {
        total.add_counts(c);
        out.insert(model.clone(), json!(c));
    }
    (Value::Object(out), total)
}

/// The body of `GET /admin/usage[?period=current]`.
pub async fn usage(config: &Config, query: Option<&str>) -> Result<Value, GatewayError> {
    match view(query)? {
        View::SinceStart => since_start().await,
        View::CurrentPeriod => current_period(config, SystemTime::now()).await,
    }
}

async fn since_start() -> Result<Value, GatewayError> {
    let totals = backend().totals().await.map_err(unavailable)?;
    let mut keys = Map::new();
    for (key, models) in &totals.keys {
        let (models, total) = models_json(models);
        keys.insert(key.clone(), json!({ "models": models, "total": total }));
    }
    Ok(json!({
        "since": totals.since.map(|t| rfc3339(unix(t))),
        "keys": keys,
    }))
}

fn limit_json(b: &Budget, v: f64) -> Value {
    match b.limit {
        Limit::Tokens(_) => json!(v as u64),
        Limit::Cost(_) => json!(v),
    }
}

async fn current_period(config: &Config, now: SystemTime) -> Result<Value, GatewayError> {
    let store = backend();
    let mut keys = Map::new();
    for k in &config.keys {
        let Some(budget) = k.budget else { continue };
        let used = store
            .period_use(&k.label, budget.period, now)
            .await
            .map_err(unavailable)?;
        let (start, end) = budget.period.bounds(unix(now));
        let (models, _) = models_json(&used.models);
        keys.insert(
            k.label.clone(),
            json!({
                "period": budget.period.name(),
                "start": rfc3339(start),
                "end": rfc3339(end),
                "unit": budget.unit(),
                "limit": limit_json(&budget, budget.limit_value()),
                "used_tokens": used.tokens,
                "used_cost": used.cost,
                "remaining": limit_json(&budget, budget.remaining(&used)),
                "exhausted": budget.exhausted(&used),
                "models": models,
            }),
        );
    }
    Ok(json!({ "now": rfc3339(unix(now)), "keys": keys }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_chooses_the_view() {
        assert_eq!(view(None).unwrap(), View::SinceStart);
        assert_eq!(view(Some("")).unwrap(), View::SinceStart);
        assert_eq!(view(Some("period=current")).unwrap(), View::CurrentPeriod);
        assert_eq!(
            view(Some("period=last")).unwrap_err().code,
            "invalid_period"
        );
        assert_eq!(
            view(Some("key=alice")).unwrap_err().code,
            "invalid_parameter"
        );
    }
}
