//! The Socket.IO side: socketioxide set-up, rooms, and per-socket workers.
//!
//! A socket joins the room of the session it joined (`s:<sessionId>`). "To
//! one member's socket" looks the socket up by its id on this node; in a
//! cluster, where it may be connected to another node, every socket is also
//! in a room of its own (`c:<socket id>`) that the Redis adapter reaches on
//! every node. Everything here is generic over the adapter: the local one
//! for a single node, [`ClusterAdapter`] over Redis.

pub mod payloads;
pub mod queue;
pub mod worker;

use std::sync::Arc;

use socketioxide::adapter::{Adapter, Emitter};
use socketioxide::extract::{SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::operators::BroadcastOperators;
use socketioxide::BroadcastError;
use socketioxide::{SocketIo, SocketIoBuilder, TransportType};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::config::{Config, OriginalContent};
use crate::domain::store::{Departures, Expired};
use crate::domain::{ConnId, JoinError, SessionId, Store};
use crate::http::killable::Kill;
use crate::http::serve::ClientIp;
use crate::limits::{IpCounter, Rate};
use crate::redis::driver::ManagedDriver;
use queue::{Command, Dispatch, QUEUE_CAPACITY};
use worker::Worker;

/// Packets one socket may have waiting to be written. A long-polling client
/// collects everything sent between two polls, so this must hold a pasted
/// burst of a few hundred messages; a socket that still overflows it is a
/// slow consumer and is disconnected.
const OUTGOING_BUFFER_PACKETS: usize = 1024;

/// Initial read buffer of each WebSocket.
const WS_READ_BUFFER_BYTES: usize = 1024;

/// What every socket handler shares.
#[derive(Clone)]
pub struct App {
    pub store: Store,
    /// Whether other nodes share the store: sessions span nodes.
    pub cluster: bool,
    pub original_content: OriginalContent,
    /// The per-socket workers, awaited on shutdown.
    pub workers: TaskTracker,
    /// Open sockets per client IP.
    pub sockets_per_ip: Arc<IpCounter>,
    pub max_sockets_per_ip: usize,
    /// Open sockets in all.
    pub max_sockets: usize,
    pub rates: EventRates,
    /// See [`Config::test_panic_event`].
    pub test_panic_event: Option<Arc<str>>,
}

/// Per-socket rates of the events that are rate limited.
#[derive(Debug, Clone, Copy)]
pub struct EventRates {
    pub send: Rate,
    pub join: Rate,
    pub typing: Rate,
    pub keys: Rate,
}

impl App {
    pub fn new(config: &Config, store: Store, workers: TaskTracker) -> Self {
        let per_min = |n: u32| {
            if n == 0 {
                Rate::UNLIMITED
            } else {
                Rate::per_minute(n)
            }
        };
        let send = match config.send_rate_per_socket {
            0 => Rate::UNLIMITED,
            n => Rate {
                per_sec: f64::from(n),
                burst: f64::from(config.send_burst_per_socket),
            },
        };
        Self {
            cluster: store.is_shared(),
            store,
            original_content: config.original_content,
            workers,
            sockets_per_ip: Arc::default(),
            max_sockets_per_ip: config.max_sockets_per_ip,
            max_sockets: config.max_connections,
            rates: EventRates {
                send,
                join: per_min(config.join_rate_per_min),
                typing: per_min(config.typing_rate_per_min),
                keys: per_min(config.key_rate_per_min),
            },
            test_panic_event: config.test_panic_event.as_deref().map(Into::into),
        }
    }
}

/// The Socket.IO adapter of a cluster: socketioxide-redis over a driver
/// that reconnects.
pub type ClusterAdapter = socketioxide_redis::CustomRedisAdapter<Emitter, ManagedDriver>;

/// The room of a session's members.
pub fn session_room(id: &SessionId) -> String {
    format!("s:{id}")
}

/// The room of one socket, in a cluster.
pub fn conn_room(conn: &ConnId) -> String {
    format!("c:{conn}")
}

/// Cuts a socket off for good, so that a flooder or a reader that stopped
/// reading is really gone. A WebSocket's connection is made to fail: the
/// engine closes the session and its departure is handled as any other, and
/// the client sees a lost connection (the stock client reconnects, joins
/// again and gets the history). A polling session is also taken out of the
/// namespace (when its buffer has room for the disconnect packet), as its
/// later requests come on other connections.
pub fn cut_off<A: socketioxide::adapter::Adapter>(socket: &SocketRef<A>) {
    let kill = socket.req_parts().extensions.get::<Kill>().cloned();
    if socket.transport_type() != TransportType::Websocket {
        let _ = socket.clone().disconnect();
    }
    if let Some(kill) = kill {
        kill.kill();
    }
}

/// The socket of `conn`, when it is connected to this node.
pub fn local_socket<A: Adapter>(io: &SocketIo<A>, conn: &ConnId) -> Option<SocketRef<A>> {
    io.get_socket(conn.as_str().parse().ok()?)
}

/// Emits to one socket, on this node or (in a cluster) any other.
pub async fn emit_to_conn<A: Adapter, T: serde::Serialize + ?Sized>(
    io: &SocketIo<A>,
    cluster: bool,
    conn: &ConnId,
    event: &str,
    data: &T,
) {
    if let Some(socket) = local_socket(io, conn) {
        let _ = socket.emit(event, data);
    } else if cluster {
        if let Err(e) = io.to(conn_room(conn)).emit(event, data).await {
            tracing::debug!(event, error = %e, "emit to a remote socket failed");
        }
    }
}

/// Emits through `operator` on every node. socketioxide-redis publishes
/// first and skips this node's sockets when the publish fails (Redis lost
/// between the store call and the emit); they get it anyway.
pub async fn broadcast<A: Adapter, T: serde::Serialize + ?Sized>(
    operator: BroadcastOperators<A>,
    event: &str,
    data: &T,
) -> Result<(), BroadcastError> {
    match operator.clone().emit(event, data).await {
        Err(BroadcastError::Adapter(e)) => {
            tracing::warn!(event, error = %e, "room emit not published to the other nodes; sent on this node only");
            crate::metrics::cross_node_emit_failed();
            operator.local().emit(event, data).await
        }
        sent => sent,
    }
}

/// Takes a socket, on this node or (in a cluster) any other, out of a room.
pub async fn leave_room<A: Adapter>(io: &SocketIo<A>, cluster: bool, conn: &ConnId, room: String) {
    if let Some(socket) = local_socket(io, conn) {
        socket.leave(room);
    } else if cluster {
        if let Err(e) = io.to(conn_room(conn)).leave(room).await {
            tracing::debug!(error = %e, "taking a remote socket out of a room failed");
        }
    }
}

/// Announces members removed at once (at shutdown, or when their node
/// died): `user-left` for each to the rest of the room, then the keys that
/// remain.
pub async fn announce_departures<A: Adapter>(io: &SocketIo<A>, all: Vec<Departures>) {
    let timestamp = crate::domain::epoch_ms();
    for departures in all {
        let room = session_room(&departures.session);
        for (user, display_name, conn) in &departures.members {
            let mut notice = serde_json::json!({ "userId": user, "timestamp": timestamp });
            if let Some(name) = display_name {
                notice["displayName"] = name.as_ref().into();
            }
            let to_others = match local_socket(io, conn) {
                Some(member) => member.to(room.clone()),
                None => io.to(room.clone()),
            };
            let _ = broadcast(to_others, "user-left", &notice).await;
        }
        if let Some(keys) = &departures.remaining_keys {
            let _ = broadcast(io.to(room.clone()), "public-keys-updated", keys).await;
        }
    }
}

/// Tells the members of evicted sessions `SESSION_EXPIRED` (wherever they
/// are connected) and takes them out of the session's room.
pub async fn announce_expired<A: Adapter>(io: &SocketIo<A>, cluster: bool, expired: Vec<Expired>) {
    let error = JoinError::SessionExpired;
    let notice = serde_json::json!({ "error": error.code(), "message": error.to_string() });
    for session in expired {
        tracing::info!(session = %session.session.log_tag(), "session expired with members connected");
        let room = session_room(&session.session);
        for conn in &session.conns {
            emit_to_conn(io, cluster, conn, "session-error", &notice).await;
            leave_room(io, cluster, conn, room.clone()).await;
        }
    }
}

/// The socketioxide builder with the contract's Engine.IO settings; the
/// caller picks the adapter, builds, and registers [`connect_handler`] on `/`.
pub fn builder(config: &Config, app: App) -> SocketIoBuilder {
    let max = config.max_payload_bytes;
    SocketIo::builder()
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        // Polling bodies...
        .max_payload(max)
        // ...and WebSocket messages and frames: refused from the frame header
        // on, never buffered whole (SOCKETIOXIDE-NOTES.md, point 3).
        .ws_max_message_size(max as usize)
        .ws_max_frame_size(max as usize)
        .max_buffer_size(OUTGOING_BUFFER_PACKETS)
        // Allocated per WebSocket for its whole life; larger messages grow it
        // while they are read (SOCKETIOXIDE-NOTES.md, point 4).
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .with_state(app)
}

/// The namespace's connect handler with its middleware.
pub fn connect_handler<A: Adapter>() -> impl ConnectHandler<A, ()> {
    on_connect.with(register_handlers::<A>)
}

/// Nothing to do once connected: everything was set up by the middleware.
async fn on_connect() {}

/// Registers the event handlers and starts the socket's worker.
///
/// This runs as a connect *middleware*, before the client is told it is
/// connected, so no event can arrive before its handler exists
/// (SOCKETIOXIDE-NOTES.md, point 11).
async fn register_handlers<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(app): State<App>,
) -> Result<(), &'static str> {
    let ip = socket.req_parts().extensions.get::<ClientIp>().map(|ip| ip.0);
    if let Some(ip) = ip {
        if app.sockets_per_ip.total() >= app.max_sockets {
            tracing::warn!("refused a socket: MAX_CONNECTIONS sockets are open");
            return Err("Server full");
        }
        if !app.sockets_per_ip.try_add(ip, app.max_sockets_per_ip) {
            tracing::info!(%ip, "refused a socket: MAX_SOCKETS_PER_IP reached");
            return Err("Too many connections from this address");
        }
    }
    if app.cluster {
        socket.join(conn_room(&ConnId::new(socket.id.to_string())));
    }
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    socket.on_fallback(Dispatch { tx: tx.clone() });
    socket.on_disconnect(move || async move {
        // Waits for room in the queue: the disconnect is handled after every
        // event that arrived before it.
        let _ = tx.send(Command::Disconnect).await;
    });
    let worker = Worker::new(socket, io, app.clone());
    let workers = app.workers.clone();
    workers.spawn(async move {
        worker.run(rx).await;
        if let Some(ip) = ip {
            app.sockets_per_ip.remove(ip);
        }
    });
    Ok(())
}
