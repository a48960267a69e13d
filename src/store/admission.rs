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
//! A released lease waits in its key's [`Releases`]: the key's next admission removes it in
//! its own script call (first thing, so the slot is free for that very admission), and what no
//! admission took within the writer's [`LINGER`](super::writer::LINGER) the store's writer
//! ([`super::writer`]) sends. So a busy key's releases cost no call of their own, and an idle
//! key's slot is free again within that linger plus a round trip. A call whose answer never
//! came (out of time, failed, or its request gone) puts the lease it may have added there too
//! (`InFlight`): Redis may run it late, and that lease must not hold a slot until the TTL.
//! Renewals go through the writer too; they only update members still in the set (`ZADD XX`),
//! so a renewal that reaches Redis after a release sent by an admission cannot bring the
//! released lease back.
//!
//! The script is specialised to the key's limits ([`super::admit_script`]): Redis runs only
//! the checks the key has, with its constants in the text, and gets only the Redis keys and
//! arguments that change per call. Numbers go to `redis.call` as integers formatted with `%d`
//! (the stored milliseconds as `%d.%03d` of the microseconds), and it answers one integer:
//! 0 (admitted) or `wait_ms * 8 + limit`, 1 = rpm, 2 = tpm, 3 = max_concurrent, 4 = budget
//! (its wait is the caller's: the period's end).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::Script;

use super::admit_queue::{AdmitQueue, Entry};
use super::admit_script::{self, Shape};
use super::writer::Write;
use super::{Store, StoreError};

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

/// KEYS: lease sets. ARGV[1]: ttl ms; ARGV[i + 1]: the lease in KEYS[i]. `XX`: a lease that
/// is no longer in its set (released by an admission this renewal overtook, or lost by Redis)
/// is not added back.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[1])
local score = string.format('%d', now + ttl)
local expire = string.format('%d', ttl * 2)
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, 'XX', score, ARGV[i + 1])
  redis.call('PEXPIRE', k, expire)
end
return #KEYS
";

/// Released leases one admission removes at most (the rest wait for the next one, or the
/// writer).
pub(super) const RELEASES_PER_ADMISSION: usize = 64;

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

