//! One task per socket that handles its events in arrival order.
//!
//! The worker owns the socket's binding (which session and user it joined
//! as); "how an event arrives on the wire" is here, "what it does" is one
//! [`Store`](crate::domain::Store) method. Emits happen after the store call
//! returns, never under a lock.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use serde::Serialize;
use serde_json::{json, Value};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::payloads::{self, display_name, join_request, json_len, *};
use super::queue::Command;
use super::{conn_room, leave_room, local_socket, session_room, App};
use crate::config::OriginalContent;
use crate::domain::ids::SessionRef;
use crate::domain::message::MessageView;
use crate::domain::store::{JoinKind, Left, Outgoing, Route};
use crate::domain::{epoch_ms, ChatMode, ConnId, EventError, JoinError, SessionId, UserId};
use crate::limits::{Bucket, Rate};
use crate::metrics;

/// Payloads at least this large are encoded once and shared by a room
/// broadcast, whatever the room's size: copying them per recipient would
/// cost more memory than a slow consumer can.
const SHARED_ENCODING_MIN_BYTES: usize = 64 * 1024;

/// Rooms of up to this many recipients get each message socket by socket
/// (a slow consumer is noticed and disconnected at once); larger rooms get
/// one shared encoding, which costs far less per recipient.
const PER_RECIPIENT_MAX: usize = 8;

