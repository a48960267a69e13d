//! The store's one writer task: everything a request leaves behind (its lease's release, its
//! tpm charge, its usage counters) reaches Redis through it, off the request path, as one
//! round trip for whatever is due together (the releases' pipeline, the usage script and the
//! charge script, written together).
//!
//! When a write is due depends on who reads it soon:
//! - a tpm charge, the usage of a key with a budget (both read by the next admissions) and a
//!   flush request: [`LINGER`] after the first of them arrived (what ends meanwhile rides
//!   along);
//! - a lease release: the key's next admission takes it into its own script call
//!   ([`super::admission::Releases`]); the writer sends only what no admission took within
//!   [`LINGER`] of its release, so a released slot is free again within that plus a round
//!   trip, and a busy key's releases cost no call of their own;
//! - the usage of keys without a budget (read only by `GET /admin/usage`, which flushes this
//!   replica's first): [`USAGE_LINGER`], or sooner when something else is sent.
//!
//! A batch is coalesced before it is sent: the releases of one lease set go as one `ZREM`, the
//! charges of one key as one amount (all keys' charges in one script call), and the usage of
//! one key, model and period as one set of increments (all of a batch's usage in one script
//! call, atomic). While something is held, the writer
//! sleeps until it is due instead of waking for every write (a charge, a budgeted use or a
//! release arriving while only unbudgeted usage is held wakes it to send sooner).
//!
//! The writer also renews this process's leases every third of the lease TTL, with `ZADD XX`,
//! so a renewal that reaches Redis after the release of a lease it still listed does not add
//! it back ([`super::admission`]).
//!
//! A write the full queue has no room for waits beside it ([`Overflow`]) and goes with the
//! writer's next batch: the lease sets with releases up to [`OVERFLOW_RELEASES`], usage
//! coalesced up to [`UNSENT_MAX`] sets; beyond that, and a tpm charge (late, it would count
//! against the wrong minute), it is dropped and counted as a store error. A batch Redis refused
//! the connection for (nothing of it was sent) keeps its usage for the next batch, coalesced and
//! bounded ([`UNSENT_MAX`]); the renewal tick sends it too, so it reaches Redis once Redis is
//! back even if no request ends meanwhile. Usage batches are numbered: one whose answer never
//! came (no answer in time, a connection lost mid-way: it may or may not have been applied) is
//! kept as it is and sent again, under its number, before every later batch until Redis
//! answers; the script skips a batch at or below the last number of this replica's it applied
//! (kept in Redis for [`APPLIED_KEEP`](super::usage::APPLIED_KEEP)), so each use counts exactly
//! once. A batch Redis answered with an error is counted and dropped (sending it again would
//! meet the same). Releases and tpm charges are never kept: an unsent release frees its slot
//! within the lease TTL, as a dead replica's does, and a late tpm charge would count against
//! the wrong minute.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::admission::{self, Releases, CHARGE_SCRIPT};
use super::usage::{UsageBatch, UsageWrite};
use super::{Store, StoreError};

/// Writes queued for the writer before further ones wait beside the queue ([`Overflow`]).
pub const QUEUE: usize = 8192;
/// Writes taken into one batch at most.
pub const BATCH: usize = 1024;
/// How long a charge, a budgeted use, a flush or an untaken release waits for others to join
/// it.
pub const LINGER: Duration = Duration::from_millis(2);
/// How long the usage of keys without a budget waits for others to join it.
pub const USAGE_LINGER: Duration = Duration::from_millis(50);
/// Usage counter sets (key, model, period) kept for a later batch while Redis refuses the
/// connection; beyond them usage is dropped and counted.
pub const UNSENT_MAX: usize = 4096;
/// Lease sets with releases kept beside a full queue ([`Overflow`]); beyond them a set's
/// releases are dropped (their slots are free again within the lease TTL) and counted.
pub const OVERFLOW_RELEASES: usize = 65_536;
/// The least time a batch may take: no request waits on it, and while Redis is down the
/// client's reconnection attempts take longer than a tight `timeout_ms`. A batch that ends with
/// the refusal is known unsent and kept; one that runs out of time may have been applied.
const WRITE_WITHIN: Duration = Duration::from_secs(1);