/// One key's shared limits, with its admission script and Redis key names built once per
/// generation.
#[derive(Debug)]
pub struct SharedLimits {
    store: Arc<Store>,
    tpm: u64,
    max_concurrent: u32,
    has_rpm: bool,
    /// What the admission script is specialised to (without the budget).
    shape: Shape,
    /// The admission script of this key's limits.
    script: Arc<Script>,
    /// The same with the key's budget checked first, built on the first call that asks.
    budget_script: OnceLock<Arc<Script>>,
    rpm_key: Arc<str>,
    tpm_key: Arc<str>,
    /// The key's lease set and its releases not yet sent (with `max_concurrent`).
    releases: Option<Arc<Releases>>,
    /// Admissions that arrive while one of this key's is in flight, sent as one batch.
    queue: Arc<AdmitQueue>,
}

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
        let max_concurrent = max_concurrent.unwrap_or(0);
        let tpm = tpm.unwrap_or(0);
        let shape = Shape {
            rpm_interval: rpm
                .filter(|&r| r > 0)
                .map(|r| (60_000_000.0 / f64::from(r)).to_string()),
            tpm: tpm > 0,
            max_concurrent,
            lease_ttl_ms: store.lease_ttl_ms,
            budget: false,
        };
        let rpm_key: Arc<str> = store.key("rpm", label).into();
        let tpm_key: Arc<str> = store.key("tpm", label).into();
        let releases = (max_concurrent > 0)
            .then(|| Arc::new(Releases::new(store.key("leases", label).into())));
        let queue = Arc::new(AdmitQueue::new(
            store,
            &shape,
            shape.tpm.then(|| tpm_key.clone()),
            releases.clone(),
            shape.rpm_interval.as_ref().map(|_| rpm_key.clone()),
        ));
        SharedLimits {
            store: store.clone(),
            tpm,
            max_concurrent,
            has_rpm: shape.rpm_interval.is_some(),
            script: admit_script::variant(&shape),
            shape,
            budget_script: OnceLock::new(),
            rpm_key,
            tpm_key,
            releases,
            queue,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether the key has any rpm, tpm or max_concurrent to keep in the store.
    fn limits_anything(&self) -> bool {
        self.has_rpm || self.tpm > 0 || self.max_concurrent > 0
    }

    /// One round trip: the budget (when given), tpm room, a lease, an rpm slot, or which
    /// limit refused and for how long. Nothing to check: no round trip. While an admission of
    /// this key is in flight, one without a budget joins the next batch ([`super::admit_queue`]).
    pub async fn admit(&self, budget: Option<BudgetCheck<'_>>) -> Result<Verdict, StoreError> {
        if budget.is_none() && !self.limits_anything() {
            return Ok(Verdict::Admitted(None));
        }
        let store = &self.store;
        let lease = (self.max_concurrent > 0).then(|| {
            let id = store.leases.next_id();
            (id, store.leases.member(id))
        });
        if budget.is_some() {
            return self.admit_alone(budget, lease).await;
        }
        match self.queue.enter(lease) {
            Entry::Call(_turn, lease) => self.admit_alone(None, lease).await,
            Entry::Wait(received) => self.queue.wait(received).await,
        }
    }

    /// One call of the key's own script for one request.
    async fn admit_alone(
        &self,
        budget: Option<BudgetCheck<'_>>,
        lease: Option<(u64, String)>,
    ) -> Result<Verdict, StoreError> {
        let store = &self.store;
        let (lease_id, member) = lease.unzip();
        let script = match budget {
            Some(_) => self.budget_script.get_or_init(|| {
                admit_script::variant(&Shape {
                    budget: true,
                    ..self.shape.clone()
                })
            }),
            None => &self.script,
        };
        // The key's releases not sent yet go with this call (removed before its checks); until
        // its answer is read they, and the lease it may add, are the guard's to give back.
        let taken = InFlight {
            store,
            releases: self.releases.as_ref(),
            released: self
                .releases
                .as_ref()
                .map(|r| r.take(RELEASES_PER_ADMISSION))
                .unwrap_or_default(),
            member,
        };
        let (member_arg, released_args) = (taken.member.as_deref().unwrap_or(""), &taken.released);
        let answer: u64 = store
            .call(super::Call::Admit, |mut conn| async move {
                // KEYS and ARGV in the order `Shape` documents.
                let mut inv = script.prepare_invoke();
                if let Some(b) = &budget {
                    inv.key(b.hash);
                }
                if self.tpm > 0 {
                    inv.key(&*self.tpm_key);
                }
                if let Some(r) = &self.releases {
                    inv.key(&*r.set).arg(member_arg);
                }
                if self.has_rpm {
                    inv.key(&*self.rpm_key);
                }
                if let Some(b) = &budget {
                    inv.arg(b.field).arg(b.limit);
                }
                for m in released_args {
                    inv.arg(m);
                }
                inv.invoke_async(&mut conn).await
            })
            .await?;
        let member = taken.answered();
        if answer != 0 {
            return refusal(answer);
        }
        let lease = match (lease_id, member, &self.releases) {
            (Some(id), Some(member), Some(r)) => Some(Lease::taken(store, id, r, member)),
            _ => None,
        };
        Ok(Verdict::Admitted(lease))
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

/// What a single admission call in flight took: the key's releases it carries and the lease it
/// may add. Dropped before the answer was read (the call failed or ran out of time, or the
/// request went away), it puts all of them on the key's list: Redis may have run the call all
/// the same, and a lease added for a request that is gone must not hold its slot until the
/// lease TTL (a `ZREM` of a member Redis does not have is a no-op).
struct InFlight<'a> {
    store: &'a Store,
    releases: Option<&'a Arc<Releases>>,
    released: Vec<String>,
    /// The request's lease (member), when its key has `max_concurrent`.
    member: Option<String>,
}

impl InFlight<'_> {
    /// The call was answered: the releases it carried are gone from Redis; the member is the
    /// caller's (a lease when admitted, nothing Redis holds when refused).
    fn answered(mut self) -> Option<String> {
        self.released.clear();
        self.member.take()
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(releases) = self.releases else {
            return;
        };
        let lost = self.member.take();
        if !self.released.is_empty() || lost.is_some() {
            releases.give_back(self.store, self.released.drain(..).chain(lost));
        }
    }
}

