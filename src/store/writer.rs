//! The store's one writer task: everything a request leaves behind (its lease's release, its
//! tpm charge, its usage counters) goes onto one bounded queue, and the writer sends whatever
//! has queued as one pipelined round trip, so no request waits on these and Redis sees one
//! batch however many requests end together.
//!
//! A batch is coalesced before it is sent: the releases of one lease set go as one `ZREM`,
//! the charges of one key as one amount (all keys' charges in one script call), and the usage
//! of one key, model and period as one set of increments. The writer sends [`LINGER`] after
//! the first write of a batch arrived (what ends meanwhile rides along; a released slot is
//! free again within that plus a round trip), one batch at a time.
//!
//! The writer also renews this process's leases every third of the lease TTL. Being the same
//! task, a renewal is never sent after the release of a lease it did not see: a snapshot that
//! still holds a lease was sent before that lease's release was even queued.
//!
//! A write the full queue has no room for waits beside it ([`Overflow`]) and goes with the
//! writer's next batch: lease releases up to [`OVERFLOW_RELEASES`], usage coalesced up to
//! [`UNSENT_MAX`] sets; beyond that, and a tpm charge (late, it would count against the wrong
//! minute), it is dropped and counted as a store error. A batch Redis refused the
//! connection for (nothing of it was sent) keeps its usage for the next batch, coalesced and
//! bounded ([`UNSENT_MAX`]); the renewal tick sends it too, so it reaches Redis once Redis is
//! back even if no request ends meanwhile. A batch that failed otherwise (no answer in time, a
//! dropped connection: it may have been applied) is counted and not sent again, so no counter
//! is added twice. Releases and tpm charges are never kept: an unsent release frees its slot
//! within the lease TTL, as a dead replica's does, and a late tpm charge would count against
//! the wrong minute.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::admission::{self, CHARGE_SCRIPT};
use super::usage::UsageWrite;
use super::{Store, StoreError};

/// Writes queued for the writer before further ones are dropped (and counted).
pub const QUEUE: usize = 8192;
/// Writes taken into one batch at most.
pub const BATCH: usize = 1024;
/// How long the writer waits after the first write of a batch for others to join it.
pub const LINGER: Duration = Duration::from_millis(2);
/// Usage counter sets (key, model, period) kept for a later batch while Redis refuses the
/// connection; beyond them usage is dropped and counted.
pub const UNSENT_MAX: usize = 4096;
/// Lease releases kept beside a full queue ([`Overflow`]); beyond them a release is dropped
/// (its slot is free again within the lease TTL) and counted.
pub const OVERFLOW_RELEASES: usize = 65_536;
/// The least time a batch may take: no request waits on it, and while Redis is down the
/// client's reconnection attempts take longer than a tight `timeout_ms`. A batch that ends with
/// the refusal is known unsent and kept; one that runs out of time may have been applied.
const WRITE_WITHIN: Duration = Duration::from_secs(1);

/// One thing a request leaves for the store.
#[derive(Debug)]
pub enum Write {
    /// A `max_concurrent` lease to remove from its set.
    Release { set: Arc<str>, member: String },
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

/// Starts the writer of `store`; it ends when the store is dropped (its queue closes).
pub(super) fn spawn(store: &Arc<Store>, queued: mpsc::Receiver<Write>) {
    let weak = Arc::downgrade(store);
    let renew_every = store.config.lease_ttl / 3;
    super::spawn_detached(run(weak, queued, renew_every));
}

async fn run(
    store: Weak<Store>,
    mut queued: mpsc::Receiver<Write>,
    renew_every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    let mut unsent: Vec<UsageWrite> = Vec::new();
    loop {
        tokio::select! {
            n = queued.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                // The requests ending about now ride along: at low concurrency too, one
                // pipeline (one write and read on each side) serves many of them.
                tokio::time::sleep(LINGER).await;
                while batch.len() < BATCH {
                    match queued.try_recv() {
                        Ok(w) => batch.push(w),
                        Err(_) => break,
                    }
                }
                let Some(store) = store.upgrade() else { return };
                take_overflow(&store, &mut batch, &mut unsent);
                let flushed = send(&store, &mut batch, &mut unsent).await;
                batch.clear();
                for done in flushed {
                    let _ = done.send(());
                }
            }
            _ = tick.tick() => {
                let Some(store) = store.upgrade() else { return };
                admission::renew(&store).await;
                let mut kept = Vec::new();
                take_overflow(&store, &mut kept, &mut unsent);
                if !kept.is_empty() || !unsent.is_empty() {
                    send(&store, &mut kept, &mut unsent).await;
                }
            }
        }
    }
}

