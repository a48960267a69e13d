//! The admission script's text, specialised to one key's limits ([`Shape`]): only the checks
//! the key has, its constants (rpm interval, `max_concurrent`, lease TTL) written into the text,
//! and only the Redis keys and arguments that change per call passed as `KEYS` and `ARGV`.
//!
//! Why: Redis runs the script on its one thread, and what a call costs there is mostly fixed
//! per thing done — each `KEYS`/`ARGV` entry, each `tonumber` (a `strtod`), each
//! `string.format`, each `redis.call`. A generic script paid for all of them on every request
//! whatever the key's limits; a specialised one pays only for what the key checks (numbers in
//! docs/performance.md, issue 20).
//!
//! What stays exactly as the generic script did it: Redis's clock (`TIME`), GCRA for rpm and
//! tpm in whole microseconds, the rpm key's text (`%d.%03d` milliseconds, which replicas of
//! every version read), leases scored by their expiry in ms and swept only when the set looks
//! full, and the answer (see [`super::admission`]). The one deliberate difference: the rpm key
//! expires a constant 61 s after its last write instead of 1 s after its theoretical arrival
//! time. An admission only writes it with that time at most 60 s ahead, and a value whose time
//! has passed counts as "now", exactly as a missing key does, so the longer life changes no
//! decision.
//!
//! Numbers that go to Redis as text are formatted with Lua's `%d` (integer formatting):
//! handing Redis 7.0 a Lua number instead makes it print `%.17g`, exact for integers below
//! 2^53 but a float formatting that costs more than `%d` (measured).
//!
//! Variants are shared by every key of the same shape and dropped with the last generation
//! using them, so their number is that of the distinct limit configurations in use. Redis keeps
//! each one it was sent (in its script cache) until `SCRIPT FLUSH`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};

use redis::Script;

/// What an admission script is specialised to. `KEYS`, in this order and only those present:
/// the budget hash, the tpm key, the lease set, the rpm key. `ARGV`: the lease member (with
/// `max_concurrent`), then the budget's field and limit (with `budget`), then (with
/// `max_concurrent`) any number of released leases of the set, removed before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    /// 60 s / rpm in µs, as Rust prints the `f64` (the shortest text that reads back as the
    /// same number, so Lua's parser gets exactly the interval).
    pub rpm_interval: Option<String>,
    pub tpm: bool,
    /// 0: none.
    pub max_concurrent: u32,
    pub lease_ttl_ms: u64,
    /// The key's budget for the current period is checked first (its hash changes with the
    /// period, so it is a `KEYS` entry; field and limit are `ARGV`).
    pub budget: bool,
}

/// The `KEYS` index of each Redis key a script of the shape takes (`None`: not taken), in the
/// order [`Shape`] documents.
struct KeySlots {
    budget: Option<usize>,
    tpm: Option<usize>,
    lease: Option<usize>,
    rpm: Option<usize>,
}

impl Shape {
    /// Where each Redis key goes in `KEYS`; `budget`: whether the script takes the budget hash.
    fn key_slots(&self, budget: bool) -> KeySlots {
        let mut keys = 0;
        let mut next_key = || {
            keys += 1;
            keys
        };
        KeySlots {
            budget: budget.then(&mut next_key),
            tpm: self.tpm.then(&mut next_key),
            lease: (self.max_concurrent > 0).then(&mut next_key),
            rpm: self.rpm_interval.as_ref().map(|_| next_key()),
        }
    }

