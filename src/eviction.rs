//! The background sweep that evicts idle sessions (docs/PROTOCOL.md section 4).

use std::sync::Arc;

use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::limits::IpLimiter;
use crate::socket::relay::Relay;
use crate::socket::Creations;
use crate::store::Store;

/// Sweeps every `interval` until `stop` is cancelled. Members of a session
/// evicted while they are still connected are told `SESSION_EXPIRED` and
/// removed from its room (in a cluster, by the one node that evicted it).
/// Also prunes the per-IP rate limiters, session quota and failure budget,
/// so their state stays bounded.
pub async fn run<A: Adapter>(
    store: Store,
    io: SocketIo<A>,
    limiters: Vec<Arc<IpLimiter>>,
    creations: Creations,
    interval: std::time::Duration,
    stop: CancellationToken,
) {
    let mut ticks = time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        for limiter in &limiters {
            limiter.prune();
        }
        creations.quota.prune(&store).await;
        creations.failures.prune();
        // Redis down: nothing is evicted now; the next sweep catches up.
        let Ok(sweep) = store.sweep().await else { continue };
        if sweep.evicted > 0 {
            let with_members = sweep.expired.len();
            tracing::info!(evicted = sweep.evicted, with_members, "evicted idle sessions");
            crate::metrics::evicted("idle", sweep.evicted.saturating_sub(with_members));
            crate::metrics::evicted("expired", with_members);
        }
        Relay::new(io.clone(), store.is_shared())
            .announce_expired(sweep.expired)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::domain::{ChatMode, ConnId, SessionId, UserId};
    use crate::store::MemoryStore as Store;
    use crate::store::{JoinRequest, Limits};

    fn store() -> Store {
        Store::new(Limits::for_tests())
    }

    fn creator_join(store: &Store, id: &str, conn: &str) {
        let req = JoinRequest {
            session: SessionId::parse(id).unwrap(),
            user: UserId::parse("u1").unwrap(),
            display_name: None,
            public_key: None,
            is_creator: true,
            offered_key: Some("key".into()),
            offered_password: None,
            mode: ChatMode::Group,
            may_create: true,
            replacing: None,
        };
        let auth = store.auth_for(&req);
        store.join(req, &auth, &ConnId::new(conn), 0).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_session_lives_for_the_idle_timeout() {
        let store = store();
        store
            .reserve(SessionId::parse("idle").unwrap(), "k", ChatMode::Group, None)
            .unwrap();
        tokio::time::advance(Duration::from_secs(1799)).await;
        assert!(store.sweep(tokio::time::Instant::now()).is_empty());
        assert_eq!(store.session_count(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            store.sweep(tokio::time::Instant::now()).is_empty(),
            "nobody to tell"
        );
        assert_eq!(store.session_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_with_members_lives_for_the_member_timeout() {
        let store = store();
        creator_join(&store, "busy", "c1");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(store.sweep(tokio::time::Instant::now()).is_empty());
        assert_eq!(store.session_count(), 1);
        tokio::time::advance(Duration::from_secs(3601)).await;
        let expired = store.sweep(tokio::time::Instant::now());
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].conns, vec![ConnId::new("c1")]);
        assert_eq!(store.session_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_eviction() {
        let store = store();
        creator_join(&store, "act", "c1");
        let (session, user, conn) = (
            SessionId::parse("act").unwrap(),
            UserId::parse("u1").unwrap(),
            ConnId::new("c1"),
        );
        tokio::time::advance(Duration::from_secs(7000)).await;
        store.typing(&session, &user, &conn).unwrap();
        tokio::time::advance(Duration::from_secs(7000)).await;
        assert!(store.sweep(tokio::time::Instant::now()).is_empty());
        assert_eq!(store.session_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_member_leaving_keeps_the_session_for_the_idle_timeout() {
        let store = store();
        creator_join(&store, "left", "c1");
        let (session, user, conn) = (
            SessionId::parse("left").unwrap(),
            UserId::parse("u1").unwrap(),
            ConnId::new("c1"),
        );
        store.leave(&session, &user, &conn).unwrap();
        tokio::time::advance(Duration::from_secs(1700)).await;
        store.sweep(tokio::time::Instant::now());
        assert_eq!(store.session_count(), 1, "a reload can still rejoin");
        tokio::time::advance(Duration::from_secs(200)).await;
        store.sweep(tokio::time::Instant::now());
        assert_eq!(store.session_count(), 0);
    }
}
