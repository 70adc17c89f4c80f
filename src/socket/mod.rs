//! The Socket.IO side: socketioxide set-up, rooms, and per-socket workers.
//!
//! Each socket joins a room named after its own id (`c:<sid>`) so that "to
//! one member's socket" is a room emit, and the room of the session it
//! joined (`s:<sessionId>`).

pub mod payloads;
pub mod queue;
pub mod worker;

use std::convert::Infallible;

use socketioxide::extract::{SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::SocketIo;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::config::{Config, OriginalContent};
use crate::domain::{ConnId, SessionId, Store};
use queue::{Command, Enqueue, EnqueueUnknown, QUEUE_CAPACITY};
use worker::Worker;

/// What every socket handler shares.
#[derive(Clone)]
pub struct App {
    pub store: Store,
    pub original_content: OriginalContent,
    /// The per-socket workers, awaited on shutdown.
    pub workers: TaskTracker,
}

/// The room of a session's members.
pub fn session_room(id: &SessionId) -> String {
    format!("s:{id}")
}

/// The room holding exactly one socket.
pub fn conn_room(conn: &ConnId) -> String {
    format!("c:{conn}")
}

/// Builds the socketioxide layer with the contract's Engine.IO settings.
pub fn layer(config: &Config, app: App) -> (SocketIoLayer, SocketIo) {
    let max = config.max_payload_bytes;
    let (layer, io) = SocketIo::builder()
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        // Polling bodies...
        .max_payload(max)
        // ...and WebSocket messages and frames: refused from the frame header
        // on, never buffered whole (SOCKETIOXIDE-NOTES.md, point 3).
        .ws_max_message_size(max as usize)
        .ws_max_frame_size(max as usize)
        .with_state(app)
        .build_layer();
    io.ns("/", on_connect.with(register_handlers));
    (layer, io)
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
) -> Result<(), Infallible> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    socket.join(conn_room(&ConnId::new(socket.id.to_string())));
    macro_rules! on {
        ($event:literal, $variant:ident) => {
            socket.on(
                $event,
                Enqueue {
                    event: $event,
                    wrap: Command::$variant,
                    tx: tx.clone(),
                },
            );
        };
    }
    on!("join-session", Join);
    on!("send-message", SendMessage);
    on!("get-public-keys", GetPublicKeys);
    on!("save-public-key", SavePublicKey);
    on!("set-session-key", SetSessionKey);
    on!("file-downloaded", FileDownloaded);
    on!("typing", Typing);
    on!("stopped-typing", StoppedTyping);
    on!("leave-session", Leave);
    socket.on_fallback(EnqueueUnknown { tx: tx.clone() });
    socket.on_disconnect(move || async move {
        // Waits for room in the queue: the disconnect is handled after every
        // event that arrived before it.
        let _ = tx.send(Command::Disconnect).await;
    });
    let worker = Worker::new(socket, io, app.clone());
    app.workers.spawn(worker.run(rx));
    Ok(())
}
