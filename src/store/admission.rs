//! Admission of one request under its key's shared limits, in one round trip: a Lua script
//! checks the key's budget and tpm, takes a `max_concurrent` lease and an rpm slot atomically,
//! against Redis's clock (so replicas' clocks do not matter).
//!
//! rpm and tpm are GCRA (a token bucket kept as its "theoretical arrival time", counted in
//! whole microseconds and stored as milliseconds with three decimals): a key may use its whole minute at once and then earns it back continuously,
//! exactly as the in-process buckets do. tpm is charged after the answer with its real usage
//! ([`SharedLimits::charge_tokens`], through the store's writer), so the balance may go
//! negative.
//!
//! Leases are members of a sorted set scored by their expiry (ms). Expired members (a dead
//! replica's) are swept only when the set looks full, so the common admission is a `ZCARD`.
//! Releases and renewals go through the store's one writer ([`super::writer`]), which sends
//! them batched, off the request path.
//!
//! The script costs Redis little: numbers go to `redis.call` as integers formatted with `%d`
//! (Lua's float formatting was the largest part of its cost), the stored milliseconds too
//! (`%d.%03d` of the microseconds), and it answers one integer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;

use super::writer::Write;
use super::{Store, StoreError};

/// KEYS: rpm, tpm, leases, budget. ARGV: rpm interval µs (`0`: none), `1` if tpm is limited,
/// max_concurrent (`0`: none), lease ttl ms, lease member, budget field (`""`: none), budget
/// limit.
/// A lease set gets its expiry from the renewal (a set whose leases all ended is empty, and
/// Redis deletes it), so admission does not set it.
/// Answers 0 (admitted) or `wait_ms * 8 + limit`: 1 = rpm, 2 = tpm, 3 = max_concurrent,
/// 4 = budget (its wait is the caller's: the period's end).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
if ARGV[6] ~= '' then
  local used = redis.call('HGET', KEYS[4], ARGV[6])
  if used and tonumber(used) >= tonumber(ARGV[7]) then return 4 end
end
if ARGV[2] ~= '0' then
  local tat = redis.call('GET', KEYS[2])
  if tat then
    local ahead = tonumber(tat) * 1000 - now - 60000000
    if ahead >= 0 then return (math.ceil(ahead / 1000) + 1) * 8 + 2 end
  end
end
local maxc = tonumber(ARGV[3])
if maxc > 0 and redis.call('ZCARD', KEYS[3]) >= maxc then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%d', now / 1000))
  if redis.call('ZCARD', KEYS[3]) >= maxc then return 1000 * 8 + 3 end
end
if ARGV[1] ~= '0' then
  local tat = tonumber(redis.call('GET', KEYS[1]) or 0) * 1000
  if tat < now then tat = now end
  local next_tat = math.ceil(tat + tonumber(ARGV[1]))
  local ahead = next_tat - now
  if ahead > 60000000 then return math.ceil((ahead - 60000000) / 1000) * 8 + 1 end
  redis.call('SET', KEYS[1], string.format('%d.%03d', next_tat / 1000, next_tat % 1000), 'PX', string.format('%d', ahead / 1000 + 1000))
end
if maxc > 0 then
  redis.call('ZADD', KEYS[3], string.format('%d', now / 1000 + tonumber(ARGV[4])), ARGV[5])
end
return 0
";

/// KEYS: tpm of each key charged. ARGV[2i - 1], ARGV[2i]: tokens and tpm of KEYS[i].
const CHARGE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
for i, k in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', k) or 0) * 1000
  if tat < now then tat = now end
  tat = math.ceil(tat + tonumber(ARGV[2 * i - 1]) * 60000000 / tonumber(ARGV[2 * i]))
  redis.call('SET', k, string.format('%d.%03d', tat / 1000, tat % 1000), 'PX', string.format('%d', (tat - now) / 1000 + 1000))
end
return #KEYS
";

/// KEYS: lease sets. ARGV[1]: ttl ms; ARGV[i + 1]: the lease in KEYS[i].
const RENEW: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[1])
local score = string.format('%d', now + ttl)
local expire = string.format('%d', ttl * 2)
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, score, ARGV[i + 1])
  redis.call('PEXPIRE', k, expire)
end
return #KEYS
";

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Rpm,
    Tpm,
    Concurrency,
    /// The key's budget for the period (checked only when asked, see [`BudgetCheck`]).
    Budget,
}

#[derive(Debug)]
pub enum Verdict {
    /// Admitted; holds the lease when the key has `max_concurrent`.
    Admitted(Option<Lease>),
    /// Refused; `wait` is Redis's for rpm, tpm and max_concurrent, zero for a budget (its
    /// caller knows the period's end).
    Limited { limit: Limit, wait: Duration },
}

/// A budget to check in the same script, before anything is taken: the key's counter hash
/// for the current period (see [`Store::budget_key`]), the field counted (`tokens` or
/// `cost`) and the limit.
#[derive(Debug, Clone, Copy)]
pub struct BudgetCheck<'a> {
    pub hash: &'a str,
    pub field: &'static str,
    pub limit: f64,
}

/// One key's shared limits, with its script arguments and Redis key names built once per
/// generation.
#[derive(Debug)]
pub struct SharedLimits {
    store: Arc<Store>,
    tpm: u64,
    max_concurrent: u32,
    /// ARGV[1]: 60 s / rpm in µs, `0` without rpm.
    rpm_interval: String,
    /// ARGV[3].
    max_concurrent_arg: String,
    rpm_key: String,
    tpm_key: Arc<str>,
    lease_key: Arc<str>,
}

