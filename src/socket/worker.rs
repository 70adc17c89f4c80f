//! The state of one socket, and how it handles its events in arrival order
//! (run by its [`super::queue::Mailbox`], no task of its own).
//!
//! The worker owns the socket's state: its binding (the session and user it
//! joined as), its token buckets and its flood count. It takes each
//! [`Command`] from the socket's queue, applies the rate limits, runs the
//! event's handler ([`super::handlers`]) and answers a refusal with the
//! contract's `event-error` or `session-error`, naming the event once, here.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use serde::Serialize;
use serde_json::json;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use tokio::time::Instant;

use super::events::{incoming, internal, outgoing};
use super::queue::Command;
use super::relay::{self, session_room, Relay, SESSION_ROOM_PREFIX};
use super::App;
use crate::domain::{ConnId, EventError, JoinError, SessionId, UserId};
use crate::limits::Bucket;
use crate::metrics;

/// Rate-limited events refused within [`FLOOD_WINDOW`] before the socket is
/// cut off: a client that keeps sending after `RATE_LIMITED` is flooding. (A
/// pasted list of 400 lines is 300 accepted and 100 refused: not cut off.)
const FLOOD_DISCONNECT_AFTER: u32 = 200;
/// The window in which refusals are counted.
const FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// Only a socket stuck half-connected for this long is given up.
const CONNECT_MARK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an event was refused: a join's refusal is a `session-error` (the
/// stock client shows it and leaves), any other an `event-error`.
#[derive(Debug)]
pub enum Refusal {
    Session(JoinError),
    Event(EventError),
}

impl From<EventError> for Refusal {
    fn from(e: EventError) -> Self {
        Self::Event(e)
    }
}

impl From<JoinError> for Refusal {
    fn from(e: JoinError) -> Self {
        Self::Session(e)
    }
}

/// One socket's token buckets, one per rate-limited event family.
struct Buckets {
    send: Bucket,
    join: Bucket,
    typing: Bucket,
    keys: Bucket,
    /// Rate-limited events refused since `window_start`.
    refused: u32,
    window_start: Instant,
}

/// The session and user a socket joined as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Binding {
    pub session: SessionId,
    pub user: UserId,
}

pub struct Worker<A: Adapter> {
    pub(super) socket: SocketRef<A>,
    pub(super) relay: Relay<A>,
    pub(super) app: App,
    pub(super) conn: ConnId,
    pub(super) bound: Option<Binding>,
    /// A join whose answer was lost (`STORE_UNAVAILABLE` after the call
    /// went out): Redis may have applied it, so the member it may have made
    /// leaves with this socket as a bound one would.
    pub(super) maybe_joined: Option<Binding>,
    /// The client's address (absent only for in-process test sockets).
    pub(super) ip: Option<std::net::IpAddr>,
    /// The history replay under way, if any (see [`super::replay`]).
    pub(super) replay: Option<tokio::task::AbortHandle>,
    /// What history this socket may still be sent this minute.
    pub(super) replay_budget: std::sync::Arc<super::replay::ReplayBudget>,
    buckets: Buckets,
    /// socketioxide marked the socket connected (see `wait_until_connected`).
    connected: bool,
}

/// The socket's place in the per-address socket count is given back with
/// its worker: after its disconnect was handled, or with the socket.
impl<A: Adapter> Drop for Worker<A> {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            self.app.sockets_per_ip.remove(ip);
        }
    }
}

impl<A: Adapter> Worker<A> {
    pub fn new(socket: SocketRef<A>, relay: Relay<A>, app: App) -> Self {
        let conn = ConnId::new(socket.id.to_string());
        let ip = socket
            .req_parts()
            .extensions
            .get::<crate::http::serve::ClientIp>()
            .map(|ip| ip.0);
        let rates = app.rates;
        let replay_budget = super::replay::ReplayBudget::new(app.history_replay_per_min);
        let buckets = Buckets {
            send: Bucket::new(rates.send),
            join: Bucket::new(rates.join),
            typing: Bucket::new(rates.typing),
            keys: Bucket::new(rates.keys),
            refused: 0,
            window_start: Instant::now(),
        };
        Self {
            socket,
            relay,
            app,
            conn,
            bound: None,
            maybe_joined: None,
            ip,
            replay: None,
            replay_budget,
            buckets,
            connected: false,
        }
    }

    /// Handles one command of the socket's queue; `false` once the worker is
    /// done with the socket (its disconnect was handled, or it never
    /// finished connecting).
    pub async fn handle_command(&mut self, command: Command) -> bool {
        let last = matches!(command, Command::Disconnect);
        if !self.connected && !last {
            if !self.wait_until_connected().await {
                return false;
            }
            self.connected = true;
        }
        let event = command.event();
        let started = Instant::now();
        // A bug in one handler must not end this socket's worker (its
        // queue would fill up) or take anything else down.
        let handled = AssertUnwindSafe(Box::pin(self.handle(command)))
            .catch_unwind()
            .await;
        if handled.is_err() {
            tracing::error!(sid = %self.conn, event, "event handler panicked");
        }
        metrics::event_handled(event, started.elapsed());
        !last
    }