/// Writes the queue had no room for, kept for the writer's next batch ([`Store::queue`]).
#[derive(Debug, Default)]
pub(super) struct Overflow {
    releases: Vec<Write>,
    usage: Vec<UsageWrite>,
}

impl Overflow {
    /// Keeps `write` if it is a release (while fewer than [`OVERFLOW_RELEASES`] are kept) or
    /// usage (added to the kept set of its key, model and period, or a new one while fewer
    /// than [`UNSENT_MAX`] are kept); whether it was kept.
    pub(super) fn keep(&mut self, write: Write) -> bool {
        match write {
            Write::Release { .. } if self.releases.len() < OVERFLOW_RELEASES => {
                self.releases.push(write);
                true
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

/// Moves what waits beside the queue into the batch being built (`batch`, and `unsent` for
/// usage, which the batch coalesces with its own).
fn take_overflow(store: &Store, batch: &mut Vec<Write>, unsent: &mut Vec<UsageWrite>) {
    if let Ok(mut overflow) = store.overflow.lock() {
        batch.append(&mut overflow.releases);
        unsent.append(&mut overflow.usage);
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
    fn of(batch: &mut Vec<Write>, unsent: &mut Vec<UsageWrite>) -> Coalesced {
        let mut releases: Vec<(Arc<str>, String)> = Vec::new();
        let mut charges: Vec<(Arc<str>, u64, u64)> = Vec::new();
        let mut usage: Vec<UsageWrite> = std::mem::take(unsent);
        let mut flushed = Vec::new();
        for w in batch.drain(..) {
            match w {
                Write::Release { set, member } => releases.push((set, member)),
                Write::Tokens { key, tpm, tokens } => charges.push((key, tpm, tokens)),
                Write::Usage(u) => usage.push(u),
                Write::Flush(done) => flushed.push(done),
            }
        }
        releases.sort_by(|a, b| a.0.cmp(&b.0));
        let mut c = Coalesced {
            flushed,
            ..Coalesced::default()
        };
        for (set, member) in releases {
            match c.releases.last_mut() {
                Some((s, members)) if *s == set => members.push(member),
                _ => c.releases.push((set, vec![member])),
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

/// Sends one coalesced batch: the releases and usage as one pipeline and, when there are
/// charges, the charge script beside it on the same connection (written together: one round
/// trip). Usage Redis refused the connection for goes back to `unsent`. Returns the batch's
/// flush requests, to answer once it is sent.
async fn send(
    store: &Store,
    batch: &mut Vec<Write>,
    unsent: &mut Vec<UsageWrite>,
) -> Vec<tokio::sync::oneshot::Sender<()>> {
    let mut c = Coalesced::of(batch, unsent);
    let flushed = std::mem::take(&mut c.flushed);
    let mut pipe = redis::pipe();
    for (set, members) in &c.releases {
        pipe.cmd("ZREM").arg(&**set).arg(members).ignore();
    }
    store.push_usage(&mut pipe, &c.usage);
    let writes = async {
        if c.releases.is_empty() && c.usage.is_empty() {
            return Ok(());
        }
        let pipe = &pipe;
        // Within a third of the lease TTL, so the renewal after it still comes in time.
        let within = store
            .config
            .timeout
            .max(WRITE_WITHIN.min(store.config.lease_ttl / 3));
        store
            .call_within(super::Call::Write, within, |mut conn| async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await
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
    let (written, ()) = futures_util::join!(writes, charges);
    if written == Err(StoreError::Refused) {
        let mut kept = std::mem::take(&mut c.usage);
        if kept.len() > UNSENT_MAX {
            kept.truncate(UNSENT_MAX);
            super::note_dropped("keep usage for a later batch");
        }
        *unsent = kept;
    }
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
        let mut batch = vec![
            Write::Release {
                set: a.clone(),
                member: "1".into(),
            },
            usage("k", "m", 1),
            Write::Release {
                set: b.clone(),
                member: "2".into(),
            },
            Write::Tokens {
                key: a.clone(),
                tpm: 60,
                tokens: 5,
            },
            usage("k", "m", 2),
            Write::Release {
                set: a.clone(),
                member: "3".into(),
            },
            usage("k", "other", 1),
            Write::Tokens {
                key: a.clone(),
                tpm: 60,
                tokens: 7,
            },
        ];
        let c = Coalesced::of(&mut batch, &mut Vec::new());
        assert!(batch.is_empty());
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
}