    /// The script's text.
    pub fn text(&self) -> String {
        let KeySlots {
            budget: budget_key,
            tpm: tpm_key,
            lease: lease_key,
            rpm: rpm_key,
        } = self.key_slots(self.budget);
        let mut args = 0;
        let mut next_arg = || {
            args += 1;
            args
        };
        let member_arg = lease_key.map(|_| next_arg());
        let budget_args = budget_key.map(|_| (next_arg(), next_arg()));
        let released_from = next_arg();

        let mut s = String::with_capacity(1024);
        if let Some(k) = lease_key {
            // Before any check can return: the releases go whatever the verdict.
            let _ = writeln!(
                s,
                "if #ARGV >= {released_from} then redis.call('ZREM', KEYS[{k}], unpack(ARGV, {released_from})) end"
            );
        }
        // The budget needs no clock: a budget-only key does not ask for it.
        if tpm_key.is_some() || lease_key.is_some() || rpm_key.is_some() {
            s.push_str("local t = redis.call('TIME')\nlocal now = t[1] * 1000000 + t[2]\n");
        }
        if let (Some(k), Some((field, limit))) = (budget_key, budget_args) {
            let _ = write!(
                s,
                "local used = redis.call('HGET', KEYS[{k}], ARGV[{field}])\n\
                 if used and tonumber(used) >= tonumber(ARGV[{limit}]) then return 4 end\n"
            );
        }
        if let Some(k) = tpm_key {
            // A string operand converts as `tonumber` does (the same `strtod`), without the
            // function call; a value that is no number fails the script either way.
            let _ = write!(
                s,
                "local spent = redis.call('GET', KEYS[{k}])\n\
                 if spent then\n\
                 \x20 local ahead = spent * 1000 - now - 60000000\n\
                 \x20 if ahead >= 0 then return (math.ceil(ahead / 1000) + 1) * 8 + 2 end\n\
                 end\n"
            );
        }
        if let Some(k) = lease_key {
            let maxc = self.max_concurrent;
            let _ = write!(
                s,
                "if redis.call('ZCARD', KEYS[{k}]) >= {maxc} then\n\
                 \x20 redis.call('ZREMRANGEBYSCORE', KEYS[{k}], '-inf', string.format('%d', now / 1000))\n\
                 \x20 if redis.call('ZCARD', KEYS[{k}]) >= {maxc} then return 8003 end\n\
                 end\n"
            );
        }
        if let (Some(k), Some(interval)) = (rpm_key, &self.rpm_interval) {
            let _ = write!(
                s,
                "local tat = (redis.call('GET', KEYS[{k}]) or 0) * 1000\n\
                 if tat < now then tat = now end\n\
                 local next_tat = math.ceil(tat + {interval})\n\
                 local ahead = next_tat - now\n\
                 if ahead > 60000000 then return math.ceil((ahead - 60000000) / 1000) * 8 + 1 end\n\
                 redis.call('PSETEX', KEYS[{k}], '{RPM_KEY_TTL_MS}', string.format('%d.%03d', next_tat / 1000, next_tat % 1000))\n"
            );
        }
        if let (Some(k), Some(member)) = (lease_key, member_arg) {
            let ttl = self.lease_ttl_ms;
            let _ = writeln!(
                s,
                "redis.call('ZADD', KEYS[{k}], string.format('%d', now / 1000 + {ttl}), ARGV[{member}])"
            );
        }
        s.push_str("return 0\n");
        s
    }
}

