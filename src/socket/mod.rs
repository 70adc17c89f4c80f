//! The Socket.IO side: socketioxide set-up and, per socket, its queue and
//! worker. Everything here is generic over the adapter: the local one for a
//! single node, [`ClusterAdapter`] over Redis.
//!
//! - [`queue`]: decodes each packet as it arrives, in order, into a [`queue::Command`].
//! - [`worker`]: one socket's state (binding, rate limits, flood cut-off), run by its mailbox.
//! - [`handlers`]: one method per client event.
//! - [`validate`]: payloads ([`payloads`]) to store requests, pure.
//! - [`relay`]: who gets what, on this node or any other.
//! - [`events`]: every event name.

pub mod events;
mod handlers;
pub mod payloads;
pub mod queue;
pub mod relay;
pub mod replay;
mod takeover;
pub mod validate;
pub mod worker;

use std::sync::Arc;

use socketioxide::adapter::{Adapter, Emitter};
use socketioxide::extract::{SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::{ParserConfig, SocketIo, SocketIoBuilder};
use tokio_util::task::TaskTracker;

use crate::config::{Config, OriginalContent};
use crate::domain::ConnId;
use crate::http::serve::ClientIp;
use crate::limits::{IpCounter, IpLimiter, Rate};
use crate::quota::{FailureBudget, SessionQuota};
use crate::store::redis::driver::ManagedDriver;
use crate::store::Store;
use queue::{Command, Dispatch, Mailbox};
use relay::{conn_room, Relay};
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
    /// `MAX_CONNECTIONS`: open sockets in all.
    pub max_connections: usize,
    pub rates: EventRates,
    /// What creating a session costs its client's address, by reservation
    /// or by a creator's join alike.
    pub creations: Creations,
    /// `MAX_BUFFERED_BYTES_PER_SOCKET`.
    pub max_buffered_bytes: usize,
    /// `HISTORY_REPLAY_BYTES_PER_MIN`.
    pub history_replay_per_min: usize,
    /// How long a socket may take to write what is queued for it before it
    /// is a slow consumer: the heartbeat's own patience
    /// (`PING_INTERVAL_MS` + `PING_TIMEOUT_MS`).
    pub stall_timeout: std::time::Duration,
    /// `PING_INTERVAL_MS`: a live client is heard from at least this often.
    pub ping_interval: std::time::Duration,
    /// See [`Config::test_panic_event`].
    #[cfg(feature = "test-hooks")]
    pub test_panic_event: Option<Arc<str>>,
}

/// The per-address limits of session creation (`RESERVE_RATE_PER_IP`,
/// `MAX_SESSIONS_PER_IP`), shared with the reservation endpoint, and of
/// wrong keys and passwords (`AUTH_FAILURES_PER_IP_PER_MIN`).
#[derive(Clone)]
pub struct Creations {
    pub rate: Arc<IpLimiter>,
    pub quota: Arc<SessionQuota>,
    pub failures: Arc<FailureBudget>,
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
    pub fn new(config: &Config, store: Store, workers: TaskTracker, creations: Creations) -> Self {
        let per_min = Rate::per_minute_or_unlimited;
        let send = Rate::per_second_or_unlimited(config.send_rate_per_socket, config.send_burst_per_socket);
        Self {
            cluster: store.is_shared(),
            store,
            original_content: config.original_content,
            workers,
            sockets_per_ip: Arc::default(),
            max_sockets_per_ip: config.max_sockets_per_ip,
            max_connections: config.max_connections,
            rates: EventRates {
                send,
                join: per_min(config.join_rate_per_min),
                typing: per_min(config.typing_rate_per_min),
                keys: per_min(config.key_rate_per_min),
            },
            creations,
            max_buffered_bytes: config.max_buffered_bytes_per_socket,
            history_replay_per_min: config.history_replay_bytes_per_min,
            stall_timeout: config.ping_interval + config.ping_timeout,
            ping_interval: config.ping_interval,
            #[cfg(feature = "test-hooks")]
            test_panic_event: config.test_panic_event.as_deref().map(Into::into),
        }
    }
}

/// The Socket.IO adapter of a cluster: socketioxide-redis over a driver
/// that reconnects.
pub type ClusterAdapter = socketioxide_redis::CustomRedisAdapter<Emitter, ManagedDriver>;

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
        // on, never buffered whole (docs/PROTOCOL.md, "Facts about the stack", point 3).
        .ws_max_message_size(max as usize)
        .ws_max_frame_size(max as usize)
        .max_buffer_size(OUTGOING_BUFFER_PACKETS)
        // Allocated per WebSocket for its whole life; larger messages grow it
        // while they are read (docs/PROTOCOL.md, "Facts about the stack", point 4).
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        // No client of the contract sends binary attachments (files travel
        // as base64 inside the ciphertext); socketioxide would otherwise
        // hold up to 10 MB of them per socket while it waits for the rest.
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(0)
                .max_incoming_binary_buf_size(0),
        )
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
/// (docs/PROTOCOL.md, "Facts about the stack", point 11).
async fn register_handlers<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(app): State<App>,
) -> Result<(), &'static str> {
    let ip = socket.req_parts().extensions.get::<ClientIp>().map(|ip| ip.0);
    if let Some(ip) = ip {
        if app.sockets_per_ip.total() >= app.max_connections {
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
    // The worker gives the socket's place in `sockets_per_ip` back when it
    // is dropped.
    let worker = Worker::new(
        socket.clone(),
        Relay::bounded(io, app.cluster, app.max_buffered_bytes),
        app.clone(),
    );
    let mailbox = Mailbox::new(worker, app.workers.clone());
    socket.on_fallback(Dispatch {
        mailbox: mailbox.clone(),
    });
    socket.on_disconnect(move || async move {
        // Always taken, after every event that arrived before it.
        mailbox.push(Command::Disconnect);
    });
    Ok(())
}