    /// socketioxide sends the connect packet *before* it marks the socket
    /// connected, and refuses to emit to it until then; a client that answers
    /// at once can get its first event here in between. Wait for the mark
    /// for as long as the socket exists (a failed connect removes it).
    async fn wait_until_connected(&self) -> bool {
        let deadline = Instant::now() + CONNECT_MARK_TIMEOUT;
        while !self.socket.connected() {
            if self.relay.io().get_socket(self.socket.id).is_none() || Instant::now() >= deadline {
                tracing::warn!(sid = %self.conn, "socket never finished connecting");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Runs one command's handler and answers its refusal.
    async fn handle(&mut self, command: Command) {
        let event = command.event();
        if let Err(wait) = self.rate_limit(&command) {
            // An unknown event is named as it came (cut as in UNKNOWN_EVENT).
            let named = match &command {
                Command::Unknown(name) => name.as_str(),
                _ => event,
            };
            return self.rate_limited(event, named, wait);
        }
        let result: Result<(), Refusal> = match command {
            Command::Join(p) => self.join(*p).await.map_err(Into::into),
            Command::SendMessage(p) => self.send_message(*p).await.map_err(Into::into),
            Command::GetPublicKeys(p) => self.get_public_keys(&p).await.map_err(Into::into),
            Command::SavePublicKey(p) => self.save_public_key(*p).await.map_err(Into::into),
            Command::SetSessionKey(p) => self.set_session_key(*p).await.map_err(Into::into),
            Command::FileDownloaded(p) => self.file_downloaded(*p).await.map_err(Into::into),
            Command::Typing(p) => self.typing(*p, outgoing::USER_TYPING).await.map_err(Into::into),
            Command::StoppedTyping(p) => self
                .typing(*p, outgoing::USER_STOPPED_TYPING)
                .await
                .map_err(Into::into),
            Command::Leave(p) => self.leave(&p).await.map_err(Into::into),
            Command::Invalid(event, reason) if event == incoming::JOIN_SESSION => {
                Err(JoinError::InvalidPayload(*reason).into())
            }
            Command::Invalid(_, reason) => Err(EventError::InvalidPayload(*reason).into()),
            Command::Unknown(name) => {
                self.test_hook(&name);
                return self.event_error(&name, &EventError::UnknownEvent);
            }
            Command::Disconnect => {
                self.stop_replay();
                self.disconnect().await;
                Ok(())
            }
        };
        match result {
            Ok(()) => {}
            Err(Refusal::Session(e)) => self.session_error(&e),
            Err(Refusal::Event(e)) => self.event_error(event, &e),
        }
    }

    /// Takes a token for a rate-limited event, or says how long to wait.
    fn rate_limit(&mut self, command: &Command) -> Result<(), Duration> {
        let rates = self.app.rates;
        let b = &mut self.buckets;
        // Every event a client sends counts: an invalid one as the event it
        // names, a leave with the joins, an unknown one with the key events.
        let event = match command {
            Command::Disconnect => return Ok(()),
            Command::Leave(_) => incoming::JOIN_SESSION,
            Command::Unknown(_) => incoming::GET_PUBLIC_KEYS,
            Command::Invalid(event, _) => event,
            command => command.event(),
        };
        let (bucket, rate) = match event {
            incoming::SEND_MESSAGE => (&mut b.send, rates.send),
            incoming::JOIN_SESSION => (&mut b.join, rates.join),
            incoming::TYPING | incoming::STOPPED_TYPING => (&mut b.typing, rates.typing),
            _ => (&mut b.keys, rates.keys),
        };
        bucket.take(rate, Instant::now())
    }

    /// Answers `RATE_LIMITED` with a retry hint; cuts off a socket that keeps
    /// flooding (nothing more is answered to it).
    fn rate_limited(&mut self, event: &'static str, named: &str, wait: Duration) {
        metrics::rate_limited("socket", event);
        let b = &mut self.buckets;
        let now = Instant::now();
        if now.saturating_duration_since(b.window_start) > FLOOD_WINDOW {
            b.window_start = now;
            b.refused = 0;
        }
        b.refused = b.refused.saturating_add(1);
        if b.refused > FLOOD_DISCONNECT_AFTER {
            if b.refused == FLOOD_DISCONNECT_AFTER + 1 {
                tracing::warn!(sid = %self.conn, event, "cutting off a socket that keeps flooding");
                metrics::forced_disconnect("flood");
            }
            relay::cut_off(&self.socket);
            return;
        }
        metrics::event_error("RATE_LIMITED");
        let retry_after_ms = wait.as_millis().max(1) as u64;
        let error = json!({
            "event": named,
            "error": "RATE_LIMITED",
            "message": format!("Too many {named} events; retry in {retry_after_ms} ms."),
            "retryAfterMs": retry_after_ms,
        });
        self.to_self(outgoing::EVENT_ERROR, &error);
    }

    /// Test hook (`--features test-hooks`): the configured event panics,
    /// inside the bound session's lock when there is one.
    #[cfg(feature = "test-hooks")]
    fn test_hook(&self, event: &str) {
        if self.app.test_panic_event.as_deref() == Some(event) {
            match &self.bound {
                Some(b) => self.app.store.panic_while_locked(&b.session),
                None => panic!("test hook: panic in a handler"),
            }
        }
    }

    #[cfg(not(feature = "test-hooks"))]
    fn test_hook(&self, _event: &str) {}

    /// Checks that this socket joined the event's session as the claimed user.
    pub(super) fn binding(
        &self,
        session: Option<&str>,
        claimed: Option<&str>,
    ) -> Result<Binding, EventError> {
        let raw = session.ok_or_else(|| EventError::InvalidPayload("sessionId is required".into()))?;
        let b = self.bound.as_ref().ok_or(EventError::NotInSession)?;
        if crate::domain::ids::SessionRef::split(raw).id != b.session.as_str() {
            return Err(EventError::NotInSession);
        }
        if claimed.is_some_and(|u| u != b.user.as_str()) {
            return Err(EventError::UserMismatch);
        }
        Ok(b.clone())
    }

    /// Passes a store refusal on; `NotInSession` means this socket was
    /// replaced or evicted, so its binding is dropped.
    pub(super) fn refused(&mut self, e: EventError) -> EventError {
        if e == EventError::NotInSession {
            self.bound = None;
            self.stop_replay();
            self.leave_foreign_rooms();
        }
        e
    }

    /// Takes this socket out of every session room but its binding's (and
    /// the one of a join whose outcome is unknown): a socket that is no
    /// member must hear nothing of a session.
    pub(super) fn leave_foreign_rooms(&self) {
        let keep: Vec<String> = [&self.bound, &self.maybe_joined]
            .into_iter()
            .flatten()
            .map(|b| session_room(&b.session))
            .collect();
        for room in self.socket.rooms() {
            if room.starts_with(SESSION_ROOM_PREFIX) && !keep.iter().any(|k| **k == *room) {
                self.socket.leave(room);
            }
        }
    }

    fn session_error(&self, e: &JoinError) {
        metrics::session_error(e.code());
        let mut error = json!({ "error": e.code(), "message": e.to_string() });
        if let JoinError::RateLimited(wait) = e {
            error["retryAfterMs"] = json!(wait.as_millis().max(1) as u64);
        }
        self.to_self(outgoing::SESSION_ERROR, &error);
    }

    fn event_error(&self, event: &str, e: &EventError) {
        metrics::event_error(e.code());
        tracing::debug!(sid = %self.conn, event, error = e.code(), "event refused");
        self.to_self(
            outgoing::EVENT_ERROR,
            &json!({ "event": event, "error": e.code(), "message": e.to_string() }),
        );
    }

    /// Emits to this socket; returns the bytes queued. A socket whose
    /// outgoing bytes pass `MAX_BUFFERED_BYTES_PER_SOCKET` is cut off.
    pub(super) fn to_self<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> usize {
        self.relay.to_socket(&self.socket, event, data)
    }

    /// Stops the history replay under way, if any.
    pub(super) fn stop_replay(&mut self) {
        if let Some(replay) = self.replay.take() {
            replay.abort();
        }
    }
}

impl Command {
    /// The event this command came as, for answers, logs and metrics.
    pub fn event(&self) -> &'static str {
        match self {
            Command::Join(_) => incoming::JOIN_SESSION,
            Command::SendMessage(_) => incoming::SEND_MESSAGE,
            Command::GetPublicKeys(_) => incoming::GET_PUBLIC_KEYS,
            Command::SavePublicKey(_) => incoming::SAVE_PUBLIC_KEY,
            Command::SetSessionKey(_) => incoming::SET_SESSION_KEY,
            Command::FileDownloaded(_) => incoming::FILE_DOWNLOADED,
            Command::Typing(_) => incoming::TYPING,
            Command::StoppedTyping(_) => incoming::STOPPED_TYPING,
            Command::Leave(_) => incoming::LEAVE_SESSION,
            Command::Invalid(event, _) => event,
            Command::Unknown(_) => internal::UNKNOWN,
            Command::Disconnect => internal::DISCONNECT,
        }
    }
}