static ADMIT_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(ADMIT));
pub(super) static CHARGE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(CHARGE));
static RENEW_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(RENEW));

impl SharedLimits {
    /// `label` is the key's printable name (never the key): Redis key names hold no secret.
    pub fn new(
        store: &Arc<Store>,
        label: &str,
        rpm: Option<u32>,
        tpm: Option<u64>,
        max_concurrent: Option<u32>,
    ) -> SharedLimits {
        let rpm = rpm.unwrap_or(0);
        let max_concurrent = max_concurrent.unwrap_or(0);
        SharedLimits {
            store: store.clone(),
            tpm: tpm.unwrap_or(0),
            max_concurrent,
            rpm_interval: if rpm == 0 {
                "0".into()
            } else {
                (60_000_000.0 / f64::from(rpm)).to_string()
            },
            max_concurrent_arg: max_concurrent.to_string(),
            rpm_key: store.key("rpm", label),
            tpm_key: store.key("tpm", label).into(),
            lease_key: store.key("leases", label).into(),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether the key has any rpm, tpm or max_concurrent to keep in the store.
    fn limits_anything(&self) -> bool {
        self.rpm_interval != "0" || self.tpm > 0 || self.max_concurrent > 0
    }

    /// One round trip: the budget (when given), tpm room, a lease, an rpm slot, or which
    /// limit refused and for how long. Nothing to check: no round trip.
    pub async fn admit(&self, budget: Option<BudgetCheck<'_>>) -> Result<Verdict, StoreError> {
        if budget.is_none() && !self.limits_anything() {
            return Ok(Verdict::Admitted(None));
        }
        let store = &self.store;
        let lease_id = (self.max_concurrent > 0).then(|| store.leases.next_id());
        let member = lease_id
            .map(|id| store.leases.member(id))
            .unwrap_or_default();
        let (field, limit) = budget.map_or(("", 0.0), |b| (b.field, b.limit));
        let budget_hash = budget.map_or("", |b| b.hash);
        let member_arg = &member;
        let answer: u64 = store
            .call("admit", |mut conn| async move {
                ADMIT_SCRIPT
                    .key(&self.rpm_key)
                    .key(&*self.tpm_key)
                    .key(&*self.lease_key)
                    .key(budget_hash)
                    .arg(&self.rpm_interval)
                    .arg(if self.tpm > 0 { "1" } else { "0" })
                    .arg(&self.max_concurrent_arg)
                    .arg(&store.lease_ttl_arg)
                    .arg(member_arg)
                    .arg(field)
                    .arg(limit)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let limit = match answer % 8 {
            0 if answer == 0 => {
                let lease = lease_id.map(|id| {
                    store.leases.insert(id, self.lease_key.clone(), member);
                    Lease {
                        store: store.clone(),
                        id,
                    }
                });
                return Ok(Verdict::Admitted(lease));
            }
            1 => Limit::Rpm,
            2 => Limit::Tpm,
            3 => Limit::Concurrency,
            4 => Limit::Budget,
            _ => return Err(StoreError::Protocol),
        };
        Ok(Verdict::Limited {
            limit,
            wait: match limit {
                Limit::Budget => Duration::ZERO,
                _ => Duration::from_millis((answer / 8).max(1)),
            },
        })
    }

    /// Charges real usage against the shared tpm, through the store's writer (off the request
    /// path; charges of one key in one batch go as one).
    pub fn charge_tokens(self: &Arc<Self>, tokens: u64) {
        if self.tpm == 0 || tokens == 0 {
            return;
        }
        self.store.queue(Write::Tokens {
            key: self.tpm_key.clone(),
            tpm: self.tpm,
            tokens,
        });
    }
}

/// A `max_concurrent` slot held in the store; released when dropped (with the response),
/// through the store's writer.
pub struct Lease {
    store: Arc<Store>,
    id: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.id)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((set, member)) = self.store.leases.remove(self.id) {
            self.store.queue(Write::Release { set, member });
        }
    }
}

/// This process's live leases: id → (lease set, member).
#[derive(Default)]
pub(super) struct LeaseBook {
    /// Tells this process's leases from other replicas' in the shared sets.
    replica: std::sync::OnceLock<String>,
    next: AtomicU64,
    live: Mutex<HashMap<u64, (Arc<str>, String)>>,
}

impl LeaseBook {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn member(&self, id: u64) -> String {
        let replica = self.replica.get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            format!("{}-{nanos:x}", std::process::id())
        });
        format!("{replica}-{id:x}")
    }

    fn insert(&self, id: u64, set: Arc<str>, member: String) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, (set, member));
        }
    }

    fn remove(&self, id: u64) -> Option<(Arc<str>, String)> {
        self.live.lock().ok()?.remove(&id)
    }

    pub(super) fn len(&self) -> usize {
        self.live.lock().map_or(0, |live| live.len())
    }

    fn snapshot(&self) -> Vec<(Arc<str>, String)> {
        self.live
            .lock()
            .map(|live| live.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Renews every live lease of this process in one call. Run by the writer, so a lease
/// released after this snapshot has its release sent after the renewal, never before.
pub(super) async fn renew(store: &Store) {
    let live = store.leases.snapshot();
    if live.is_empty() {
        return;
    }
    let _ = store
        .call("renew leases", |mut conn| async move {
            let mut inv = RENEW_SCRIPT.prepare_invoke();
            inv.arg(&store.lease_ttl_arg);
            for (set, member) in &live {
                inv.key(&**set).arg(member);
            }
            inv.invoke_async::<i64>(&mut conn).await
        })
        .await;
}
