//! Admission of one request under its key's shared limits, in one round trip: a Lua script
//! checks tpm, takes a `max_concurrent` lease and an rpm slot atomically, against Redis's
//! clock (so replicas' clocks do not matter).
//!
//! rpm and tpm are GCRA (a token bucket kept as its "theoretical arrival time"): a key
//! may use its whole minute at once and then earns it back continuously, exactly as the
//! in-process buckets do. tpm is charged after the answer with its real usage
//! ([`SharedLimits::charge_tokens`], off the request path), so the balance may go negative.
//!
//! Leases are members of a sorted set scored by their expiry. One task per process renews all
//! of its live leases in one call every third of the TTL; a replica that dies stops renewing,
//! and its slots free themselves within the TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;

use super::{spawn_detached, Store, StoreError};

/// KEYS: rpm, tpm, leases. ARGV: rpm, tpm, max_concurrent (0 = none), lease ttl ms, lease id.
/// Answers {0, 0} (admitted) or {limit, wait ms}: 1 = rpm, 2 = tpm, 3 = max_concurrent.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local rpm, tpm, maxc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat - now >= window then return {2, math.ceil(tat - now - window) + 1} end
end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= maxc then return {3, 1000} end
end
if rpm > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local next_tat = tat + window / rpm
  if next_tat - now > window then return {1, math.ceil(next_tat - now - window)} end
  redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
end
if maxc > 0 then
  local ttl = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
end
return {0, 0}
";

/// KEYS: tpm. ARGV: tokens, tpm.
const CHARGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
tat = tat + tonumber(ARGV[1]) * 60000 / tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
return 1
";

/// KEYS: lease sets. ARGV[1]: ttl ms; ARGV[i + 1]: the lease in KEYS[i].
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', k, ttl * 2)
end
return #KEYS
";

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Rpm,
    Tpm,
    Concurrency,
}

#[derive(Debug)]
pub enum Verdict {
    /// Admitted; holds the lease when the key has `max_concurrent`.
    Admitted(Option<Lease>),
    Limited {
        limit: Limit,
        wait: Duration,
    },
}

/// One key's shared limits and the names of its Redis keys (built once per generation).
#[derive(Debug)]
pub struct SharedLimits {
    store: Arc<Store>,
    rpm: u32,
    tpm: u64,
    max_concurrent: u32,
    rpm_key: String,
    tpm_key: String,
    lease_key: String,
}

static ADMIT_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(ADMIT));
static CHARGE_SCRIPT: std::sync::LazyLock<Script> =
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
        SharedLimits {
            store: store.clone(),
            rpm: rpm.unwrap_or(0),
            tpm: tpm.unwrap_or(0),
            max_concurrent: max_concurrent.unwrap_or(0),
            rpm_key: store.key("rpm", label),
            tpm_key: store.key("tpm", label),
            lease_key: store.key("leases", label),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// One round trip: tpm room, a lease, an rpm slot, or which limit refused and for how long.
    pub async fn admit(&self) -> Result<Verdict, StoreError> {
        let store = &self.store;
        let lease_id = (self.max_concurrent > 0).then(|| store.leases.next_id());
        let member = lease_id
            .map(|id| store.leases.member(id))
            .unwrap_or_default();
        let ttl_ms = u64::try_from(store.config.lease_ttl.as_millis()).unwrap_or(30_000);
        let member_arg = &member;
        let answer: (u8, u64) = store
            .call("admit", |mut conn| async move {
                ADMIT_SCRIPT
                    .key(&self.rpm_key)
                    .key(&self.tpm_key)
                    .key(&self.lease_key)
                    .arg(self.rpm)
                    .arg(self.tpm)
                    .arg(self.max_concurrent)
                    .arg(ttl_ms)
                    .arg(member_arg)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let limit = match answer.0 {
            0 => {
                let lease = lease_id.map(|id| {
                    store
                        .leases
                        .insert(id, self.lease_key.clone(), member.clone());
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
            _ => return Err(StoreError::Protocol),
        };
        Ok(Verdict::Limited {
            limit,
            wait: Duration::from_millis(answer.1.max(1)),
        })
    }

    /// Charges real usage against the shared tpm, off the request path.
    pub fn charge_tokens(self: &Arc<Self>, tokens: u64) {
        if self.tpm == 0 || tokens == 0 {
            return;
        }
        let me = self.clone();
        spawn_detached(async move {
            let _ = me
                .store
                .call("charge tokens", |mut conn| {
                    let me = &me;
                    async move {
                        CHARGE_SCRIPT
                            .key(&me.tpm_key)
                            .arg(tokens)
                            .arg(me.tpm)
                            .invoke_async::<i64>(&mut conn)
                            .await
                    }
                })
                .await;
        });
    }
}

/// A `max_concurrent` slot held in the store; released when dropped (with the response).
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
        let Some((key, member)) = self.store.leases.remove(self.id) else {
            return;
        };
        let store = self.store.clone();
        spawn_detached(async move {
            let _ = store
                .call("release lease", |mut conn| async move {
                    let (key, member) = (&key, &member);
                    redis::cmd("ZREM")
                        .arg(key)
                        .arg(member)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await;
        });
    }
}

/// This process's live leases: id → (lease set, member).
#[derive(Default)]
pub(super) struct LeaseBook {
    /// Tells this process's leases from other replicas' in the shared sets.
    replica: std::sync::OnceLock<String>,
    next: AtomicU64,
    live: Mutex<HashMap<u64, (String, String)>>,
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
        format!("{replica}-{id}")
    }

    fn insert(&self, id: u64, key: String, member: String) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, (key, member));
        }
    }

    fn remove(&self, id: u64) -> Option<(String, String)> {
        self.live.lock().ok()?.remove(&id)
    }

    pub(super) fn len(&self) -> usize {
        self.live.lock().map_or(0, |live| live.len())
    }

    fn snapshot(&self) -> Vec<(String, String)> {
        self.live
            .lock()
            .map(|live| live.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// The one task that renews this process's leases, every third of the TTL, in one call.
pub(super) fn spawn_renewal(store: &Arc<Store>) {
    let weak = Arc::downgrade(store);
    let every = store.config.lease_ttl / 3;
    spawn_detached(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else {
                return;
            };
            let live = store.leases.snapshot();
            if live.is_empty() {
                continue;
            }
            let ttl_ms = u64::try_from(store.config.lease_ttl.as_millis()).unwrap_or(30_000);
            let _ = store
                .call("renew leases", |mut conn| async move {
                    let mut inv = RENEW_SCRIPT.prepare_invoke();
                    inv.arg(ttl_ms);
                    for (key, member) in &live {
                        inv.key(key).arg(member);
                    }
                    inv.invoke_async::<i64>(&mut conn).await
                })
                .await;
        }
    });
}
