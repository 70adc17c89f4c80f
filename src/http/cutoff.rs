//! The HTTP side of one Socket.IO session: its hold on its connections
//! (to cut it off, or wind it down), its [`Outbox`], and whether one of its
//! polling POSTs is being read.
//!
//! socketioxide's `disconnect()` only takes a socket out of its namespace:
//! the Engine.IO connection stays open, and the call is refused outright
//! while the socket's outgoing buffer is full. To really cut off a flooder
//! or a reader that stopped reading, every connection has a
//! [`ConnectionSwitch`], and every new Socket.IO session gets a [`CutOff`]
//! (a request extension of its handshake request, which the engine keeps
//! for the session's whole life, so a socket reaches it through
//! `socket.req_parts().extensions`). Cutting it off makes the session's
//! connection fail, the engine closes the socket, and its departure is
//! handled as any other.
//!
//! **Upgrades.** A session that starts with long-polling and then upgrades
//! lives on another connection, its WebSocket. The request router records
//! a connection as the session's WebSocket only once the engine has
//! answered its upgrade request `101 Switching Protocols`: a request the
//! engine refuses (no `Sec-WebSocket-Key`, a wrong method, an unknown
//! session) never is, and neither is one that cannot be upgraded (HTTP/1.0,
//! HTTP/2), so no such request can take the place of the real WebSocket.
//! Which connection answered 101 becomes the WebSocket is decided later by
//! the engine (the one that completes the `2probe`/`3probe`/`5` exchange),
//! where the HTTP layer cannot see it; so every one is recorded, and
//! cutting off or winding down the session acts on all of them. That is
//! always right: hyper hands a connection answered 101 over to the engine
//! (it never carries another request), the engine makes it the session's
//! WebSocket or closes it (an attempt that fails the exchange closes the
//! session too), closed ones are dropped from the list, and only the holder
//! of the session's `sid` can make them. At most [`MAX_WEBSOCKET_ATTEMPTS`]
//! open ones are kept; further upgrade requests are refused before they
//! reach the engine. (Recording only the first one, as before, let any
//! earlier request carrying the `sid` and an `Upgrade` header take the
//! place of the real WebSocket, which then could not be cut off.)
//!
//! At shutdown a WebSocket is wound down rather than cut off
//! ([`CutOff::finish`]): once what was queued for it (the Socket.IO
//! disconnect) has been written, its connection is closed gracefully.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::conn::ConnectionSwitch;
use super::outbox::Outbox;

/// A connection being wound down has written everything queued for it once
/// it wrote after the wind-down began and then nothing for this long.
const WRITES_SETTLED: Duration = Duration::from_millis(50);
/// How long a wind-down waits for those writes at most (a peer that stopped
/// reading never takes them).
const WRITES_PATIENCE: Duration = Duration::from_millis(800);
/// Open connections answered 101 for one session at once. A client makes
/// one; a second may overlap while a failed first one is being closed.
pub const MAX_WEBSOCKET_ATTEMPTS: usize = 4;

/// The HTTP side of one Socket.IO session; cheap to clone.
#[derive(Clone)]
pub struct CutOff {
    /// The connection of the session's handshake request: its WebSocket,
    /// unless it started with long-polling.
    conn: ConnectionSwitch,
    session: Arc<SessionLink>,
}

struct SessionLink {
    outbox: Arc<Outbox>,
    /// The connections answered 101 for this session (see the module doc).
    websockets: Mutex<Vec<ConnectionSwitch>>,
    /// One of its polling POSTs is being read.
    posting: AtomicBool,
}

impl CutOff {
    /// The session started by a handshake request that came on `conn`.
    pub fn new(conn: &ConnectionSwitch) -> Self {
        Self {
            conn: conn.clone(),
            session: Arc::new(SessionLink {
                outbox: Arc::default(),
                websockets: Mutex::default(),
                posting: AtomicBool::new(false),
            }),
        }
    }

    /// The bytes queued for this session and not yet written.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.session.outbox
    }

    /// The connections the session uses now: those answered 101 for it, or,
    /// when there are none, its handshake connection.
    fn current(&self) -> Vec<ConnectionSwitch> {
        let websockets = self.websockets();
        if websockets.is_empty() {
            vec![self.conn.clone()]
        } else {
            websockets.clone()
        }
    }

    /// The list of connections answered 101, pruned of closed ones.
    fn websockets(&self) -> std::sync::MutexGuard<'_, Vec<ConnectionSwitch>> {
        let mut websockets = self.session.websockets.lock().unwrap_or_else(|e| e.into_inner());
        websockets.retain(|c| !c.is_closed());
        websockets
    }

    /// Makes every later read and write of the session's connection(s) fail.
    pub fn cut(&self) {
        for conn in self.current() {
            conn.kill();
        }
    }

    /// Whether another upgrade request of this session may reach the engine.
    pub(super) fn may_upgrade(&self) -> bool {
        self.websockets().len() < MAX_WEBSOCKET_ATTEMPTS
    }

    /// Records that the engine answered an upgrade request of this session,
    /// which came on `conn`, with 101: `conn` is about to become its
    /// WebSocket, or to close.
    pub(super) fn upgrading_on(&self, conn: &ConnectionSwitch) {
        conn.carries(&self.session.outbox);
        if conn.same_as(&self.conn) {
            return; // a fresh WebSocket: its handshake connection already is
        }
        self.websockets().push(conn.clone());
    }

    /// Marks a polling POST of this session as being read, unless one
    /// already is (Engine.IO clients never send two at once); the mark is
    /// cleared when the returned guard is dropped.
    pub(super) fn start_post(&self) -> Option<Posting> {
        self.session
            .posting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Posting(self.session.clone()))
    }

    /// Winds down a WebSocket session whose last packets were queued after
    /// `queued_since`: waits until they are written (at most
    /// [`WRITES_PATIENCE`]), then closes the connection gracefully.
    /// Resolves once it is closed.
    pub fn finish(&self, queued_since: Instant) -> impl Future<Output = ()> + Send + 'static {
        let conns = self.current();
        async move {
            join_all(conns.into_iter().map(|conn| finish_one(conn, queued_since))).await;
        }
    }
}

async fn finish_one(conn: ConnectionSwitch, queued_since: Instant) {
    let deadline = tokio::time::Instant::now() + WRITES_PATIENCE;
    while !conn.writes_settled(queued_since, WRITES_SETTLED) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(WRITES_SETTLED / 5).await;
    }
    // The engine sees the failure and ends the session; the stream is
    // dropped, and closed gracefully.
    conn.kill_gracefully();
    conn.closed().await;
}

/// A polling POST of one session being read (see [`CutOff::start_post`]).
pub struct Posting(Arc<SessionLink>);

impl Drop for Posting {
    fn drop(&mut self) {
        self.0.posting.store(false, Ordering::Release);
    }
}
