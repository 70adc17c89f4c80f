//! How events reach their recipients, on this node or (in a cluster) any
//! other: the delivery strategy, emits to one member's socket, rooms, and
//! the announcements of departures and expiry.
//!
//! A socket joins the room of the session it joined (`s:<sessionId>`). "To
//! one member's socket" looks the socket up by its id on this node; in a
//! cluster, where it may be connected to another node, every socket is also
//! in a room of its own (`c:<socket id>`) that the Redis adapter reaches on
//! every node (docs/PROTOCOL.md, "Facts about the stack", point 5).

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::{BroadcastError, SendError, SocketError, SocketIo, TransportType};

use super::events::outgoing;
use crate::domain::{epoch_ms, ConnId, JoinError, SessionId, UserId};
use crate::http::cutoff::CutOff;
use crate::http::outbox::Outbox;
use crate::metrics;
use crate::store::{Departures, Expired};

/// Payloads at least this large are encoded once and shared by a room
/// broadcast, whatever the room's size: copying them per recipient would
/// cost more memory than a slow consumer can.
const SHARED_ENCODING_MIN_BYTES: usize = 64 * 1024;

/// Rooms of up to this many recipients get each message socket by socket
/// (a slow consumer is noticed and disconnected at once); larger rooms get
/// one shared encoding, which costs far less per recipient.
const PER_RECIPIENT_MAX: usize = 8;

/// What the name of every session's room starts with.
pub const SESSION_ROOM_PREFIX: &str = "s:";

/// The room of a session's members.
pub fn session_room(id: &SessionId) -> String {
    format!("{SESSION_ROOM_PREFIX}{id}")
}

/// Pauses before each new try of a cross-node room leave that failed.
const LEAVE_RETRY_PAUSES: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(500),
    std::time::Duration::from_secs(2),
];

/// The room of one socket, in a cluster.
pub fn conn_room(conn: &ConnId) -> String {
    format!("c:{conn}")
}

