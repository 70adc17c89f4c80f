//! A join with the user id of a member whose seat is held by another socket
//! (docs/PROTOCOL.md, "One member, one socket"). The store refuses it
//! (`MemberConnected`) unless the caller names that socket as gone; here
//! the worker finds out whether it is:
//!
//! - not connected (anywhere): gone, the join takes the seat;
//! - on this node and heard from since the join arrived (any bytes on its
//!   WebSocket, a polling POST) and still connected half a second later
//!   (what was heard was not a goodbye): it answers, the join is refused;
//! - on this node and silent for `PING_INTERVAL_MS` + [`SILENCE_GRACE`]: it
//!   did not answer the engine's last ping, so it is cut off (its client
//!   lost the connection) and the join takes the seat;
//! - on another node: it is watched until it is gone, at most as long as
//!   the heartbeat takes to close a socket that stopped answering
//!   (`PING_INTERVAL_MS` + `PING_TIMEOUT_MS`, plus a second); still there
//!   then, it answers.
//!
//! So a live member is never replaced, and a reload or reconnect (whose old
//! socket usually closed already) waits at most one ping interval and a
//! little on this node, one heartbeat timeout across nodes.

use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use tokio::time::{sleep, Instant};

use super::relay::{self, Relay};
use crate::domain::ConnId;

/// How long past a ping interval a silent socket is still given.
pub const SILENCE_GRACE: Duration = Duration::from_secs(2);
/// How long a holder that was heard from must stay connected to count as
/// answering (a closing connection is heard from too).
const GOODBYE_SETTLE: Duration = Duration::from_millis(500);
/// How often a socket of this node is looked at.
const LOCAL_POLL: Duration = Duration::from_millis(100);
/// How often another node is asked about its socket.
const REMOTE_POLL: Duration = Duration::from_secs(1);

/// What became of the socket holding a member's seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Closed, or cut off for its silence: the seat may be taken.
    Gone,
    /// Connected and answering: the seat stays where it is.
    Answering,
}

/// The timings of a check: the heartbeat's.
pub struct Patience {
    pub ping_interval: Duration,
    /// `PING_INTERVAL_MS` + `PING_TIMEOUT_MS`.
    pub heartbeat_timeout: Duration,
}

/// Finds out whether `holder` (a member's current socket) is gone, for a
/// join from `joiner`. Gives up (as [`Holder::Answering`]) when the joiner
/// itself disconnects meanwhile.
pub async fn check<A: Adapter>(
    relay: &Relay<A>,
    joiner: &SocketRef<A>,
    holder: &ConnId,
    patience: &Patience,
) -> Holder {
    let asked = Instant::now();
    if let Some(socket) = relay.local_socket(holder) {
        return check_local(
            joiner,
            socket,
            asked,
            asked + patience.ping_interval + SILENCE_GRACE,
        )
        .await;
    }
    if !relay.is_cluster() {
        return Holder::Gone;
    }
    let deadline = asked + patience.heartbeat_timeout + Duration::from_secs(1);
    loop {
        if !relay.connected_anywhere(holder).await {
            return Holder::Gone;
        }
        if Instant::now() >= deadline || !joiner.connected() {
            return Holder::Answering;
        }
        sleep(REMOTE_POLL).await;
    }
}

async fn check_local<A: Adapter>(
    joiner: &SocketRef<A>,
    holder: SocketRef<A>,
    asked: Instant,
    silent_at: Instant,
) -> Holder {
    // What was heard may be the holder's goodbye (a reload's close frame):
    // it answers only if it is still connected a moment later.
    let mut answered_at: Option<Instant> = None;
    loop {
        if !holder.connected() {
            return Holder::Gone;
        }
        if answered_at.is_some_and(|at| at.elapsed() >= GOODBYE_SETTLE) || !joiner.connected() {
            return Holder::Answering;
        }
        if answered_at.is_none() && relay::heard_since(&holder, asked) {
            answered_at = Some(Instant::now());
            sleep(LOCAL_POLL).await;
            continue;
        }
        if Instant::now() >= silent_at {
            tracing::info!(sid = %holder.id, "a member's socket did not answer for a ping interval while another joined as it: cut off");
            crate::metrics::forced_disconnect("silent");
            relay::cut_off(&holder);
            return Holder::Gone;
        }
        sleep(LOCAL_POLL).await;
    }
}