impl Store {
    /// The bound on a call of the writer's (and other calls no request waits on): within a
    /// third of the lease TTL, so the renewal after it still comes in time.
    pub(super) fn write_within(&self) -> Duration {
        self.config
            .timeout
            .max(WRITE_WITHIN.min(self.config.lease_ttl / 3))
    }
}

/// One thing a request leaves for the store.
#[derive(Debug)]
pub enum Write {
    /// A lease set has releases waiting ([`Releases`]); sent when no admission took them.
    Released(Arc<Releases>),
    /// Tokens to charge against a key's shared tpm.
    Tokens {
        key: Arc<str>,
        tpm: u64,
        tokens: u64,
    },
    /// A request's usage counters.
    Usage(UsageWrite),
    /// Answered once everything queued before it has been sent ([`Store::flush`]).
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Write {
    /// Whether it is due within [`LINGER`] (everything but the usage of a key without a
    /// budget).
    pub(super) fn is_prompt(&self) -> bool {
        !matches!(self, Write::Usage(u) if u.period_id.is_none())
    }
}

/// Starts the writer of `store`; it ends when the store is dropped (its queue closes).
pub(super) fn spawn(store: &Arc<Store>, queued: mpsc::Receiver<Write>) {
    let weak = Arc::downgrade(store);
    let renew_every = store.config.lease_ttl / 3;
    super::spawn_detached(run(weak, queued, renew_every));
}

async fn run(store: Weak<Store>, mut queued: mpsc::Receiver<Write>, renew_every: Duration) {
    let mut tick = tokio::time::interval(renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut incoming = Vec::with_capacity(BATCH);
    let mut held = Held::default();
    let mut unsent = Unsent::default();
    loop {
        let due = held.due();
        // Only unbudgeted usage held: a prompt write must wake the writer ([`Store::queue`]).
        let lazy = due.is_some_and(|d| d > Instant::now() + LINGER);
        if let Some(store) = store.upgrade() {
            store
                .writer_lazy
                .store(lazy, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::select! {
            // Nothing held: wait for the first write.
            n = queued.recv_many(&mut incoming, BATCH), if due.is_none() => {
                if n == 0 {
                    return;
                }
                held.take_in(&mut incoming, Instant::now());
            }
            // Something held: sleep until it is due; what is queued meanwhile is taken then.
            () = sleep_or_hurry(&store, due, lazy), if due.is_some() => {
                let Some(store) = store.upgrade() else { return };
                let mut closed = false;
                while incoming.len() < BATCH {
                    match queued.try_recv() {
                        Ok(w) => incoming.push(w),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let now = Instant::now();
                held.take_in(&mut incoming, now);
                take_overflow(&store, &mut held, &mut unsent, now);
                if let Some(mut out) = held.due_now(now, closed) {
                    let flushed = send(&store, &mut out, &mut unsent).await;
                    for done in flushed {
                        let _ = done.send(());
                    }
                }
                if closed {
                    return;
                }
            }
            _ = tick.tick() => {
                let Some(store) = store.upgrade() else { return };
                admission::renew(&store).await;
                let now = Instant::now();
                take_overflow(&store, &mut held, &mut unsent, now);
                if unsent.any() {
                    send(&store, &mut Outgoing::default(), &mut unsent).await;
                }
            }
        }
    }
}

/// Sleeps until `due`; while `lazy`, a prompt write queued meanwhile ends the sleep early.
async fn sleep_or_hurry(store: &Weak<Store>, due: Option<Instant>, lazy: bool) {
    let Some(due) = due else { return };
    let hurry = store.upgrade();
    match hurry.as_deref().filter(|_| lazy) {
        Some(store) => {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = store.hurry.notified() => {}
            }
        }
        None => tokio::time::sleep_until(due).await,
    }
}

/// What the writer holds until it is due.
#[derive(Default)]
struct Held {
    /// Charges, budgeted usage and flush requests, due [`LINGER`] after the first.
    prompt: Vec<Write>,
    prompt_due: Option<Instant>,
    /// Usage of keys without a budget, due [`USAGE_LINGER`] after the first.
    usage: Vec<UsageWrite>,
    usage_due: Option<Instant>,
    /// Lease sets with releases waiting for their key's next admission.
    watched: Vec<Arc<Releases>>,
    /// When the oldest release of a watched set falls due (recomputed at each look).
    releases_due: Option<Instant>,
}

impl Held {
    fn take_in(&mut self, incoming: &mut Vec<Write>, now: Instant) {
        for w in incoming.drain(..) {
            let prompt = w.is_prompt();
            match w {
                Write::Released(r) => self.watch(r, now),
                Write::Usage(u) if !prompt => {
                    self.usage.push(u);
                    self.usage_due.get_or_insert(now + USAGE_LINGER);
                    if self.usage.len() >= BATCH {
                        self.usage_due = Some(now);
                    }
                }
                w => {
                    self.prompt.push(w);
                    self.prompt_due.get_or_insert(now + LINGER);
                    if self.prompt.len() >= BATCH {
                        self.prompt_due = Some(now);
                    }
                }
            }
        }
    }

    /// Watches a lease set the writer was told of; it is looked at within [`LINGER`], when its
    /// own time is read.
    fn watch(&mut self, releases: Arc<Releases>, now: Instant) {
        if !self.watched.iter().any(|w| Arc::ptr_eq(w, &releases)) {
            self.watched.push(releases);
        }
        let at = now + LINGER;
        self.releases_due = Some(self.releases_due.map_or(at, |d| d.min(at)));
    }

    /// When the writer must look again; `None`: nothing is held.
    fn due(&self) -> Option<Instant> {
        [self.prompt_due, self.usage_due, self.releases_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// What is due by `now` (everything when `all`, or when a flush request is due): the
    /// due releases of the watched sets and the held writes, with all held usage riding along
    /// once anything is sent. `None`: nothing to send yet.
    fn due_now(&mut self, now: Instant, all: bool) -> Option<Outgoing> {
        let prompt_due = self.prompt_due.is_some_and(|d| d <= now);
        let all = all || (prompt_due && self.prompt.iter().any(|w| matches!(w, Write::Flush(_))));
        let mut out = Outgoing::default();
        let mut next: Option<Instant> = None;
        self.watched.retain(|r| {
            let (members, later) = r.due(now, LINGER, all);
            if let Some(members) = members.filter(|m| !m.is_empty()) {
                out.releases.push((r.set.clone(), members));
            }
            if let Some(at) = later {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            // Otherwise the set is no longer watched: its next release tells the writer.
            later.is_some()
        });
        self.releases_due = next;
        if all || prompt_due {
            out.writes = std::mem::take(&mut self.prompt);
            self.prompt_due = None;
        }
        let usage_due = self.usage_due.is_some_and(|d| d <= now);
        if all || usage_due || !out.is_empty() {
            out.usage = std::mem::take(&mut self.usage);
            self.usage_due = None;
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Writes the queue had no room for, kept for the writer's next batch ([`Store::queue`]).
#[derive(Debug, Default)]
pub(super) struct Overflow {
    released: Vec<Arc<Releases>>,
    usage: Vec<UsageWrite>,
}

impl Overflow {
    /// Keeps `write` if it tells of a lease set's releases (while fewer than
    /// [`OVERFLOW_RELEASES`] sets are kept) or is usage (added to the kept set of its key,
    /// model and period, or a new one while fewer than [`UNSENT_MAX`] are kept); whether it
    /// was kept.
    pub(super) fn keep(&mut self, write: Write) -> bool {
        match write {
            Write::Released(r) => {
                if self.released.iter().any(|k| Arc::ptr_eq(k, &r)) {
                    true
                } else if self.released.len() < OVERFLOW_RELEASES {
                    self.released.push(r);
                    true
                } else {
                    false
                }
            }
            Write::Usage(usage) => {
                if let Some(kept) = self.usage.iter_mut().find(|k| k.same_counters(&usage)) {
                    kept.add(&usage);
                    true
                } else if self.usage.len() < UNSENT_MAX {
                    self.usage.push(usage);
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }
}

/// Moves what waits beside the queue into what the writer holds: the lease sets to watch, and
/// the usage into `unsent` (sent with the next batch or renewal tick).
fn take_overflow(store: &Store, held: &mut Held, unsent: &mut Unsent, now: Instant) {
    let Ok(mut overflow) = store.overflow.lock() else {
        return;
    };
    for releases in overflow.released.drain(..) {
        held.watch(releases, now);
    }
    unsent.usage.append(&mut overflow.usage);
}

/// Usage the writer has still to bring to Redis after a batch failed.
#[derive(Default)]
struct Unsent {
    /// Known unsent (Redis refused the connection): added up per key, model and period, it
    /// joins the next batch.
    usage: Vec<UsageWrite>,
    /// Batches sent whose answer never came (out of time, connection lost): Redis may or may
    /// not have applied each. They go again, in their order and before the new batch, in every
    /// later call until one is answered; Redis skips those it applied (by their numbers).
    unanswered: Vec<(u64, Vec<UsageWrite>)>,
    /// The number of the last batch sent (the writer's batches are numbered from 1).
    seq: u64,
}

impl Unsent {
    fn any(&self) -> bool {
        !self.usage.is_empty() || !self.unanswered.is_empty()
    }

    /// How many uses are kept.
    fn uses(&self) -> usize {
        self.usage.len() + self.unanswered.iter().map(|(_, u)| u.len()).sum::<usize>()
    }

    /// Keeps the answer-less batch `seq`; beyond [`UNSENT_MAX`] uses in all of them, the
    /// oldest batches are dropped and counted.
    fn unanswered(&mut self, seq: u64, uses: Vec<UsageWrite>) {
        self.unanswered.push((seq, uses));
        let mut kept = self.uses() - self.usage.len();
        while kept > UNSENT_MAX && self.unanswered.len() > 1 {
            let (_, dropped) = self.unanswered.remove(0);
            kept -= dropped.len();
            super::note_dropped("keep usage for a later batch");
        }
    }
}

/// What one batch sends, before coalescing.
#[derive(Default)]
struct Outgoing {
    /// Releases by lease set.
    releases: Vec<(Arc<str>, Vec<String>)>,
    /// Charges, budgeted usage and flush requests.
    writes: Vec<Write>,
    /// Usage of keys without a budget.
    usage: Vec<UsageWrite>,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.releases.is_empty() && self.writes.is_empty() && self.usage.is_empty()
    }
}

/// A batch, coalesced: releases per lease set, charges per key, usage per key, model and
/// period.
#[derive(Default)]
struct Coalesced {
    releases: Vec<(Arc<str>, Vec<String>)>,
    charges: Vec<(Arc<str>, u64, u64)>,
    usage: Vec<UsageWrite>,
    /// Flush requests in the batch, answered after it is sent.
    flushed: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Coalesced {
    /// Sorts and merges, so a batch of many keys costs n log n, not n² comparisons. The usage
    /// an earlier batch could not send (`unsent`) joins this one's.
    fn of(out: &mut Outgoing, unsent: &mut Vec<UsageWrite>) -> Coalesced {
        let mut charges: Vec<(Arc<str>, u64, u64)> = Vec::new();
        let mut usage: Vec<UsageWrite> = std::mem::take(unsent);
        usage.append(&mut out.usage);
        let mut flushed = Vec::new();
        for w in out.writes.drain(..) {
            match w {
                // Sets are watched, never sent as writes.
                Write::Released(_) => {}
                Write::Tokens { key, tpm, tokens } => charges.push((key, tpm, tokens)),
                Write::Usage(u) => usage.push(u),
                Write::Flush(done) => flushed.push(done),
            }
        }
        let mut releases = std::mem::take(&mut out.releases);
        releases.sort_by(|a, b| a.0.cmp(&b.0));
        let mut c = Coalesced {
            flushed,
            ..Coalesced::default()
        };
        // Two generations' lists of one set go as one `ZREM`.
        for (set, mut members) in releases {
            match c.releases.last_mut() {
                Some((s, kept)) if *s == set => kept.append(&mut members),
                _ => c.releases.push((set, members)),
            }
        }
        charges.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        charges.dedup_by(|later, kept| {
            let same = later.0 == kept.0 && later.1 == kept.1;
            if same {
                kept.2 += later.2;
            }
            same
        });
        c.charges = charges;
        usage.sort_unstable_by(|a, b| {
            (&a.key, &a.model, &a.period_id).cmp(&(&b.key, &b.model, &b.period_id))
        });
        usage.dedup_by(|later, kept| {
            let same = kept.same_counters(later);
            if same {
                kept.add(later);
            }
            same
        });
        c.usage = usage;
        c
    }
}

/// Sends one coalesced batch, written together (one round trip): the releases as one pipeline,
/// the usage as one script call (after the batches still unanswered), and, when there are
/// charges, the charge script. Returns the batch's flush requests, to answer once it is sent.
async fn send(
    store: &Store,
    out: &mut Outgoing,
    unsent: &mut Unsent,
) -> Vec<tokio::sync::oneshot::Sender<()>> {
    let mut c = Coalesced::of(out, &mut unsent.usage);
    let flushed = std::mem::take(&mut c.flushed);
    let releases = async {
        if c.releases.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (set, members) in &c.releases {
            pipe.cmd("ZREM").arg(&**set).arg(members).ignore();
        }
        let pipe = &pipe;
        let _ = store
            .call_within(
                super::Call::Write,
                store.write_within(),
                |mut conn| async move { pipe.query_async::<()>(&mut conn).await },
            )
            .await;
    };
    let seq = (!c.usage.is_empty()).then(|| {
        unsent.seq += 1;
        unsent.seq
    });
    let usage = async {
        let mut batches: Vec<UsageBatch<'_>> = unsent
            .unanswered
            .iter()
            .map(|(seq, uses)| UsageBatch { seq: *seq, uses })
            .collect();
        if let Some(seq) = seq {
            batches.push(UsageBatch {
                seq,
                uses: &c.usage,
            });
        }
        if batches.is_empty() {
            return Ok(0);
        }
        store.apply_usage(&batches).await
    };
    let charges = async {
        if c.charges.is_empty() {
            return;
        }
        let charges = &c.charges;
        let _ = store
            .call(super::Call::ChargeTokens, |mut conn| async move {
                let mut inv = CHARGE_SCRIPT.prepare_invoke();
                for (key, tpm, tokens) in charges {
                    inv.key(&**key).arg(*tokens).arg(*tpm);
                }
                inv.invoke_async::<i64>(&mut conn).await
            })
            .await;
    };
    let ((), applied, ()) = futures_util::join!(releases, usage, charges);
    match (applied, seq) {
        (Ok(_), _) => unsent.unanswered.clear(),
        // Nothing of it went out: the new uses join the next batch (the unanswered stay).
        (Err(StoreError::Refused), _) => {
            let mut kept = std::mem::take(&mut c.usage);
            if kept.len() > UNSENT_MAX {
                kept.truncate(UNSENT_MAX);
                super::note_dropped("keep usage for a later batch");
            }
            unsent.usage = kept;
        }
        // Perhaps applied: it goes again as it is, under its number.
        (Err(StoreError::Timeout | StoreError::Lost), seq) => {
            if let Some(seq) = seq {
                unsent.unanswered(seq, std::mem::take(&mut c.usage));
            }
        }
        // Answered with an error (counted): sending it again would meet the same.
        (Err(_), _) => unsent.unanswered.clear(),
    }
    store.usage_kept.store(unsent.uses(), Ordering::Relaxed);
    flushed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(key: &str, model: &str, requests: u64) -> Write {
        Write::Usage(UsageWrite {
            key: key.into(),
            model: model.into(),
            requests,
            input_tokens: 10 * requests,
            cost: 0.5,
            ..UsageWrite::default()
        })
    }

    #[test]
    fn a_batch_coalesces_per_set_key_and_counters() {
        let (a, b): (Arc<str>, Arc<str>) = ("l:a".into(), "l:b".into());
        let mut out = Outgoing {
            releases: vec![
                (a.clone(), vec!["1".into()]),
                (b.clone(), vec!["2".into()]),
                (a.clone(), vec!["3".into()]),
            ],
            writes: vec![
                Write::Tokens {
                    key: a.clone(),
                    tpm: 60,
                    tokens: 5,
                },
                usage("k", "m", 2),
                Write::Tokens {
                    key: a.clone(),
                    tpm: 60,
                    tokens: 7,
                },
            ],
            usage: Vec::new(),
        };
        let Write::Usage(first) = usage("k", "m", 1) else {
            unreachable!()
        };
        let Write::Usage(other) = usage("k", "other", 1) else {
            unreachable!()
        };
        out.usage = vec![first, other];
        let c = Coalesced::of(&mut out, &mut Vec::new());
        assert!(out.is_empty());
        assert_eq!(
            c.releases,
            vec![
                (a.clone(), vec!["1".into(), "3".into()]),
                (b, vec!["2".into()])
            ]
        );
        assert_eq!(c.charges, vec![(a, 60, 12)]);
        assert_eq!(c.usage.len(), 2);
        assert_eq!(
            (
                c.usage[0].requests,
                c.usage[0].input_tokens,
                c.usage[0].cost
            ),
            (3, 30, 1.0)
        );
        assert_eq!(c.usage[1].model, "other");
    }

    fn budgeted(key: &str) -> Write {
        Write::Usage(UsageWrite {
            key: key.into(),
            model: "m".into(),
            requests: 1,
            period_id: Some("day-0".into()),
            ..UsageWrite::default()
        })
    }

    #[test]
    fn usage_without_a_budget_waits_longer_unless_something_else_goes() {
        let t0 = Instant::now();
        let mut held = Held::default();
        held.take_in(&mut vec![usage("k", "m", 1)], t0);
        assert_eq!(held.due(), Some(t0 + USAGE_LINGER));
        assert!(held.due_now(t0 + LINGER, false).is_none());
        // A budgeted key's use is due within LINGER, and the held usage rides along with it.
        let t1 = t0 + LINGER;
        held.take_in(&mut vec![budgeted("b")], t1);
        assert_eq!(held.due(), Some(t1 + LINGER));
        let out = held.due_now(t1 + LINGER, false).expect("due");
        assert_eq!((out.writes.len(), out.usage.len()), (1, 1));
        assert_eq!(held.due(), None);
        // Alone, the unbudgeted usage goes at USAGE_LINGER.
        let t2 = t1 + LINGER;
        held.take_in(&mut vec![usage("k", "m", 1)], t2);
        assert!(held.due_now(t2 + USAGE_LINGER / 2, false).is_none());
        let out = held.due_now(t2 + USAGE_LINGER, false).expect("due");
        assert_eq!((out.writes.len(), out.usage.len()), (0, 1));
    }

    #[test]
    fn releases_an_admission_took_are_not_sent_and_the_rest_go_after_linger() {
        let t0 = Instant::now();
        // What `Releases::release` does at t0, but the writer is told here.
        let store_less = |r: &Arc<Releases>, m: &str| r.add_at(vec![m.to_owned()], t0);
        let r = Arc::new(Releases::new("l:a".into()));
        assert!(store_less(&r, "1"), "the first release tells the writer");
        assert!(
            !store_less(&r, "2"),
            "a watched list does not tell it again"
        );
        let mut held = Held::default();
        held.take_in(&mut vec![Write::Released(r.clone())], t0);
        // Not yet LINGER old: held, nothing to send.
        assert!(held.due_now(t0, false).is_none());
        let later = t0 + LINGER;
        let out = held.due_now(later, false).expect("due");
        assert_eq!(
            out.releases,
            vec![("l:a".into(), vec!["1".into(), "2".into()])]
        );
        assert_eq!(held.due(), None, "sent: no longer watched");
        // A release an admission takes before it is due is never sent by the writer.
        assert!(store_less(&r, "3"), "unwatched: the writer is told again");
        held.take_in(&mut vec![Write::Released(r.clone())], later);
        assert_eq!(r.take(64), vec!["3".to_owned()]);
        assert!(held.due_now(later + LINGER, false).is_none());
        assert_eq!(held.due(), None);
    }
}
