//! Usage counters per key and model, and budget counters per key and period, kept in the store
//! so every replica adds to (and reads) the same numbers and they survive restarts.
//!
//! Layout: a hash per key label, `usage:<label>`, with fields `<counter>:<model>`
//! (`requests`, `input`, `output`, `errors`, `rate_limited`, `cost`); the set `usage-keys`
//! lists the labels; `usage-since` holds the Unix second of the first write; a hash per key
//! and period, `budget:<label>:<period id>` (`tokens`, `cost`, and the same `<counter>:<model>`
//! fields for the period), expiring after [`BUDGET_KEEP`]. Labels are key names, never keys.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, ScriptInvocation};

use super::{Store, StoreError};

/// How long a period's budget counters are kept (longer than a month).
pub const BUDGET_KEEP: Duration = Duration::from_secs(40 * 24 * 3600);

/// How long Redis remembers the last batch of usage a replica's writer had applied (renewed
/// by each batch): a batch resent within it is applied once.
pub const APPLIED_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Applies batches of usage, each at most once: KEYS[1] holds the last sequence number of the
/// writing replica's batches that was applied, KEYS[2] `usage-since`, KEYS[3] `usage-keys`,
/// then for each use its `usage:<label>` hash and, when it counts in a period, that period's
/// budget hash. ARGV[1]: now (Unix s), ARGV[2]: the budget hashes' TTL (s), ARGV[3]: KEYS[1]'s
/// TTL (ms); then per batch its sequence number (0: not sequenced, always applied) and number
/// of uses, each use as ten arguments: label, model, period flag, cost (empty: none),
/// tokens (input + output), then requests, input, output, errors, rate_limited. Answers how
/// many batches it applied. A batch at or below the number in KEYS[1] was applied before (the
/// writer resends one whose answer it never got) and is skipped whole.
const USAGE: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local top = last
local names = {'requests', 'input', 'output', 'errors', 'rate_limited'}
local k, a, applied = 4, 4, 0
while a <= #ARGV do
  local seq, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local skip = seq ~= 0 and seq <= last
  for _ = 1, n do
    local label, model, cost, tokens = ARGV[a], ARGV[a + 1], ARGV[a + 3], ARGV[a + 4]
    local hash, period = KEYS[k], nil
    k = k + 1
    if ARGV[a + 2] == '1' then
      period = KEYS[k]
      k = k + 1
    end
    if not skip then
      redis.call('SADD', KEYS[3], label)
      for j = 1, 5 do
        local v = ARGV[a + 4 + j]
        if v ~= '0' then
          local field = names[j] .. ':' .. model
          redis.call('HINCRBY', hash, field, v)
          if period then
            redis.call('HINCRBY', period, field, v)
          end
        end
      end
      if cost ~= '' then
        redis.call('HINCRBYFLOAT', hash, 'cost:' .. model, cost)
      end
      if period then
        redis.call('HINCRBY', period, 'tokens', tokens)
        if cost ~= '' then
          redis.call('HINCRBYFLOAT', period, 'cost', cost)
        end
        redis.call('EXPIRE', period, ARGV[2])
      end
    end
    a = a + 10
  end
  if not skip then
    applied = applied + 1
    if seq > top then
      top = seq
    end
  end
end
if applied > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'NX')
end
if top > last then
  redis.call('SET', KEYS[1], string.format('%d', top), 'PX', ARGV[3])
end
return applied
";

static USAGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(USAGE));

/// A batch of usage as the writer sends it: its sequence number (0: not sequenced) and uses.
pub(super) struct UsageBatch<'a> {
    pub seq: u64,
    pub uses: &'a [UsageWrite],
}

/// One key's use of one model, fleet-wide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRow {
    pub key: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub cost: f64,
}

/// One request's use as written to the store: its key's counters for one model and, when the
/// key has a budget, its period's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageWrite {
    pub key: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub cost: f64,
    /// The budget period the use also counts in (e.g. `day-1796169600`), if any.
    pub period_id: Option<String>,
}

impl UsageWrite {
    /// Whether `other` counts under the same key, model and period (and so adds to this).
    pub fn same_counters(&self, other: &UsageWrite) -> bool {
        self.key == other.key && self.model == other.model && self.period_id == other.period_id
    }

    /// Adds `other`'s counts to this one's.
    pub fn add(&mut self, other: &UsageWrite) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.errors += other.errors;
        self.rate_limited += other.rate_limited;
        self.cost += other.cost;
    }

    fn counters(&self) -> [(&'static str, u64); 5] {
        [
            ("requests", self.requests),
            ("input", self.input_tokens),
            ("output", self.output_tokens),
            ("errors", self.errors),
            ("rate_limited", self.rate_limited),
        ]
    }
}

/// A key's use within one period, fleet-wide, with its per-model counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeriodUsage {
    pub tokens: u64,
    pub cost: f64,
    pub models: Vec<UsageRow>,
}

/// A key's use within one budget period, fleet-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetUsed {
    pub tokens: u64,
    pub cost: f64,
}

impl Store {
    /// Adds one answer's use to the key's usage counters.
    pub async fn add_usage(
        &self,
        key_label: &str,
        model: &str,
        requests: u64,
        input_tokens: u64,
        output_tokens: u64,
        cost: f64,
    ) -> Result<(), StoreError> {
        self.write_usage(&[UsageWrite {
            key: key_label.to_owned(),
            model: model.to_owned(),
            requests,
            input_tokens,
            output_tokens,
            cost,
            ..UsageWrite::default()
        }])
        .await
    }

