//! Pool key cool-downs shared by every replica: a key that one replica rests after a 429 or
//! 401 rests on all of them, for its Retry-After.
//!
//! A rest is written as a Redis key that expires when the rest ends (named by credential and
//! key index, never by the key). Picking a pool key must not wait on the network, so each
//! process mirrors the shared rests into its pools' own cool-downs: one task reads the
//! remaining time of every watched pool key in one pipelined call every [`POLL`]. A rest thus
//! reaches the other replicas within [`POLL`] plus a round trip.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{spawn_detached, Store};

/// How often the shared rests are read.
pub const POLL: Duration = Duration::from_millis(200);

/// A pool whose keys can rest: what [`Store`] needs of `credentials::pool`.
pub trait Restable: Send + Sync {
    fn key_count(&self) -> usize;
    /// Rests key `index` for `rest` from now (keeping a later rest it already has).
    fn rest_key(&self, index: usize, rest: Duration);
}

pub(super) struct Watched {
    /// Redis key per pool key index.
    keys: Vec<String>,
    pool: Weak<dyn Restable>,
}

impl Store {
    fn rest_key_name(&self, credential: &str, index: usize) -> String {
        self.key("cooldown", &format!("{credential}:{index}"))
    }

    /// Mirrors the shared rests of `credential`'s keys into `pool` for as long as it lives.
    pub fn watch_pool(&self, credential: &str, pool: Weak<dyn Restable>) {
        let Some(p) = pool.upgrade() else {
            return;
        };
        let keys = (0..p.key_count())
            .map(|i| self.rest_key_name(credential, i))
            .collect();
        if let Ok(mut pools) = self.pools.lock() {
            pools.push(Watched { keys, pool });
        }
    }

    /// Tells every replica that key `index` of `credential` rests for `rest` (off the request
    /// path).
    pub fn share_rest(self: &Arc<Self>, credential: &str, index: usize, rest: Duration) {
        let key = self.rest_key_name(credential, index);
        let ms = u64::try_from(rest.as_millis()).unwrap_or(u64::MAX).max(1);
        let store = self.clone();
        spawn_detached(async move {
            let _ = store
                .call(super::Call::ShareCooldown, |mut conn| async move {
                    let key = &key;
                    redis::cmd("SET")
                        .arg(key)
                        .arg(1)
                        .arg("PX")
                        .arg(ms)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await;
        });
    }

    /// Reads every watched key's remaining rest once and applies it; drops dead pools.
    pub async fn sync_rests(&self) {
        let watched: Vec<(Vec<String>, Arc<dyn Restable>)> = match self.pools.lock() {
            Ok(mut pools) => {
                pools.retain(|w| w.pool.strong_count() > 0);
                pools
                    .iter()
                    .filter_map(|w| w.pool.upgrade().map(|p| (w.keys.clone(), p)))
                    .collect()
            }
            Err(_) => return,
        };
        if watched.is_empty() {
            return;
        }
        let all: Vec<&String> = watched.iter().flat_map(|(keys, _)| keys.iter()).collect();
        let remaining: Result<Vec<i64>, _> = self
            .call(super::Call::ReadCooldowns, |mut conn| async move {
                let mut pipe = redis::pipe();
                for key in &all {
                    pipe.cmd("PTTL").arg(*key);
                }
                pipe.query_async(&mut conn).await
            })
            .await;
        let Ok(remaining) = remaining else {
            return;
        };
        let mut left = remaining.into_iter();
        for (keys, pool) in &watched {
            for index in 0..keys.len() {
                let Some(ms) = left.next() else {
                    return;
                };
                if ms > 0 {
                    pool.rest_key(index, Duration::from_millis(ms.unsigned_abs()));
                }
            }
        }
    }
}

/// The one task that mirrors shared rests into this process's pools.
pub(super) fn spawn_poll(store: &Arc<Store>) {
    let weak = Arc::downgrade(store);
    spawn_detached(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else {
                return;
            };
            store.sync_rests().await;
        }
    });
}
