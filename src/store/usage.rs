//! Usage counters per key and model, and budget counters per key and period, kept in the store
//! so every replica adds to (and reads) the same numbers and they survive restarts.
//!
//! Layout: a hash per key label, `usage:<label>`, with fields `<counter>:<model>`
//! (`requests`, `input`, `output`, `cost`); the set `usage-keys` lists the labels; a hash per
//! key and period, `budget:<label>:<period id>` (`tokens`, `cost`), expiring after
//! [`BUDGET_KEEP`]. Labels are key names, never keys.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Store, StoreError};

/// How long a period's budget counters are kept (longer than a month).
pub const BUDGET_KEEP: Duration = Duration::from_secs(40 * 24 * 3600);

/// One key's use of one model, fleet-wide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRow {
    pub key: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
}

/// A key's use within one budget period, fleet-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetUsed {
    pub tokens: u64,
    pub cost: f64,
}

impl Store {
    /// Adds one answer's use to the key's usage counters, in one pipelined, atomic call.
    pub async fn add_usage(
        &self,
        key_label: &str,
        model: &str,
        requests: u64,
        input_tokens: u64,
        output_tokens: u64,
        cost: f64,
    ) -> Result<(), StoreError> {
        let hash = self.key("usage", key_label);
        let index = self.key("usage-keys", "");
        self.call("add usage", |mut conn| async move {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .sadd(&index, key_label)
                .ignore()
                .hincr(&hash, format!("requests:{model}"), requests)
                .ignore()
                .hincr(&hash, format!("input:{model}"), input_tokens)
                .ignore()
                .hincr(&hash, format!("output:{model}"), output_tokens)
                .ignore();
            if cost != 0.0 {
                pipe.cmd("HINCRBYFLOAT")
                    .arg(&hash)
                    .arg(format!("cost:{model}"))
                    .arg(cost)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    /// Every key's use of every model, fleet-wide, sorted by key then model.
    pub async fn usage_snapshot(&self) -> Result<Vec<UsageRow>, StoreError> {
        let index = self.key("usage-keys", "");
        let labels: Vec<String> = self
            .call("read usage keys", |mut conn| async move {
                redis::cmd("SMEMBERS")
                    .arg(&index)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if labels.is_empty() {
            return Ok(Vec::new());
        }
        let hashes: Vec<String> = labels.iter().map(|l| self.key("usage", l)).collect();
        let maps: Vec<BTreeMap<String, String>> = self
            .call("read usage", |mut conn| async move {
                let mut pipe = redis::pipe();
                for h in &hashes {
                    pipe.cmd("HGETALL").arg(h);
                }
                pipe.query_async(&mut conn).await
            })
            .await?;
        let mut rows = Vec::new();
        for (label, fields) in labels.iter().zip(maps) {
            let mut by_model: BTreeMap<String, UsageRow> = BTreeMap::new();
            for (field, value) in fields {
                let Some((counter, model)) = field.split_once(':') else {
                    continue;
                };
                let row = by_model
                    .entry(model.to_owned())
                    .or_insert_with(|| UsageRow {
                        key: label.clone(),
                        model: model.to_owned(),
                        ..UsageRow::default()
                    });
                let count = || value.parse::<u64>().unwrap_or(0);
                match counter {
                    "requests" => row.requests = count(),
                    "input" => row.input_tokens = count(),
                    "output" => row.output_tokens = count(),
                    "cost" => row.cost = value.parse::<f64>().unwrap_or(0.0),
                    _ => {}
                }
            }
            rows.extend(by_model.into_values());
        }
        rows.sort_by(|a, b| (&a.key, &a.model).cmp(&(&b.key, &b.model)));
        Ok(rows)
    }

    /// Adds to a key's budget counters for one period (`period_id` names it, e.g. `2026-12`).
    pub async fn add_budget(
        &self,
        key_label: &str,
        period_id: &str,
        tokens: u64,
        cost: f64,
    ) -> Result<(), StoreError> {
        let hash = self.key("budget", &format!("{key_label}:{period_id}"));
        let keep = BUDGET_KEEP.as_secs();
        self.call("add budget", |mut conn| async move {
            let mut pipe = redis::pipe();
            pipe.atomic().hincr(&hash, "tokens", tokens).ignore();
            if cost != 0.0 {
                pipe.cmd("HINCRBYFLOAT")
                    .arg(&hash)
                    .arg("cost")
                    .arg(cost)
                    .ignore();
            }
            pipe.cmd("EXPIRE").arg(&hash).arg(keep).ignore();
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    /// A key's use within one period, fleet-wide (zero when nothing was charged).
    pub async fn budget_used(
        &self,
        key_label: &str,
        period_id: &str,
    ) -> Result<BudgetUsed, StoreError> {
        let hash = self.key("budget", &format!("{key_label}:{period_id}"));
        let (tokens, cost): (Option<u64>, Option<f64>) = self
            .call("read budget", |mut conn| async move {
                redis::cmd("HMGET")
                    .arg(&hash)
                    .arg("tokens")
                    .arg("cost")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(BudgetUsed {
            tokens: tokens.unwrap_or(0),
            cost: cost.unwrap_or(0.0),
        })
    }
}
