//! Live sessions created per client address (`MAX_SESSIONS_PER_IP`), by
//! reservation or by a creator's join alike, so that one address cannot
//! take every one of `MAX_SESSIONS` and lock everyone else out.
//!
//! Each node counts the sessions created through it (as every per-address
//! limit does). A session's end is not announced to this map: when an
//! address is at its quota, the sessions it holds are checked against the
//! store, and the eviction task drops ended ones every cleanup interval, so
//! the map holds at most one entry per live session created here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::domain::{SessionId, Unavailable};
use crate::store::Store;

/// Sessions created by one address.
#[derive(Default)]
struct Created {
    live: Vec<SessionId>,
    /// Creations under way (claimed, not yet known to have succeeded).
    pending: usize,
}

impl Created {
    fn count(&self) -> usize {
        self.live.len() + self.pending
    }
}

/// The per-address count of live sessions created through this node.
pub struct SessionQuota {
    max: usize,
    by_ip: Mutex<HashMap<IpAddr, Created>>,
}

/// A creation that fits the quota of its address; once the session exists,
/// [`QuotaClaim::created`] records it, and dropping the claim otherwise
/// gives the place back.
pub struct QuotaClaim {
    quota: Arc<SessionQuota>,
    ip: IpAddr,
    done: bool,
}

impl SessionQuota {
    /// `max` live sessions per address; 0 means no limit.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            by_ip: Mutex::default(),
        })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<IpAddr, Created>> {
        self.by_ip.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more session created by `ip`, or `None` when it
    /// already holds `max` live ones (asking the store which still live).
    pub async fn claim(
        self: &Arc<Self>,
        ip: IpAddr,
        store: &Store,
    ) -> Result<Option<QuotaClaim>, Unavailable> {
        let doubtful = match self.try_claim(ip) {
            Ok(claim) => return Ok(Some(claim)),
            Err(doubtful) => doubtful,
        };
        let alive = store.sessions_exist(&doubtful).await?;
        let ended: Vec<&SessionId> = doubtful
            .iter()
            .zip(alive)
            .filter(|(_, a)| !a)
            .map(|(id, _)| id)
            .collect();
        if let Some(created) = self.map().get_mut(&ip) {
            created.live.retain(|id| !ended.contains(&id));
        }
        Ok(self.try_claim(ip).ok())
    }

    /// Claims at once when there is room; otherwise the sessions to check.
    fn try_claim(self: &Arc<Self>, ip: IpAddr) -> Result<QuotaClaim, Vec<SessionId>> {
        let mut map = self.map();
        let created = map.entry(ip).or_default();
        if self.max != 0 && created.count() >= self.max {
            return Err(created.live.clone());
        }
        created.pending += 1;
        Ok(QuotaClaim {
            quota: self.clone(),
            ip,
            done: false,
        })
    }

    /// Forgets sessions that ended (called by the eviction task).
    pub async fn prune(&self, store: &Store) {
        let all: Vec<(IpAddr, SessionId)> = self
            .map()
            .iter()
            .flat_map(|(ip, c)| c.live.iter().map(move |id| (*ip, id.clone())))
            .collect();
        let ids: Vec<SessionId> = all.iter().map(|(_, id)| id.clone()).collect();
        let Ok(alive) = store.sessions_exist(&ids).await else {
            return;
        };
        let mut map = self.map();
        for ((ip, id), alive) in all.into_iter().zip(alive) {
            if !alive {
                if let Some(created) = map.get_mut(&ip) {
                    created.live.retain(|live| *live != id);
                }
            }
        }
        map.retain(|_, c| c.count() > 0);
    }

    /// The most live sessions one address may hold (0: no limit).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Live sessions counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.map().get(&ip).map_or(0, Created::count)
    }
}

impl QuotaClaim {
    /// The session now exists: it counts until it ends.
    pub fn created(mut self, session: SessionId) {
        self.done = true;
        let mut map = self.quota.map();
        let created = map.entry(self.ip).or_default();
        created.pending = created.pending.saturating_sub(1);
        created.live.push(session);
    }
}

