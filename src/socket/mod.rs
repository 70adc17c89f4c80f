//! The Socket.IO side: socketioxide set-up, rooms, and per-socket workers.
//!
//! A socket joins the room of the session it joined (`s:<sessionId>`); "to
//! one member's socket" looks the socket up by its id.

pub mod payloads;
pub mod queue;
pub mod worker;

use std::sync::Arc;

use engineioxide::service::NotFoundService;
use socketioxide::extract::{SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::service::SocketIoService;
use socketioxide::SocketIo;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::config::{Config, OriginalContent};
use crate::domain::{ConnId, SessionId, Store};
use crate::http::killable::Kill;
use crate::http::serve::ClientIp;
use crate::limits::{IpCounter, Rate};
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

/// The room of a session's members.
pub fn session_room(id: &SessionId) -> String {
    format!("s:{id}")
}

/// Cuts a socket off for good: out of the namespace (when its buffer has
/// room for the disconnect packet) and its connection closed, so that a
/// flooder or a reader that stopped reading is really gone. The engine then
/// closes the socket and its departure is handled as any other.
pub fn cut_off<A: socketioxide::adapter::Adapter>(socket: &SocketRef<A>) {
    let kill = socket.req_parts().extensions.get::<Kill>().cloned();
    let _ = socket.clone().disconnect();
    if let Some(kill) = kill {
        kill.kill();
    }
}

/// The socket of `conn`, when it is connected to this server.
pub fn local_socket(io: &SocketIo, conn: &ConnId) -> Option<SocketRef> {
    io.get_socket(conn.as_str().parse().ok()?)
}

/// Builds the socketioxide service with the contract's Engine.IO settings.
pub fn service(config: &Config, app: App) -> (SocketIoService<NotFoundService>, SocketIo) {
    let max = config.max_payload_bytes;
    let (service, io) = SocketIo::builder()
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
        .build_svc();
    io.ns("/", on_connect.with(register_handlers));
    (service, io)
}

/// Nothing to do once connected: everything was set up by the middleware.
async fn on_connect() {}

/// Registers the event handlers and starts the socket's worker.
///
/// This runs as a connect *middleware*, before the client is told it is
/// connected, so no event can arrive before its handler exists
/// (SOCKETIOXIDE-NOTES.md, point 11).
async fn register_handlers(
    socket: SocketRef,
    io: SocketIo,
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
