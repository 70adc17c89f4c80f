//! A cluster node's duties towards the others: its heartbeat, and removing
//! the members of nodes that died.
//!
//! Every `NODE_TIMEOUT_SECS / 3` the node refreshes its heartbeat key (it
//! expires after `NODE_TIMEOUT_SECS`) and asks Redis to remove the members
//! of every node whose key has expired. The removal is one script per dead
//! node, so when several survivors try at once only one gets the members
//! back, and each departure is announced exactly once. A dead node is thus
//! noticed within about `NODE_TIMEOUT_SECS × 4/3`.

use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::redis::driver::ManagedDriver;
use crate::redis::RedisStore;
use crate::socket::{announce_departures, cut_off};

/// Registers this node: members left in Redis by an earlier run under the
/// same `NODE_ID` are removed (and their departures announced), then the
/// first heartbeat is written.
pub async fn join<A: Adapter>(store: &RedisStore, io: &SocketIo<A>) -> anyhow::Result<()> {
    let stale = store
        .remove_node_members(None)
        .await
        .map_err(|_| anyhow::anyhow!("Redis (REDIS_URL) stopped answering during start-up"))?;
    if !stale.is_empty() {
        tracing::warn!(
            sessions = stale.len(),
            "removed members left by an earlier run of this NODE_ID"
        );
        announce_departures(io, stale).await;
    }
    store
        .heartbeat()
        .await
        .map_err(|_| anyhow::anyhow!("Redis (REDIS_URL) stopped answering during start-up"))?;
    Ok(())
}

/// Beats and reaps until `stop` is cancelled; keeps the adapter's pub/sub
/// connection alive.
pub async fn run<A: Adapter>(
    store: RedisStore,
    driver: ManagedDriver,
    io: SocketIo<A>,
    stop: CancellationToken,
) {
    let every = store.heartbeat_interval();
    let mut ticks = time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if let Err(e) = driver.ping().await {
            tracing::debug!(error = %e, "pub/sub connection not answering");
        }
        match store.heartbeat().await {
            Ok(true) => {}
            Ok(false) => {
                // Redis lost this node's members (restarted empty) or the
                // others removed them (Redis was out of reach for longer
                // than NODE_TIMEOUT_SECS). Its sockets would go on as
                // members of nothing: cut them off, and the clients
                // reconnect and join again.
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
            }
            // Logged by the store; the next beat tries again.
            Err(_) => continue,
        }
        if let Ok(departed) = store.reap_dead_nodes().await {
            announce_departures(&io, departed).await;
        }
    }
}