impl Drop for QuotaClaim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut map = self.quota.map();
        if let Some(created) = map.get_mut(&self.ip) {
            created.pending = created.pending.saturating_sub(1);
            if created.count() == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChatMode;
    use crate::store::Limits;

    fn store() -> Store {
        Store::memory(Limits::for_tests())
    }

    #[tokio::test]
    async fn an_address_holds_at_most_its_quota_of_live_sessions() {
        let store = store();
        let quota = SessionQuota::new(2);
        let ip = IpAddr::from([10, 0, 0, 1]);
        for id in ["a", "b"] {
            let claim = quota.claim(ip, &store).await.unwrap().expect("room for two");
            let id = SessionId::parse(id).unwrap();
            store.reserve(id.clone(), "k", ChatMode::Group).await.unwrap();
            claim.created(id);
        }
        assert!(
            quota.claim(ip, &store).await.unwrap().is_none(),
            "a third is refused"
        );
        let other = IpAddr::from([10, 0, 1, 1]);
        assert!(
            quota.claim(other, &store).await.unwrap().is_some(),
            "another address is not"
        );
        assert_eq!(quota.count(other), 0, "a dropped claim gives its place back");
    }

    #[tokio::test]
    async fn ended_sessions_free_their_place() {
        let store = store();
        let quota = SessionQuota::new(1);
        let ip = IpAddr::from([10, 0, 0, 2]);
        let claim = quota.claim(ip, &store).await.unwrap().unwrap();
        // Created and gone (as after eviction): the store does not know it.
        claim.created(SessionId::parse("gone").unwrap());
        assert_eq!(quota.count(ip), 1);
        assert!(
            quota.claim(ip, &store).await.unwrap().is_some(),
            "the ended one is not counted"
        );
        quota.prune(&store).await;
        assert_eq!(quota.count(ip), 0);
    }
}

/// Wrong keys and passwords per client address (`AUTH_FAILURES_PER_IP_PER_MIN`),
/// in fixed one-minute windows: past the limit, that address's joins wait
/// (`RATE_LIMITED` with `retryAfterMs`) without being checked, so one
/// address guesses at most that many passwords a minute. The map is pruned
/// of past windows every cleanup interval, and capped.
pub struct FailureBudget {
    max: u32,
    by_ip: Mutex<HashMap<IpAddr, (u32, tokio::time::Instant)>>,
}

/// The window failures are counted in.
const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Most addresses tracked at once: past it, windows that ended are dropped,
/// and if none has, a new address is refused until some end (fail closed).
const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl FailureBudget {
    /// `max` failures per address per minute; 0 means no limit.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            by_ip: Mutex::default(),
        })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<IpAddr, (u32, tokio::time::Instant)>> {
        self.by_ip.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long `ip` must wait before its next check, when it must.
    pub fn wait(&self, ip: IpAddr) -> Option<std::time::Duration> {
        if self.max == 0 {
            return None;
        }
        let now = tokio::time::Instant::now();
        let mut map = self.map();
        if !map.contains_key(&ip) && map.len() >= MAX_TRACKED_ADDRESSES {
            map.retain(|_, (_, start)| now.saturating_duration_since(*start) < FAILURE_WINDOW);
            if map.len() >= MAX_TRACKED_ADDRESSES {
                return Some(FAILURE_WINDOW);
            }
        }
        let (count, start) = map.get(&ip).copied()?;
        let elapsed = now.saturating_duration_since(start);
        (elapsed < FAILURE_WINDOW && count >= self.max).then(|| FAILURE_WINDOW - elapsed)
    }

    /// Counts one wrong key or password from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut map = self.map();
        let entry = map.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// Drops windows that ended.
    pub fn prune(&self) {
        let now = tokio::time::Instant::now();
        self.map()
            .retain(|_, (_, start)| now.saturating_duration_since(*start) < FAILURE_WINDOW);
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_address_waits_once_it_spent_its_failures_for_the_minute() {
        let budget = FailureBudget::new(3);
        let ip = IpAddr::from([10, 0, 0, 3]);
        for _ in 0..3 {
            assert_eq!(budget.wait(ip), None);
            budget.failed(ip);
        }
        let wait = budget.wait(ip).expect("spent");
        assert!(wait <= FAILURE_WINDOW && wait > std::time::Duration::from_secs(59));
        assert_eq!(
            budget.wait(IpAddr::from([10, 0, 0, 4])),
            None,
            "other addresses are not affected"
        );
        tokio::time::advance(FAILURE_WINDOW).await;
        assert_eq!(budget.wait(ip), None, "a new minute");
        budget.prune();
        assert!(budget.map().is_empty());
    }
}