/// Who an emit goes to.
pub enum Target<'a, A: Adapter> {
    /// Every socket in the room, the sender's included.
    Room(&'a str),
    /// Every socket in the room but `sender`.
    Others { sender: &'a SocketRef<A>, room: &'a str },
    /// One socket, wherever it is connected.
    Conn(&'a ConnId),
}

/// `user-joined`, `user-left`, `user-typing` and `user-stopped-typing`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserEvent<'a> {
    pub user_id: &'a UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

/// The sending side of the Socket.IO server: `io` and whether sessions span
/// nodes (then every room emit goes through the adapter).
pub struct Relay<A: Adapter> {
    io: SocketIo<A>,
    cluster: bool,
    /// Bytes a recipient on this node may have waiting to be written before
    /// it is cut off as a slow consumer (`MAX_BUFFERED_BYTES_PER_SOCKET`).
    max_buffered: usize,
}

// Not derived: the adapter type itself need not be `Clone`.
impl<A: Adapter> Clone for Relay<A> {
    fn clone(&self) -> Self {
        Self {
            io: self.io.clone(),
            cluster: self.cluster,
            max_buffered: self.max_buffered,
        }
    }
}

impl<A: Adapter> Relay<A> {
    /// A relay that never cuts a recipient off for its buffered bytes (for
    /// the server's own small announcements); see [`Relay::bounded`].
    pub fn new(io: SocketIo<A>, cluster: bool) -> Self {
        Self {
            io,
            cluster,
            max_buffered: usize::MAX,
        }
    }

    /// A relay that cuts off any recipient on this node with more than
    /// `max_buffered` bytes waiting to be written.
    pub fn bounded(io: SocketIo<A>, cluster: bool, max_buffered: usize) -> Self {
        Self {
            io,
            cluster,
            max_buffered,
        }
    }

    pub fn io(&self) -> &SocketIo<A> {
        &self.io
    }

    /// Whether sessions span nodes.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Whether `conn` is connected to any node (asked of every node in a
    /// cluster; an unanswered question counts as connected).
    pub async fn connected_anywhere(&self, conn: &ConnId) -> bool {
        if self.local_socket(conn).is_some() {
            return true;
        }
        if !self.cluster {
            return false;
        }
        match self.io.to(conn_room(conn)).fetch_sockets().await {
            Ok(sockets) => !sockets.is_empty(),
            Err(e) => {
                tracing::debug!(error = %e, "could not ask the other nodes about a socket");
                true
            }
        }
    }

    /// The socket of `conn`, when it is connected to this node.
    pub fn local_socket(&self, conn: &ConnId) -> Option<SocketRef<A>> {
        self.io.get_socket(conn.as_str().parse().ok()?)
    }

    /// Serializes `data` once and sends it to `target`; returns the number
    /// of recipients on this node. Small rooms get it socket by socket, so
    /// that a recipient whose outgoing buffer is full is noticed and cut
    /// off; large rooms and large payloads get one shared encoding by a room
    /// broadcast (see [`PER_RECIPIENT_MAX`], [`SHARED_ENCODING_MIN_BYTES`]).
    /// In a cluster every room emit is a broadcast through the adapter
    /// (recipients may be on other nodes).
    pub async fn deliver<T: Serialize + ?Sized>(
        &self,
        target: Target<'_, A>,
        event: &str,
        data: &T,
    ) -> usize {
        let Some(raw) = encode(event, data) else { return 0 };
        let size = raw.get().len();
        let local = match &target {
            Target::Conn(conn) => self.local_socket(conn),
            _ => None,
        };
        let operator = match target {
            Target::Room(room) => Some(self.io.to(room.to_owned())),
            Target::Others { sender, room } => Some(sender.to(room.to_owned())),
            Target::Conn(conn) if local.is_none() && self.cluster => Some(self.io.to(conn_room(conn))),
            Target::Conn(_) => None,
        };
        let recipients: Vec<SocketRef<A>> = match &operator {
            Some(operator) => operator.clone().sockets(),
            None => local.into_iter().collect(),
        };
        metrics::bytes_out(size * recipients.len());
        // Counted before the emit: a recipient past its bound is cut off
        // and the emit to it fails harmlessly. Recipients on other nodes
        // are counted by none (their packet bound still holds).
        let wire = packet_size(event, size);
        for socket in &recipients {
            queued(socket, event, wire, self.max_buffered);
        }
        let shared =
            self.cluster || size >= SHARED_ENCODING_MIN_BYTES || recipients.len() > PER_RECIPIENT_MAX;
        if let Some(operator) = operator.filter(|_| shared) {
            if let Err(e) = broadcast(operator, event, &*raw).await {
                // The sockets that could not take it are not named; the
                // heartbeat ends them if they have stopped reading.
                tracing::debug!(event, error = %e, "room broadcast not taken by every socket");
                metrics::broadcast_incomplete();
            }
            return recipients.len();
        }
        for socket in &recipients {
            if let Err(e) = socket.emit(event, &*raw) {
                emit_failed(socket, event, e);
            }
        }
        recipients.len()
    }

    /// Emits to `socket` (one of this node's) and returns the bytes queued:
    /// serialized once, counted in the socket's outgoing bytes, and a socket
    /// past this relay's bound is cut off as a slow consumer.
    pub fn to_socket<T: Serialize + ?Sized>(&self, socket: &SocketRef<A>, event: &str, data: &T) -> usize {
        let Some(raw) = encode(event, data) else { return 0 };
        let size = packet_size(event, raw.get().len());
        metrics::bytes_out(raw.get().len());
        match socket.emit(event, &*raw) {
            Ok(()) => queued(socket, event, size, self.max_buffered),
            Err(e) => emit_failed(socket, event, e),
        }
        size
    }

    /// Emits to one socket, on this node or (in a cluster) any other.
    pub async fn emit_to_conn<T: Serialize + ?Sized>(&self, conn: &ConnId, event: &str, data: &T) {
        if let Some(socket) = self.local_socket(conn) {
            let _ = socket.emit(event, data);
        } else if self.cluster {
            if let Err(e) = self.io.to(conn_room(conn)).emit(event, data).await {
                tracing::debug!(event, error = %e, "emit to a remote socket failed");
            }
        }
    }

    /// Takes a socket, on this node or (in a cluster) any other, out of a
    /// room. Across nodes a failed request is tried again a few times: a
    /// socket left in a room it has no business in would hear the session.
    pub async fn leave_room(&self, conn: &ConnId, room: String) {
        if let Some(socket) = self.local_socket(conn) {
            socket.leave(room);
            return;
        }
        if !self.cluster {
            return;
        }
        let pauses = std::iter::once(std::time::Duration::ZERO).chain(LEAVE_RETRY_PAUSES);
        for (attempt, pause) in pauses.enumerate() {
            tokio::time::sleep(pause).await;
            match self.io.to(conn_room(conn)).leave(room.clone()).await {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, attempt, "taking a remote socket out of a room failed"),
            }
        }
        tracing::warn!(sid = %conn, "a socket on another node could not be taken out of a session room");
        metrics::cross_node_emit_failed();
    }

    /// Announces members removed at once (at shutdown, or when their node
    /// died): `user-left` for each to the rest of the room, then the keys
    /// that remain.
    pub async fn announce_departures(&self, all: Vec<Departures>) {
        let timestamp = epoch_ms();
        for departures in all {
            let room = session_room(&departures.session);
            for (user, display_name, conn) in &departures.members {
                let notice = UserEvent {
                    user_id: user,
                    display_name: display_name.as_deref(),
                    timestamp: Some(timestamp),
                };
                let to_others = match self.local_socket(conn) {
                    Some(member) => member.to(room.clone()),
                    None => self.io.to(room.clone()),
                };
                let _ = broadcast(to_others, outgoing::USER_LEFT, &notice).await;
            }
            if let Some(keys) = &departures.remaining_keys {
                let _ = broadcast(self.io.to(room.clone()), outgoing::PUBLIC_KEYS_UPDATED, keys).await;
            }
        }
    }

    /// Tells the members of evicted sessions `SESSION_EXPIRED` (wherever they
    /// are connected) and takes them out of the session's room.
    pub async fn announce_expired(&self, expired: Vec<Expired>) {
        let error = JoinError::SessionExpired;
        let notice = serde_json::json!({ "error": error.code(), "message": error.to_string() });
        for session in expired {
            tracing::info!(session = %session.session.log_tag(), "session expired with members connected");
            let room = session_room(&session.session);
            for conn in &session.conns {
                self.emit_to_conn(conn, outgoing::SESSION_ERROR, &notice).await;
                self.leave_room(conn, room.clone()).await;
            }
        }
    }
}