/// Rate-limited events refused within [`FLOOD_WINDOW`] before the socket is
/// cut off: a client that keeps sending after `RATE_LIMITED` is flooding. (A
/// pasted list of 400 lines is 300 accepted and 100 refused: not cut off.)
const FLOOD_DISCONNECT_AFTER: u32 = 200;
/// The window in which refusals are counted.
const FLOOD_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a departure is retried while Redis is out of reach.
const DEPARTURE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
/// Pause between two attempts.
const DEPARTURE_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Who an emit goes to.
enum Target<'a> {
    /// Every socket in the room, this one included.
    Room(&'a str),
    /// Every socket in the room but this one.
    Others(&'a str),
    /// One socket.
    Conn(&'a ConnId),
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
struct Binding {
    session: SessionId,
    user: UserId,
}

pub struct Worker<A: Adapter> {
    socket: SocketRef<A>,
    io: SocketIo<A>,
    app: App,
    conn: ConnId,
    bound: Option<Binding>,
    /// A join whose answer was lost (`STORE_UNAVAILABLE` after the call
    /// went out): Redis may have applied it, so the member it may have made
    /// leaves with this socket as a bound one would.
    unsure: Option<Binding>,
    buckets: Buckets,
}

impl<A: Adapter> Worker<A> {
    pub fn new(socket: SocketRef<A>, io: SocketIo<A>, app: App) -> Self {
        let conn = ConnId::new(socket.id.to_string());
        let rates = app.rates;
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
            io,
            app,
            conn,
            bound: None,
            unsure: None,
            buckets,
        }
    }

    /// Handles commands until the socket's disconnect has been handled.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut connected = false;
        while let Some(command) = rx.recv().await {
            let last = matches!(command, Command::Disconnect);
            if !connected && !last {
                if !self.wait_until_connected().await {
                    return;
                }
                connected = true;
            }
            let event = command_name(&command);
            let started = Instant::now();
            // A bug in one handler must not end this socket's worker (its
            // queue would fill up) or take anything else down.
            // Boxed: an idle worker then holds only this loop, not the
            // largest handler's state, for the whole life of its socket.
            let handled = AssertUnwindSafe(Box::pin(self.handle(command)))
                .catch_unwind()
                .await;
            if handled.is_err() {
                tracing::error!(sid = %self.conn, event, "event handler panicked");
            }
            metrics::event_handled(event, started.elapsed());
            if last {
                break;
            }
        }
    }

    /// socketioxide sends the connect packet *before* it marks the socket
    /// connected, and refuses to emit to it until then; a client that answers
    /// at once can get its first event here in between. Wait for the mark
    /// for as long as the socket exists (a failed connect removes it).
    async fn wait_until_connected(&self) -> bool {
        /// Only a socket stuck half-connected for this long is given up.
        const CONNECT_MARK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
        let deadline = Instant::now() + CONNECT_MARK_TIMEOUT;
        while !self.socket.connected() {
            if self.io.get_socket(self.socket.id).is_none() || Instant::now() >= deadline {
                tracing::warn!(sid = %self.conn, "socket never finished connecting");
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        true
    }

    async fn handle(&mut self, command: Command) {
        if let Err(wait) = self.rate_limit(&command) {
            return self.rate_limited(command_name(&command), wait);
        }
        let result = match command {
            Command::Join(p) => {
                self.join(p).await;
                Ok(())
            }
            Command::SendMessage(p) => self.send_message(p).await,
            Command::GetPublicKeys(p) => self.get_public_keys(&p).await,
            Command::SavePublicKey(p) => self.save_public_key(p).await,
            Command::SetSessionKey(p) => self.set_session_key(p).await,
            Command::FileDownloaded(p) => self.file_downloaded(p).await,
            Command::Typing(p) => self.typing(p, "user-typing").await,
            Command::StoppedTyping(p) => self.typing(p, "user-stopped-typing").await,
            Command::Leave(p) => self.leave(p).await,
            Command::Invalid(event, reason) => {
                let reason = *reason;
                if event == "join-session" {
                    self.session_error(&JoinError::InvalidPayload(reason));
                    Ok(())
                } else {
                    Err((event, EventError::InvalidPayload(reason)))
                }
            }
            Command::Unknown(event) => {
                if self.app.test_panic_event.as_deref() == Some(event.as_str()) {
                    let session = self.bound.as_ref().map(|b| b.session.clone());
                    match session {
                        Some(session) => self.app.store.panic_while_locked(&session),
                        None => panic!("test hook: panic in a handler"),
                    }
                }
                self.event_error(&event, &EventError::UnknownEvent);
                Ok(())
            }
            Command::Disconnect => {
                self.disconnect().await;
                Ok(())
            }
        };
        if let Err((event, error)) = result {
            self.event_error(event, &error);
        }
    }

    /// Takes a token for a rate-limited event, or says how long to wait.
    fn rate_limit(&mut self, command: &Command) -> Result<(), std::time::Duration> {
        let rates = self.app.rates;
        let b = &mut self.buckets;
        let (bucket, rate): (&mut Bucket, Rate) = match command {
            Command::SendMessage(_) => (&mut b.send, rates.send),
            Command::Join(_) => (&mut b.join, rates.join),
            Command::Typing(_) | Command::StoppedTyping(_) => (&mut b.typing, rates.typing),
            Command::GetPublicKeys(_)
            | Command::SavePublicKey(_)
            | Command::SetSessionKey(_)
            | Command::FileDownloaded(_) => (&mut b.keys, rates.keys),
            _ => return Ok(()),
        };
        bucket.take(rate, Instant::now())
    }

    /// Answers `RATE_LIMITED` with a retry hint; cuts off a socket that keeps
    /// flooding (nothing more is answered to it).
    fn rate_limited(&mut self, event: &'static str, wait: std::time::Duration) {
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
            super::cut_off(&self.socket);
            return;
        }
        metrics::event_error("RATE_LIMITED");
        let retry_after_ms = wait.as_millis().max(1) as u64;
        let error = json!({
            "event": event,
            "error": "RATE_LIMITED",
            "message": format!("Too many {event} events; retry in {retry_after_ms} ms."),
            "retryAfterMs": retry_after_ms,
        });
        self.to_self("event-error", &error);
    }

    async fn join(&mut self, p: Box<payloads::JoinSession>) {
        let req = match join_request(*p) {
            Ok(req) => req,
            Err(e) => return self.session_error(&e),
        };
        let binding = Binding {
            session: req.session.clone(),
            user: req.user.clone(),
        };
        let joined = match self.app.store.join(req, &self.conn, epoch_ms()).await {
            Ok(joined) => joined,
            Err(e) => {
                tracing::info!(session = %binding.session.log_tag(), error = e.code(), "join refused");
                if e == JoinError::StoreUnavailable && self.bound.as_ref() != Some(&binding) {
                    self.unsure = Some(binding);
                }
                return self.session_error(&e);
            }
        };
        // A socket holds one binding: joining as someone else leaves the old one.
        if let Some(previous) = self.bound.take().filter(|b| *b != binding) {
            self.depart(previous, true).await;
        }
        if let Some(unsure) = self.unsure.take().filter(|b| *b != binding) {
            self.depart(unsure, true).await;
        }
        metrics::join_accepted();
        let room = session_room(&binding.session);
        self.socket.join(room.clone());
        match &joined.kind {
            JoinKind::New => {
                tracing::info!(session = %binding.session.log_tag(), "member joined");
                let joined_msg = UserEvent {
                    user_id: &binding.user,
                    display_name: joined.display_name.as_deref(),
                    timestamp: Some(joined.timestamp),
                };
                self.to_others(&room, "user-joined", &joined_msg).await;
            }
            JoinKind::Rejoined { previous } => {
                tracing::debug!(session = %binding.session.log_tag(), "member rejoined from a new socket");
                leave_room(&self.io, self.app.cluster, previous, room.clone()).await;
            }
            JoinKind::Repeat => {}
        }
        let views: Vec<MessageView<'_>> = joined
            .history
            .iter()
            .map(|m| MessageView {
                message: m,
                original_content: (m.from == binding.user)
                    .then_some(m.original_content.as_ref())
                    .flatten(),
            })
            .collect();
        self.to_self("messages-history", &views);
        let metadata = SessionMetadata {
            chat_mode: joined.mode,
            encrypted_session_key: joined.encrypted_session_key.as_ref(),
        };
        self.to_self("session-metadata", &metadata);
        self.to_room(&room, "public-keys-updated", &joined.public_keys)
            .await;
        self.bound = Some(binding);
    }

    async fn send_message(&mut self, p: Box<payloads::SendMessage>) -> EventResult {
        const EVENT: &str = "send-message";
        let b = self.binding(EVENT, p.session_id.as_deref(), p.from.as_deref())?;
        let invalid = |reason: &str| (EVENT, EventError::InvalidPayload(reason.into()));
        let encrypted = p
            .encrypted
            .filter(|v| !v.is_null())
            .ok_or_else(|| invalid("encrypted is required"))?;
        if p.kind.as_ref().is_some_and(|t| t.len() > MAX_TYPE_LEN) {
            return Err(invalid("type is too long"));
        }
        if p.client_message_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > MAX_CLIENT_MESSAGE_ID_LEN)
        {
            return Err(invalid("clientMessageId must be 1 to 128 characters"));
        }
        let policy = self.app.original_content;
        let (echo, kept) = match policy {
            OriginalContent::Echo => (p.original_content, None),
            OriginalContent::Author => (p.original_content.clone(), p.original_content),
            OriginalContent::Drop => (None, None),
        };
        let out = Outgoing {
            to: p.to.map(Into::into),
            encrypted,
            original_content: kept,
            kind: p.kind.map(Into::into),
            client_message_id: p.client_message_id.map(Into::into),
        };
        let sent = self
            .app
            .store
            .send_message(
                &b.session,
                &b.user,
                &self.conn,
                out,
                epoch_ms(),
                policy == OriginalContent::Author,
            )
            .await
            .map_err(|e| self.refused(EVENT, e))?;
        let message = &*sent.message;
        let target = match &sent.route {
            Route::Others => Target::Others(&session_room(&b.session)),
            Route::Conn(conn) => Target::Conn(conn),
        };
        let deliveries = self.deliver(target, "new-message", message).await;
        metrics::message_relayed(deliveries);
        if sent.is_new {
            let view = MessageView {
                message,
                original_content: echo.as_ref(),
            };
            self.to_self("message-sent", &view);
        }
        Ok(())
    }

    /// Before joining, the stock client asks once: an unbound socket gets `[]`.
    async fn get_public_keys(&mut self, p: &payloads::SessionUser) -> EventResult {
        const EVENT: &str = "get-public-keys";
        let keys = match self.binding(EVENT, p.session_id.as_deref(), p.user_id.as_deref()) {
            Ok(b) => self
                .app
                .store
                .public_keys_for(&b.session, &b.user, &self.conn)
                .await
                .map_err(|e| (EVENT, e))?,
            Err((_, EventError::NotInSession | EventError::InvalidPayload(_))) => Vec::new(),
            Err(e) => return Err(e),
        };
        self.to_self("public-keys-updated", &keys);
        Ok(())
    }

    async fn save_public_key(&mut self, p: Box<payloads::SavePublicKey>) -> EventResult {
        const EVENT: &str = "save-public-key";
        let b = self.binding(EVENT, p.session_id.as_deref(), p.user_id.as_deref())?;
        let key = p.public_key.unwrap_or(Value::Null);
        if json_len(&key) > MAX_PUBLIC_KEY_BYTES {
            return Err((EVENT, EventError::InvalidPayload("publicKey is too large".into())));
        }
        let name = display_name(p.display_name).map_err(|e| (EVENT, e))?;
        let keys = self
            .app
            .store
            .save_public_key(&b.session, &b.user, &self.conn, key, name)
            .await
            .map_err(|e| self.refused(EVENT, e))?;
        self.to_room(&session_room(&b.session), "public-keys-updated", &keys)
            .await;
        Ok(())
    }

    async fn set_session_key(&mut self, p: Box<payloads::SetSessionKey>) -> EventResult {
        const EVENT: &str = "set-session-key";
        let b = self.binding(EVENT, p.session_id.as_deref(), None)?;
        let invalid = || {
            (
                EVENT,
                EventError::InvalidPayload("encryptedKeys must map user ids to strings".into()),
            )
        };
        let Some(Value::Object(keys)) = p.encrypted_keys else {
            return Err(invalid());
        };
        if !keys.values().all(Value::is_string) {
            return Err(invalid());
        }
        if keys.iter().map(|(k, v)| k.len() + json_len(v)).sum::<usize>() > MAX_WRAPPED_KEYS_BYTES {
            return Err((
                EVENT,
                EventError::InvalidPayload("encryptedKeys is too large".into()),
            ));
        }
        let keys = self
            .app
            .store
            .set_session_key(&b.session, &b.user, &self.conn, keys)
            .await
            .map_err(|e| self.refused(EVENT, e))?;
        self.to_room(
            &session_room(&b.session),
            "session-key-available",
            &json!({ "encryptedKeys": &*keys }),
        )
        .await;
        Ok(())
    }

    async fn file_downloaded(&mut self, p: Box<payloads::FileDownloaded>) -> EventResult {
        const EVENT: &str = "file-downloaded";
        let p = *p;
        // `downloadedBy` is what the sender's page shows ("<who> downloaded
        // your file"): the stock client sends its display name, or its user
        // id when it has none. It is relayed as given, not checked as an id.
        let b = self.binding(EVENT, p.session_id.as_deref(), None)?;
        let invalid = |reason: &str| (EVENT, EventError::InvalidPayload(reason.into()));
        let sender = p.sender_id.ok_or_else(|| invalid("senderId is required"))?;
        let file_name = p.file_name.unwrap_or_default();
        if file_name.len() > MAX_FILE_NAME_LEN {
            return Err(invalid("fileName is too long"));
        }
        let downloaded_by = match p.downloaded_by {
            Some(name) if name.len() > MAX_DISPLAY_NAME_LEN => {
                return Err(invalid("downloadedBy is too long"))
            }
            Some(name) if !name.is_empty() => name,
            _ => b.user.to_string(),
        };
        let target = self
            .app
            .store
            .download_target(&b.session, &b.user, &self.conn, &sender)
            .await
            .map_err(|e| self.refused(EVENT, e))?;
        let timestamp = match p.timestamp {
            Some(Value::Number(n)) => Value::Number(n),
            _ => Value::from(epoch_ms()),
        };
        let notice = json!({ "downloadedBy": downloaded_by, "fileName": file_name, "timestamp": timestamp });
        self.deliver(Target::Conn(&target), "download-notification", &notice)
            .await;
        Ok(())
    }

    /// `typing` / `stopped-typing`: dropped silently from a non-member.
    async fn typing(&mut self, p: Box<payloads::SessionUser>, out_event: &'static str) -> EventResult {
        let event = if out_event == "user-typing" {
            "typing"
        } else {
            "stopped-typing"
        };
        let b = match self.binding(event, p.session_id.as_deref(), p.user_id.as_deref()) {
            Ok(b) => b,
            Err((_, EventError::NotInSession)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let stored_name = match self.app.store.typing(&b.session, &b.user, &self.conn).await {
            Ok(name) => name,
            Err(EventError::StoreUnavailable) => return Err((event, EventError::StoreUnavailable)),
            Err(_) => {
                self.bound = None;
                return Ok(());
            }
        };
        let offered = p.display_name.filter(|n| n.len() <= MAX_DISPLAY_NAME_LEN);
        let name = stored_name.as_deref().or(offered.as_deref());
        let notice = UserEvent {
            user_id: &b.user,
            display_name: name,
            timestamp: None,
        };
        self.to_others(&session_room(&b.session), out_event, &notice)
            .await;
        Ok(())
    }

    async fn leave(&mut self, p: Box<payloads::SessionUser>) -> EventResult {
        const EVENT: &str = "leave-session";
        let b = self.binding(EVENT, p.session_id.as_deref(), p.user_id.as_deref())?;
        self.bound = None;
        self.depart(b, true).await;
        Ok(())
    }

    async fn disconnect(&mut self) {
        if let Some(unsure) = self.unsure.take().filter(|b| Some(b) != self.bound.as_ref()) {
            self.depart(unsure, false).await;
        }
        if let Some(b) = self.bound.take() {
            self.depart(b, false).await;
        }
    }

    /// Removes the member (if this socket is still its current one) and
    /// tells the room; `still_connected` sockets also leave the room.
    async fn depart(&mut self, b: Binding, still_connected: bool) {
        let room = session_room(&b.session);
        let left = self.record_departure(&b).await;
        if let Some(Left {
            display_name,
            public_keys,
        }) = left
        {
            tracing::info!(session = %b.session.log_tag(), "member left");
            let notice = UserEvent {
                user_id: &b.user,
                display_name: display_name.as_deref(),
                timestamp: Some(epoch_ms()),
            };
            self.to_others(&room, "user-left", &notice).await;
            self.to_room(&room, "public-keys-updated", &public_keys).await;
        }
        if still_connected {
            self.socket.leave(room);
        }
    }

    /// Removes the member from the store. While Redis is out of reach the
    /// departure is retried (this socket's later events wait; after a
    /// disconnect there are none) for up to [`DEPARTURE_PATIENCE`]; a
    /// departure still not recorded then is found by the node's
    /// reconciliation once Redis is back (see `cluster::reconcile`).
    async fn record_departure(&self, b: &Binding) -> Option<Left> {
        let deadline = Instant::now() + DEPARTURE_PATIENCE;
        let departure = uuid::Uuid::new_v4().simple().to_string();
        let mut retry = false;
        loop {
            match self
                .app
                .store
                .disconnect(&b.session, &b.user, &self.conn, &departure, retry)
                .await
            {
                Ok(left) => return left,
                Err(_) if Instant::now() < deadline => {
                    retry = true;
                    tokio::time::sleep(DEPARTURE_RETRY).await;
                }
                Err(_) => return None,
            }
        }
    }

    /// Checks that this socket joined the event's session as the claimed user.
    fn binding(
        &mut self,
        event: &'static str,
        session: Option<&str>,
        claimed: Option<&str>,
    ) -> Result<Binding, (&'static str, EventError)> {
        let raw = session.ok_or((event, EventError::InvalidPayload("sessionId is required".into())))?;
        let b = self.bound.as_ref().ok_or((event, EventError::NotInSession))?;
        if SessionRef::split(raw).id != b.session.as_str() {
            return Err((event, EventError::NotInSession));
        }
        if claimed.is_some_and(|u| u != b.user.as_str()) {
            return Err((
                event,
                EventError::NotAllowed("The user id does not match the joined user."),
            ));
        }
        Ok(b.clone())
    }

    /// Maps a store refusal; `NotInSession` means this socket was replaced or
    /// evicted, so its binding is dropped.
    fn refused(&mut self, event: &'static str, e: EventError) -> (&'static str, EventError) {
        if e == EventError::NotInSession {
            self.bound = None;
        }
        (event, e)
    }

    fn session_error(&self, e: &JoinError) {
        metrics::session_error(e.code());
        self.to_self(
            "session-error",
            &json!({ "error": e.code(), "message": e.to_string() }),
        );
    }

    fn event_error(&self, event: &str, e: &EventError) {
        metrics::event_error(e.code());
        tracing::debug!(sid = %self.conn, event, error = e.code(), "event refused");
        self.to_self(
            "event-error",
            &json!({ "event": event, "error": e.code(), "message": e.to_string() }),
        );
    }

    fn to_self<T: Serialize + ?Sized>(&self, event: &str, data: &T) {
        let Some(raw) = encode(event, data) else { return };
        metrics::bytes_out(raw.get().len());
        if let Err(e) = self.socket.emit(event, &*raw) {
            self.emit_failed(&self.socket, event, e);
        }
    }

    async fn to_room<T: Serialize + ?Sized>(&self, room: &str, event: &str, data: &T) {
        self.deliver(Target::Room(room), event, data).await;
    }

    async fn to_others<T: Serialize + ?Sized>(&self, room: &str, event: &str, data: &T) {
        self.deliver(Target::Others(room), event, data).await;
    }

    /// Serializes `data` once and sends it to `target`; returns the number
    /// of recipients on this node. Small rooms get it socket by socket, so
    /// that a recipient whose outgoing buffer is full is noticed and
    /// disconnected; large rooms and large payloads get one shared encoding
    /// by a room broadcast (see [`PER_RECIPIENT_MAX`],
    /// [`SHARED_ENCODING_MIN_BYTES`]). In a cluster every room emit is a
    /// broadcast through the adapter (recipients may be on other nodes).
    async fn deliver<T: Serialize + ?Sized>(&self, target: Target<'_>, event: &str, data: &T) -> usize {
        let Some(raw) = encode(event, data) else { return 0 };
        let size = raw.get().len();
        let remote_conn = match target {
            Target::Conn(conn) if self.app.cluster && local_socket(&self.io, conn).is_none() => Some(conn),
            _ => None,
        };
        let operator = match target {
            Target::Room(room) => Some(self.io.to(room.to_owned())),
            Target::Others(room) => Some(self.socket.to(room.to_owned())),
            Target::Conn(_) => remote_conn.map(|conn| self.io.to(conn_room(conn))),
        };
        let recipients: Vec<SocketRef<A>> = match (&operator, target) {
            (Some(operator), _) => operator.clone().sockets(),
            (None, Target::Conn(conn)) => local_socket(&self.io, conn).into_iter().collect(),
            (None, _) => Vec::new(),
        };
        metrics::bytes_out(size * recipients.len());
        let shared =
            self.app.cluster || size >= SHARED_ENCODING_MIN_BYTES || recipients.len() > PER_RECIPIENT_MAX;
        if let Some(operator) = operator.filter(|_| shared) {
            if let Err(e) = super::broadcast(operator, event, &*raw).await {
                // The sockets that could not take it are not named; the
                // heartbeat ends them if they have stopped reading.
                tracing::debug!(event, error = %e, "room broadcast not taken by every socket");
                metrics::broadcast_incomplete();
            }
            return recipients.len();
        }
        for socket in &recipients {
            if let Err(e) = socket.emit(event, &*raw) {
                self.emit_failed(socket, event, e);
            }
        }
        recipients.len()
    }

    /// A recipient whose outgoing buffer is full is not keeping up: it is
    /// cut off (it rejoins and gets the history) rather than silently
    /// missing messages or making the server buffer without bound.
    fn emit_failed(&self, socket: &SocketRef<A>, event: &str, e: SendError) {
        match e {
            SendError::Socket(SocketError::InternalChannelFull) => {
                tracing::warn!(sid = %socket.id, event, "slow consumer: outgoing buffer full, disconnecting");
                metrics::forced_disconnect("slow_consumer");
                super::cut_off(socket);
            }
            e => tracing::debug!(sid = %socket.id, event, error = %e, "emit failed"),
        }
    }
}

/// Serializes an outgoing payload once.
fn encode<T: Serialize + ?Sized>(event: &str, data: &T) -> Option<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(data)
        .map_err(|e| tracing::error!(event, error = %e, "cannot serialize an event"))
        .ok()
}

type EventResult = Result<(), (&'static str, EventError)>;

/// `user-joined`, `user-left`, `user-typing` and `user-stopped-typing`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserEvent<'a> {
    user_id: &'a UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionMetadata<'a> {
    chat_mode: ChatMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    encrypted_session_key: Option<&'a Value>,
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Join(_) => "join-session",
        Command::SendMessage(_) => "send-message",
        Command::GetPublicKeys(_) => "get-public-keys",
        Command::SavePublicKey(_) => "save-public-key",
        Command::SetSessionKey(_) => "set-session-key",
        Command::FileDownloaded(_) => "file-downloaded",
        Command::Typing(_) => "typing",
        Command::StoppedTyping(_) => "stopped-typing",
        Command::Leave(_) => "leave-session",
        Command::Invalid(event, _) => event,
        Command::Unknown(_) => "unknown",
        Command::Disconnect => "disconnect",
    }
}