impl Shape {
    /// The batch form of the script (without a budget): `ARGV` holds the lease members of the
    /// requests in the batch in their order (with `max_concurrent`), else only their number.
    /// It admits the longest prefix of the batch the key's limits allow, exactly as that many
    /// single admissions at one instant would (GCRA stepped once per request, the lease set
    /// filled to `max_concurrent`), and answers `{admitted, code}`: `code` is the single
    /// script's refusal of the first request it did not admit (0 when it admitted them all),
    /// which every later request of the batch shares.
    pub fn batch_text(&self) -> String {
        let KeySlots {
            tpm: tpm_key,
            lease: lease_key,
            rpm: rpm_key,
            ..
        } = self.key_slots(false);

        let mut s = String::with_capacity(1536);
        s.push_str(if lease_key.is_some() {
            "local n = #ARGV\n"
        } else {
            "local n = tonumber(ARGV[1])\n"
        });
        s.push_str(
            "local t = redis.call('TIME')\nlocal now = t[1] * 1000000 + t[2]\nlocal refused = 0\n",
        );
        if let Some(k) = tpm_key {
            let _ = write!(
                s,
                "local spent = redis.call('GET', KEYS[{k}])\n\
                 if spent then\n\
                 \x20 local ahead = spent * 1000 - now - 60000000\n\
                 \x20 if ahead >= 0 then return {{0, (math.ceil(ahead / 1000) + 1) * 8 + 2}} end\n\
                 end\n"
            );
        }
        if let Some(k) = lease_key {
            let maxc = self.max_concurrent;
            let _ = write!(
                s,
                "local held = redis.call('ZCARD', KEYS[{k}])\n\
                 if held + n > {maxc} then\n\
                 \x20 redis.call('ZREMRANGEBYSCORE', KEYS[{k}], '-inf', string.format('%d', now / 1000))\n\
                 \x20 held = redis.call('ZCARD', KEYS[{k}])\n\
                 \x20 if held >= {maxc} then return {{0, 8003}} end\n\
                 \x20 if held + n > {maxc} then n = {maxc} - held; refused = 8003 end\n\
                 end\n"
            );
        }
        if let (Some(k), Some(interval)) = (rpm_key, &self.rpm_interval) {
            let _ = write!(
                s,
                "local tat = (redis.call('GET', KEYS[{k}]) or 0) * 1000\n\
                 if tat < now then tat = now end\n\
                 local admitted = 0\n\
                 while admitted < n do\n\
                 \x20 local next_tat = math.ceil(tat + {interval})\n\
                 \x20 local ahead = next_tat - now\n\
                 \x20 if ahead > 60000000 then refused = math.ceil((ahead - 60000000) / 1000) * 8 + 1; break end\n\
                 \x20 tat = next_tat\n\
                 \x20 admitted = admitted + 1\n\
                 end\n\
                 if admitted == 0 then return {{0, refused}} end\n\
                 n = admitted\n\
                 redis.call('PSETEX', KEYS[{k}], '{RPM_KEY_TTL_MS}', string.format('%d.%03d', tat / 1000, tat % 1000))\n"
            );
        }
        if let Some(k) = lease_key {
            let ttl = self.lease_ttl_ms;
            let _ = write!(
                s,
                "local score = string.format('%d', now / 1000 + {ttl})\n\
                 local add = {{}}\n\
                 for i = 1, n do\n\
                 \x20 add[2 * i - 1] = score\n\
                 \x20 add[2 * i] = ARGV[i]\n\
                 end\n\
                 redis.call('ZADD', KEYS[{k}], unpack(add))\n"
            );
        }
        s.push_str("return {n, refused}\n");
        s
    }
}

/// How long the rpm key lives after an admission wrote it: the longest an admission can put
/// its time ahead (60 s) plus the second the generic script kept it past that time.
pub(super) const RPM_KEY_TTL_MS: u64 = 61_000;

/// A variant's identity: its shape, and whether it is the batch form.
type VariantId = (Shape, bool);

/// Live variants by shape and form.
static VARIANTS: Mutex<Option<HashMap<VariantId, Weak<Script>>>> = Mutex::new(None);

/// The script of `shape`: the one already in use by another key of the same shape, else a new
/// one.
pub(super) fn variant(shape: &Shape) -> Arc<Script> {
    shared(shape, false)
}

/// The batch form of `shape`'s script ([`Shape::batch_text`]), shared the same way.
pub(super) fn batch_variant(shape: &Shape) -> Arc<Script> {
    shared(shape, true)
}

fn shared(shape: &Shape, batch: bool) -> Arc<Script> {
    let text = || match batch {
        true => shape.batch_text(),
        false => shape.text(),
    };
    let Ok(mut guard) = VARIANTS.lock() else {
        return Arc::new(Script::new(&text()));
    };
    let map = guard.get_or_insert_with(HashMap::new);
    let id = (shape.clone(), batch);
    if let Some(script) = map.get(&id).and_then(Weak::upgrade) {
        return script;
    }
    map.retain(|_, w| w.strong_count() > 0);
    let script = Arc::new(Script::new(&text()));
    map.insert(id, Arc::downgrade(&script));
    script
}