/// The verdict of a script's non-zero answer: `wait_ms * 8 + limit`.
pub(super) fn refusal(answer: u64) -> Result<Verdict, StoreError> {
    let limit = match answer % 8 {
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

/// A `max_concurrent` slot held in the store; released when dropped (with the response):
/// its key's next admission or the store's writer removes it ([`Releases`]).
pub struct Lease {
    store: Arc<Store>,
    id: u64,
    releases: Arc<Releases>,
}

impl Lease {
    /// The lease Redis just added as `member` of `releases`' set, kept in this process's book
    /// (renewed until dropped).
    pub(super) fn taken(
        store: &Arc<Store>,
        id: u64,
        releases: &Arc<Releases>,
        member: String,
    ) -> Lease {
        store.leases.insert(id, releases.set.clone(), member);
        Lease {
            store: store.clone(),
            id,
            releases: releases.clone(),
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.id)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((_, member)) = self.store.leases.remove(self.id) {
            self.releases.release(&self.store, member);
        }
    }
}

/// One lease set's released leases that Redis has not been sent yet. The key's next admission
/// takes them into its script call; the store's writer, told when the list stops being empty,
/// sends those still here [`LINGER`](super::writer::LINGER) after the first of them came.
pub struct Releases {
    pub(super) set: Arc<str>,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    members: Vec<String>,
    /// When the oldest member came (`None` while empty); tokio's clock, as the writer's.
    since: Option<tokio::time::Instant>,
    /// The writer knows of this list (it was told and has not found it empty since).
    watched: bool,
}

impl std::fmt::Debug for Releases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Releases")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl Releases {
    pub(crate) fn new(set: Arc<str>) -> Releases {
        Releases {
            set,
            pending: Mutex::new(Pending::default()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Releases `member`: it waits here for the key's next admission, and the writer is told
    /// of the list if it does not know of it.
    pub(crate) fn release(self: &Arc<Self>, store: &Store, member: String) {
        self.give_back(store, std::iter::once(member));
    }

    /// Puts `members` (back) on the list; tells the writer if it does not watch the list.
    pub(super) fn give_back(
        self: &Arc<Self>,
        store: &Store,
        members: impl IntoIterator<Item = String>,
    ) {
        if self.add_at(members, tokio::time::Instant::now()) {
            store.queue(Write::Released(self.clone()));
        }
    }

    /// Adds `members`, the first of them come at `now`; whether the writer must be told of
    /// the list (something was added and it did not watch the list).
    pub(super) fn add_at(
        &self,
        members: impl IntoIterator<Item = String>,
        now: tokio::time::Instant,
    ) -> bool {
        let mut p = self.pending();
        let before = p.members.len();
        p.members.extend(members);
        if p.members.len() == before {
            return false;
        }
        p.since.get_or_insert(now);
        !std::mem::replace(&mut p.watched, true)
    }

    /// Up to `max` members, oldest first, for an admission to remove.
    pub(super) fn take(&self, max: usize) -> Vec<String> {
        let mut p = self.pending();
        if p.members.len() <= max {
            p.since = None;
            return std::mem::take(&mut p.members);
        }
        p.members.drain(..max).collect()
    }

    /// For the writer: every member if the oldest waited `linger` by `now` (or `all`), else
    /// when they fall due. Unless it answers a time, the writer no longer watches the list
    /// (its next release tells the writer again).
    pub(super) fn due(
        &self,
        now: tokio::time::Instant,
        linger: Duration,
        all: bool,
    ) -> (Option<Vec<String>>, Option<tokio::time::Instant>) {
        let mut p = self.pending();
        let Some(since) = p.since else {
            p.watched = false;
            return (None, None);
        };
        if all || since + linger <= now {
            p.since = None;
            p.watched = false;
            return (Some(std::mem::take(&mut p.members)), None);
        }
        (None, Some(since + linger))
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

    /// This process's name among the replicas: its pid and 64 random bits (replicas in
    /// containers often share a pid, and two that shared a name would share leases and the
    /// numbering of their usage batches).
    pub(super) fn replica(&self) -> &str {
        self.replica.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            // `RandomState` is seeded from the operating system's randomness.
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            format!("{}-{random:x}", std::process::id())
        })
    }

    fn member(&self, id: u64) -> String {
        format!("{}-{id:x}", self.replica())
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
        .call(super::Call::RenewLeases, |mut conn| async move {
            let mut inv = RENEW_SCRIPT.prepare_invoke();
            inv.arg(store.lease_ttl_ms);
            for (set, member) in &live {
                inv.key(&**set).arg(member);
            }
            inv.invoke_async::<i64>(&mut conn).await
        })
        .await;
}