/// Emits through `operator` on every node. socketioxide-redis publishes
/// first and skips this node's sockets when the publish fails (Redis lost
/// between the store call and the emit); they get it anyway.
pub async fn broadcast<A: Adapter, T: Serialize + ?Sized>(
    operator: BroadcastOperators<A>,
    event: &str,
    data: &T,
) -> Result<(), BroadcastError> {
    match operator.clone().emit(event, data).await {
        Err(BroadcastError::Adapter(e)) => {
            tracing::warn!(event, error = %e, "room emit not published to the other nodes; sent on this node only");
            metrics::cross_node_emit_failed();
            operator.local().emit(event, data).await
        }
        sent => sent,
    }
}

/// Serializes an outgoing payload once.
pub fn encode<T: Serialize + ?Sized>(event: &str, data: &T) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(data)
        .map_err(|e| tracing::error!(event, error = %e, "cannot serialize an event"))
        .ok()
}

/// The bytes an event takes on the wire, at least: `42["<event>",<data>]`
/// (a WebSocket frame adds a header of 2 to 10 bytes, a polling answer a
/// separator). Never more than what is written, so that the credits of
/// what was written bring an outbox back to zero instead of leaving a
/// remainder per packet that would build up over a connection's life.
pub fn packet_size(event: &str, data: usize) -> usize {
    data + event.len() + 7
}

/// The count of bytes waiting to be written to `socket`'s client (kept by
/// the HTTP layer, which credits what it writes; see `crate::http::outbox`).
fn outbox<A: Adapter>(socket: &SocketRef<A>) -> Option<&Outbox> {
    socket
        .req_parts()
        .extensions
        .get::<CutOff>()
        .map(|c| &**c.outbox())
}

/// Whether `socket`'s client was heard from at `since` or later.
pub fn heard_since<A: Adapter>(socket: &SocketRef<A>, since: tokio::time::Instant) -> bool {
    outbox(socket).is_some_and(|o| o.heard_since(since))
}

/// Counts `bytes` queued for `socket`; a socket with more than `max` bytes
/// waiting is not keeping up and is cut off.
pub fn queued<A: Adapter>(socket: &SocketRef<A>, event: &str, bytes: usize, max: usize) {
    let Some(outbox) = outbox(socket) else { return };
    let pending = outbox.queued(bytes);
    if pending > max {
        tracing::warn!(sid = %socket.id, event, pending, "slow consumer: too many bytes waiting to be written, disconnecting");
        metrics::forced_disconnect("slow_consumer");
        cut_off(socket);
    }
}

/// Waits until `socket` has no more than `level` bytes waiting to be
/// written; false when that takes longer than `within`.
pub async fn drained<A: Adapter>(socket: &SocketRef<A>, level: usize, within: std::time::Duration) -> bool {
    match outbox(socket) {
        Some(outbox) => tokio::time::timeout(within, outbox.drained_to(level))
            .await
            .is_ok(),
        None => true,
    }
}

/// A recipient whose outgoing buffer is full is not keeping up: it is cut
/// off (it rejoins and gets the history) rather than silently missing
/// messages or making the server buffer without bound.
pub fn emit_failed<A: Adapter>(socket: &SocketRef<A>, event: &str, e: SendError) {
    match e {
        SendError::Socket(SocketError::InternalChannelFull) => {
            tracing::warn!(sid = %socket.id, event, "slow consumer: outgoing buffer full, disconnecting");
            metrics::forced_disconnect("slow_consumer");
            cut_off(socket);
        }
        e => tracing::debug!(sid = %socket.id, event, error = %e, "emit failed"),
    }
}

/// Cuts a socket off for good, so that a flooder or a reader that stopped
/// reading is really gone. A WebSocket's connection is made to fail: the
/// engine closes the session and its departure is handled as any other, and
/// the client sees a lost connection (the stock client reconnects, joins
/// again and gets the history). A polling session is also taken out of the
/// namespace (when its buffer has room for the disconnect packet), as its
/// later requests come on other connections.
pub fn cut_off<A: Adapter>(socket: &SocketRef<A>) {
    let cutoff = socket.req_parts().extensions.get::<CutOff>().cloned();
    if socket.transport_type() != TransportType::Websocket {
        let _ = socket.clone().disconnect();
    }
    if let Some(cutoff) = cutoff {
        cutoff.cut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_counted_as_the_bytes_of_its_engine_io_message() {
        let data = r#"{"encrypted":"x","id":"m1"}"#;
        let wire = format!(r#"42["{}",{data}]"#, outgoing::NEW_MESSAGE);
        assert_eq!(packet_size(outgoing::NEW_MESSAGE, data.len()), wire.len());
    }
}
