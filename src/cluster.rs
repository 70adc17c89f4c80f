//! A cluster node's duties towards the others: its heartbeat, and removing
//! the members of nodes that died.
//!
//! Every `NODE_TIMEOUT_SECS / 3` the node refreshes its heartbeat key (it
//! expires after `NODE_TIMEOUT_SECS`) and asks Redis to remove the members
//! of every node whose key has expired. The removal is one script per dead
//! node, so when several survivors try at once only one gets the members
//! back, and each departure is announced exactly once. A dead node is thus
//! noticed within about `NODE_TIMEOUT_SECS × 4/3`.
//!
//! When Redis is lost, the store refuses every operation until this task
//! has brought the node back (see [`recover`]).

use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::domain::Unavailable;
use crate::socket::relay::{cut_off, Relay};
use crate::store::redis::driver::ManagedDriver;
use crate::store::{Departures, RedisStore};

/// Registers this node: members left in Redis by an earlier run under the
/// same `NODE_ID` are removed (and their departures announced), then the
/// first heartbeat is written.
pub async fn join<A: Adapter>(store: &RedisStore, io: &SocketIo<A>) -> anyhow::Result<()> {
    let stale = store
        .remove_local_members()
        .await
        .map_err(|_| anyhow::anyhow!("Redis (REDIS_URL) stopped answering during start-up"))?;
    if !stale.is_empty() {
        tracing::warn!(
            sessions = stale.len(),
            "removed members left by an earlier run of this NODE_ID"
        );
        Relay::new(io.clone(), true).announce_departures(stale).await;
    }
    store
        .heartbeat()
        .await
        .map_err(|_| anyhow::anyhow!("Redis (REDIS_URL) stopped answering during start-up"))?;
    Ok(())
}

/// How often a node that lost Redis checks whether it is back.
const RECOVERY_POLL: Duration = Duration::from_millis(250);

/// Beats and reaps until `stop` is cancelled, and brings the node back when
/// Redis returns after a loss. The heartbeat has a loop of its own, so that
/// announcing the departures of a large dead node never delays it into
/// lapsing.
pub async fn run<A: Adapter>(
    store: RedisStore,
    driver: ManagedDriver,
    io: SocketIo<A>,
    stop: CancellationToken,
) {
    let beating = Mutex::new(());
    tokio::join!(
        heartbeat(&store, &io, &beating, &stop),
        duties(&store, &driver, &io, &beating, &stop)
    );
}

/// Beats every [`RedisStore::heartbeat_interval`] while the node is
/// healthy (while it is not, [`recover`] beats).
async fn heartbeat<A: Adapter>(
    store: &RedisStore,
    io: &SocketIo<A>,
    beating: &Mutex<()>,
    stop: &CancellationToken,
) {
    let every = store.heartbeat_interval();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        if store.is_healthy() {
            let _ = beat(store, io, beating).await;
        }
    }
}

/// Removes the members of dead nodes, checks the adapter's subscriptions,
/// and recovers after a Redis loss.
async fn duties<A: Adapter>(
    store: &RedisStore,
    driver: &ManagedDriver,
    io: &SocketIo<A>,
    beating: &Mutex<()>,
    stop: &CancellationToken,
) {
    let every = store.heartbeat_interval();
    loop {
        let wait = if store.is_healthy() { every } else { RECOVERY_POLL };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = store.gate_closed() => {}
        }
        if !store.is_healthy() {
            recover(store, driver, io, beating).await;
            continue;
        }
        if !driver.listening().await {
            store.mark_unhealthy("the Socket.IO adapter's pub/sub connection is down");
            continue;
        }
        if let Ok(departed) = store.reap_dead_nodes().await {
            Relay::new(io.clone(), true).announce_departures(departed).await;
        }
    }
}

/// After Redis was lost, the node serves events again only once Redis
/// answers, the adapter hears the other nodes again (else emits between
/// nodes would be lost), and a lapsed heartbeat has been dealt with (else
/// clients that join now would be cut off later).
async fn recover<A: Adapter>(
    store: &RedisStore,
    driver: &ManagedDriver,
    io: &SocketIo<A>,
    beating: &Mutex<()>,
) {
    if driver.listening().await && beat(store, io, beating).await.is_ok() {
        store.mark_recovered();
        reconcile(store, io).await;
    }
}

/// A socket that closed while Redis was out of reach could not record its
/// departure: its member would keep a seat (and a dead socket) until the
/// session expires. After a recovery, every member Redis holds for this
/// node whose socket is gone leaves, announced as any departure.
async fn reconcile<A: Adapter>(store: &RedisStore, io: &SocketIo<A>) {
    let Ok(members) = store.own_members().await else {
        return;
    };
    let mut departed = Vec::new();
    for (session, user, conn) in members {
        if Relay::new(io.clone(), true).local_socket(&conn).is_some() {
            continue;
        }
        if let Ok(left) = store.reconcile_leave(&session, &user, &conn).await {
            departed.push(Departures {
                session,
                members: vec![(user, left.display_name, conn)],
                remaining_keys: Some(left.public_keys),
            });
        }
    }
    if !departed.is_empty() {
        tracing::warn!(
            members = departed.len(),
            "removed members whose sockets closed while Redis was lost"
        );
        Relay::new(io.clone(), true).announce_departures(departed).await;
    }
}

/// Writes the heartbeat. When it had lapsed, Redis lost this node's members
/// (restarted empty) or the others removed them (Redis was out of reach for
/// longer than `NODE_TIMEOUT_SECS`): its sockets would go on as members of
/// nothing, so they are cut off, and the clients reconnect and join again.
/// One beat at a time (`beating`): two at once could both find it lapsed
/// and cut off clients that had already come back.
async fn beat<A: Adapter>(
    store: &RedisStore,
    io: &SocketIo<A>,
    beating: &Mutex<()>,
) -> Result<(), Unavailable> {
    let _one = beating.lock().await;
    if store.heartbeat().await? {
        return Ok(());
    }
    let sockets = io.sockets();
    tracing::error!(
        node = store.node_id(),
        sockets = sockets.len(),
        "this node's heartbeat had lapsed: reconnecting its clients so that they join again"
    );
    for socket in &sockets {
        crate::metrics::forced_disconnect("heartbeat_lapsed");
        cut_off(socket);
    }
    Ok(())
}