    /// Writes a batch of uses in one round trip (one script call, atomic).
    pub async fn write_usage(&self, batch: &[UsageWrite]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.apply_usage(&[UsageBatch {
            seq: 0,
            uses: batch,
        }])
        .await
        .map(|_| ())
    }

    /// Applies `batches` in one script call, in their order, skipping those of this replica's
    /// sequence Redis applied before; how many it applied.
    pub(super) async fn apply_usage(&self, batches: &[UsageBatch<'_>]) -> Result<u64, StoreError> {
        let inv = self.usage_invocation(batches);
        let inv = &inv;
        self.call_within(
            super::Call::WriteUsage,
            self.write_within(),
            |mut conn| async move { inv.invoke_async(&mut conn).await },
        )
        .await
    }

    fn usage_invocation(&self, batches: &[UsageBatch<'_>]) -> ScriptInvocation<'static> {
        let mut inv = USAGE_SCRIPT.prepare_invoke();
        inv.key(self.key("usage-applied", self.leases.replica()))
            .key(self.key("usage-since", ""))
            .key(self.key("usage-keys", ""))
            .arg(super::now_ms() / 1000)
            .arg(BUDGET_KEEP.as_secs())
            .arg(u64::try_from(APPLIED_KEEP.as_millis()).unwrap_or(u64::MAX));
        for batch in batches {
            inv.arg(batch.seq).arg(batch.uses.len());
            for w in batch.uses {
                inv.key(self.key("usage", &w.key));
                let period = w.period_id.as_ref();
                if let Some(id) = period {
                    inv.key(self.budget_key(&w.key, id));
                }
                inv.arg(&w.key)
                    .arg(&w.model)
                    .arg(if period.is_some() { "1" } else { "0" });
                // A cost Redis cannot add (not finite) would fail the whole call.
                if w.cost != 0.0 && w.cost.is_finite() {
                    inv.arg(w.cost);
                } else {
                    inv.arg("");
                }
                inv.arg(w.input_tokens + w.output_tokens);
                for (_, v) in w.counters() {
                    inv.arg(v);
                }
            }
        }
        inv
    }

    /// The hash of a key's counters in one budget period.
    pub fn budget_key(&self, key_label: &str, period_id: &str) -> String {
        let mut k = self.key("budget", key_label);
        k.push(':');
        k.push_str(period_id);
        k
    }

    /// When the fleet's usage counters started (Unix seconds), if anything was written.
    pub async fn usage_since(&self) -> Result<Option<u64>, StoreError> {
        let key = self.key("usage-since", "");
        self.call(super::Call::ReadUsageStart, |mut conn| async move {
            redis::cmd("GET").arg(&key).query_async(&mut conn).await
        })
        .await
    }

    /// Every key's use of every model, fleet-wide, sorted by key then model.
    pub async fn usage_snapshot(&self) -> Result<Vec<UsageRow>, StoreError> {
        let index = self.key("usage-keys", "");
        let labels: Vec<String> = self
            .call(super::Call::ReadUsageKeys, |mut conn| async move {
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
            .call(super::Call::ReadUsage, |mut conn| async move {
                let mut pipe = redis::pipe();
                for h in &hashes {
                    pipe.cmd("HGETALL").arg(h);
                }
                pipe.query_async(&mut conn).await
            })
            .await?;
        let mut rows = Vec::new();
        for (label, fields) in labels.iter().zip(maps) {
            rows.extend(model_rows(label, fields));
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
        let hash = self.budget_key(key_label, period_id);
        let keep = BUDGET_KEEP.as_secs();
        self.call(super::Call::AddBudget, |mut conn| async move {
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

    /// A key's use within one period with its per-model counters, fleet-wide, in one command.
    pub async fn period_usage(
        &self,
        key_label: &str,
        period_id: &str,
    ) -> Result<PeriodUsage, StoreError> {
        let hash = self.budget_key(key_label, period_id);
        let fields: BTreeMap<String, String> = self
            .call(super::Call::ReadPeriodUsage, |mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(&hash)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(PeriodUsage {
            tokens: fields
                .get("tokens")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            cost: fields
                .get("cost")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
            models: model_rows(key_label, fields).collect(),
        })
    }

    /// A key's use within one period, fleet-wide (zero when nothing was charged).
    pub async fn budget_used(
        &self,
        key_label: &str,
        period_id: &str,
    ) -> Result<BudgetUsed, StoreError> {
        let hash = self.budget_key(key_label, period_id);
        let (tokens, cost): (Option<u64>, Option<f64>) = self
            .call(super::Call::ReadBudget, |mut conn| async move {
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

/// A key's `<counter>:<model>` fields as rows, one per model (other fields are skipped).
fn model_rows(label: &str, fields: BTreeMap<String, String>) -> impl Iterator<Item = UsageRow> {
    let mut by_model: BTreeMap<String, UsageRow> = BTreeMap::new();
    for (field, value) in fields {
        let Some((counter, model)) = field.split_once(':') else {
            continue;
        };
        let row = by_model
            .entry(model.to_owned())
            .or_insert_with(|| UsageRow {
                key: label.to_owned(),
                model: model.to_owned(),
                ..UsageRow::default()
            });
        let count = || value.parse::<u64>().unwrap_or(0);
        match counter {
            "requests" => row.requests = count(),
            "input" => row.input_tokens = count(),
            "output" => row.output_tokens = count(),
            "errors" => row.errors = count(),
            "rate_limited" => row.rate_limited = count(),
            "cost" => row.cost = value.parse::<f64>().unwrap_or(0.0),
            _ => {}
        }
    }
    by_model.into_values()
}
