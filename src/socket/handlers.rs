//! The handler of each client event: "how it arrives on the wire" is here,
//! "what it does" is one [`Store`](crate::store::Store) method. Each handler
//! checks the socket's binding, validates the payload ([`super::validate`]),
//! calls the store, and sends what the outcome says, after the store call
//! returned (never under a lock). A refusal is returned; the worker answers
//! it, naming the event (docs/PROTOCOL.md sections 5–7).

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;

use super::events::outgoing;
use super::payloads;
use super::relay::{session_room, Target, UserEvent};
use super::replay;
use super::takeover;
use super::validate;
use super::worker::{Binding, Worker};
use crate::config::OriginalContent;
use crate::domain::{epoch_ms, ChatMode, EventError, JoinError, MessageView, WrappedKeys};
use crate::metrics;
use crate::store::{HistoryCursor, JoinKind, JoinRequest, Joined, Left, Route};

/// `session-metadata`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionMetadata<'a> {
    chat_mode: ChatMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    encrypted_session_key: Option<&'a RawValue>,
}

/// `session-key-available`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionKeyAvailable<'a> {
    encrypted_keys: &'a WrappedKeys,
}

impl<A: Adapter> Worker<A> {
    /// `join-session`: the store admits the member; the room hears of a
    /// newcomer, a rejoin's old socket leaves the room, and the joiner gets
    /// its history, the session's metadata and every key.
    pub(super) async fn join(&mut self, p: payloads::JoinSession) -> Result<(), JoinError> {
        let req = validate::join_request(p)?;
        let binding = Binding {
            session: req.session.clone(),
            user: req.user.clone(),
        };
        let mut joined = match self.admit(req).await {
            Ok(joined) => joined,
            Err(e) => {
                tracing::info!(session = %binding.session.log_tag(), error = e.code(), "join refused");
                if e == JoinError::StoreUnavailable && self.bound.as_ref() != Some(&binding) {
                    self.maybe_joined = Some(binding);
                } else if self.bound.as_ref() != Some(&binding) {
                    self.leave_foreign_rooms();
                }
                return Err(e);
            }
        };
        // A socket holds one binding: joining as someone else leaves the old one.
        if let Some(previous) = self.bound.take().filter(|b| *b != binding) {
            self.depart(previous, true).await;
        }
        if let Some(maybe) = self.maybe_joined.take().filter(|b| *b != binding) {
            self.depart(maybe, true).await;
        }
        let room = session_room(&binding.session);
        self.socket.join(room.clone());
        // No ghost listener: had a newer socket taken the seat between the
        // store's answer and the room join, this one leaves the room again.
        if let Ok(false) = self
            .app
            .store
            .is_member_socket(&binding.session, &binding.user, &self.conn)
            .await
        {
            self.socket.leave(room);
            return Err(JoinError::MemberConnected(self.conn.clone()));
        }
        metrics::join_accepted();
        self.announce_join(&binding, &room, &joined).await;
        let keys = std::mem::take(&mut joined.public_keys);
        self.send_join_state(&binding, joined);
        self.deliver(Target::Room(&room), outgoing::PUBLIC_KEYS_UPDATED, &keys)
            .await;
        self.bound = Some(binding);
        Ok(())
    }

    /// The store's part of a join, within the address's budget of wrong
    /// keys and passwords (`AUTH_FAILURES_PER_IP_PER_MIN`). A creator's join
    /// of an unknown id creates the session only when its client's address
    /// may create one more (`RESERVE_RATE_PER_IP`, `MAX_SESSIONS_PER_IP`, as
    /// reservations).
    async fn admit(&self, req: JoinRequest) -> Result<Joined, JoinError> {
        let failures = self.app.creations.failures.clone();
        if let Some(wait) = self.ip.and_then(|ip| failures.wait(ip)) {
            metrics::rate_limited("ip", "auth");
            return Err(JoinError::RateLimited(wait));
        }
        let joined = self.admit_seated(req).await;
        if let (
            Some(ip),
            Err(JoinError::CreatorKeyMismatch | JoinError::InvalidKey | JoinError::InvalidPassword),
        ) = (self.ip, &joined)
        {
            failures.failed(ip);
        }
        joined
    }

    /// [`Self::admit_checked`], where a member's seat held by another
    /// socket is taken only once that socket is found gone (see
    /// [`takeover`]); a live holder keeps it and the join is refused.
    async fn admit_seated(&self, mut req: JoinRequest) -> Result<Joined, JoinError> {
        let patience = takeover::Patience {
            ping_interval: self.app.ping_interval,
            heartbeat_timeout: self.app.stall_timeout,
        };
        // The holder may change between two tries (another join took the
        // seat meanwhile): a few rounds, then the holder is taken as live.
        for _ in 0..3 {
            match self.admit_checked(req.clone()).await {
                Err(JoinError::MemberConnected(holder)) if req.replacing.as_ref() != Some(&holder) => {
                    match takeover::check(&self.relay, &self.socket, &holder, &patience).await {
                        takeover::Holder::Gone => req.replacing = Some(holder),
                        takeover::Holder::Answering => return Err(JoinError::MemberConnected(holder)),
                    }
                }
                other => return other,
            }
        }
        Err(JoinError::MemberConnected(
            req.replacing.unwrap_or_else(|| self.conn.clone()),
        ))
    }

    /// [`Self::admit`] once the address may try.
    async fn admit_checked(&self, req: JoinRequest) -> Result<Joined, JoinError> {
        let store = &self.app.store;
        if !req.is_creator {
            return store.join(req, &self.conn, epoch_ms()).await;
        }
        match store.join(req.clone(), &self.conn, epoch_ms()).await {
            Err(JoinError::SessionNotFound) => {}
            other => return other,
        }
        let creations = &self.app.creations;
        let claim = match self.ip {
            Some(ip) => {
                creations.rate.check(ip).map_err(|wait| {
                    metrics::rate_limited("ip", "create");
                    JoinError::RateLimited(wait)
                })?;
                Some(
                    creations
                        .quota
                        .claim(ip, store)
                        .await?
                        .ok_or(JoinError::AddressSessionLimit)?,
                )
            }
            None => None,
        };
        let session = req.session.clone();
        let joined = store
            .join(
                JoinRequest {
                    may_create: true,
                    ..req
                },
                &self.conn,
                epoch_ms(),
            )
            .await?;
        if let (true, Some(claim)) = (joined.created, claim) {
            claim.created(session);
        }
        Ok(joined)
    }

    /// What the room learns of a join: a newcomer, or nothing (a rejoin's
    /// old socket just leaves the room).
    async fn announce_join(&self, binding: &Binding, room: &str, joined: &Joined) {
        match &joined.kind {
            JoinKind::New => {
                tracing::info!(session = %binding.session.log_tag(), "member joined");
                let notice = UserEvent {
                    user_id: &binding.user,
                    display_name: joined.display_name.as_deref(),
                    timestamp: Some(joined.timestamp),
                };
                self.deliver(self.others(room), outgoing::USER_JOINED, &notice)
                    .await;
            }
            JoinKind::Rejoined { previous } => {
                tracing::debug!(session = %binding.session.log_tag(), "member rejoined from a new socket");
                self.relay.leave_room(previous, room.to_owned()).await;
            }
            JoinKind::Repeat => {}
        }
    }

    /// The joiner's history (its own plaintext only, where kept; the first
    /// page now, the others from a replay of their own) and the session's
    /// metadata.
    fn send_join_state(&mut self, binding: &Binding, joined: Joined) {
        self.stop_replay();
        let budget = self.replay_budget.clone();
        let rest = if budget.available() {
            let sent = self.to_self(
                outgoing::MESSAGES_HISTORY,
                &replay::views(&joined.history, &binding.user),
            );
            budget.spend(sent);
            joined.more_history
        } else {
            // Spent: the whole history waits for the budget.
            self.to_self(outgoing::MESSAGES_HISTORY, &[(); 0]);
            Some(HistoryCursor::start())
        };
        let metadata = SessionMetadata {
            chat_mode: joined.mode,
            encrypted_session_key: joined.encrypted_session_key.as_deref(),
        };
        self.to_self(outgoing::SESSION_METADATA, &metadata);
        if let Some(cursor) = rest {
            let job = replay::ReplayJob {
                store: self.app.store.clone(),
                binding: binding.clone(),
                conn: self.conn.clone(),
                cursor,
                budget,
                stall_timeout: self.app.stall_timeout,
            };
            self.replay = Some(replay::start(self.socket.clone(), self.relay.clone(), job));
        }
    }

    /// `send-message`: stored once per id, relayed to the room or one member;
    /// the author gets `message-sent` for a new id.
    pub(super) async fn send_message(&mut self, p: payloads::SendMessage) -> Result<(), EventError> {
        let b = self.binding(p.session_id.as_deref(), p.from.as_deref())?;
        let policy = self.app.original_content;
        let req = validate::send_request(p, policy)?;
        let keep_original = policy == OriginalContent::Author;
        let sent = self
            .app
            .store
            .send_message(
                &b.session,
                &b.user,
                &self.conn,
                req.message,
                epoch_ms(),
                keep_original,
            )
            .await
            .map_err(|e| self.refused(e))?;
        let message = &*sent.message;
        let room = session_room(&b.session);
        let target = match &sent.route {
            Route::Others => self.others(&room),
            Route::Conn(conn) => Target::Conn(conn),
        };
        let deliveries = self.deliver(target, outgoing::NEW_MESSAGE, message).await;
        metrics::message_relayed(deliveries);
        if sent.is_new {
            let view = MessageView {
                message,
                original_content: req.echo.as_deref(),
            };
            self.to_self(outgoing::MESSAGE_SENT, &view);
        }
        Ok(())
    }

    /// `get-public-keys`: before joining, the stock client asks once, and an
    /// unbound socket gets `[]`.
    pub(super) async fn get_public_keys(&mut self, p: &payloads::SessionUser) -> Result<(), EventError> {
        let keys = match self.binding(p.session_id.as_deref(), p.user_id.as_deref()) {
            Ok(b) => {
                self.app
                    .store
                    .public_keys_for(&b.session, &b.user, &self.conn)
                    .await?
            }
            Err(EventError::NotInSession | EventError::InvalidPayload(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        self.to_self(outgoing::PUBLIC_KEYS_UPDATED, &keys);
        Ok(())
    }

    /// `save-public-key`: the room gets every key.
    pub(super) async fn save_public_key(&mut self, p: payloads::SavePublicKey) -> Result<(), EventError> {
        let b = self.binding(p.session_id.as_deref(), p.user_id.as_deref())?;
        let (key, name) = validate::public_key_request(p)?;
        let keys = self
            .app
            .store
            .save_public_key(&b.session, &b.user, &self.conn, key, name)
            .await
            .map_err(|e| self.refused(e))?;
        let room = session_room(&b.session);
        self.deliver(Target::Room(&room), outgoing::PUBLIC_KEYS_UPDATED, &keys)
            .await;
        Ok(())
    }

    /// `set-session-key`: the room gets the wrapped keys.
    pub(super) async fn set_session_key(&mut self, p: payloads::SetSessionKey) -> Result<(), EventError> {
        let b = self.binding(p.session_id.as_deref(), None)?;
        let keys = validate::wrapped_keys(p.encrypted_keys)?;
        let keys = self
            .app
            .store
            .set_session_key(&b.session, &b.user, &self.conn, keys)
            .await
            .map_err(|e| self.refused(e))?;
        let room = session_room(&b.session);
        let notice = SessionKeyAvailable {
            encrypted_keys: &keys,
        };
        self.deliver(Target::Room(&room), outgoing::SESSION_KEY_AVAILABLE, &notice)
            .await;
        Ok(())
    }

    /// `file-downloaded`: the file's sender gets a `download-notification`.
    pub(super) async fn file_downloaded(&mut self, p: payloads::FileDownloaded) -> Result<(), EventError> {
        let b = self.binding(p.session_id.as_deref(), None)?;
        let (sender, notice) = validate::download_notice(p, &b.user)?;
        let target = self
            .app
            .store
            .download_target(&b.session, &b.user, &self.conn, &sender)
            .await
            .map_err(|e| self.refused(e))?;
        self.deliver(Target::Conn(&target), outgoing::DOWNLOAD_NOTIFICATION, &notice)
            .await;
        Ok(())
    }

    /// `typing` / `stopped-typing` (sent on as `out_event`): dropped
    /// silently from a non-member.
    pub(super) async fn typing(
        &mut self,
        p: payloads::SessionUser,
        out_event: &'static str,
    ) -> Result<(), EventError> {
        let b = match self.binding(p.session_id.as_deref(), p.user_id.as_deref()) {
            Ok(b) => b,
            Err(EventError::NotInSession) => return Ok(()),
            Err(e) => return Err(e),
        };
        let stored_name = match self.app.store.typing(&b.session, &b.user, &self.conn).await {
            Ok(name) => name,
            Err(EventError::StoreUnavailable) => return Err(EventError::StoreUnavailable),
            Err(_) => {
                self.bound = None;
                return Ok(());
            }
        };
        let offered = validate::offered_typing_name(p.display_name);
        let notice = UserEvent {
            user_id: &b.user,
            display_name: stored_name.as_deref().or(offered.as_deref()),
            timestamp: None,
        };
        let room = session_room(&b.session);
        self.deliver(self.others(&room), out_event, &notice).await;
        Ok(())
    }

    /// `leave-session`: the member leaves; the socket stays connected.
    pub(super) async fn leave(&mut self, p: &payloads::SessionUser) -> Result<(), EventError> {
        let b = self.binding(p.session_id.as_deref(), p.user_id.as_deref())?;
        self.bound = None;
        self.stop_replay();
        self.depart(b, true).await;
        Ok(())
    }

    /// The socket is gone: whatever member it holds (or may hold) leaves.
    pub(super) async fn disconnect(&mut self) {
        if let Some(maybe) = self
            .maybe_joined
            .take()
            .filter(|b| Some(b) != self.bound.as_ref())
        {
            self.depart(maybe, false).await;
        }
        if let Some(b) = self.bound.take() {
            self.depart(b, false).await;
        }
    }

    /// Removes the member (if this socket is still its current one) and
    /// tells the room; `still_connected` sockets also leave the room. While
    /// Redis is out of reach the store retries for a while (this socket's
    /// later events wait; after a disconnect there are none).
    async fn depart(&mut self, b: Binding, still_connected: bool) {
        let room = session_room(&b.session);
        let left = self
            .app
            .store
            .depart(&b.session, &b.user, &self.conn)
            .await
            .ok()
            .flatten();
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
            self.deliver(self.others(&room), outgoing::USER_LEFT, &notice)
                .await;
            self.deliver(Target::Room(&room), outgoing::PUBLIC_KEYS_UPDATED, &public_keys)
                .await;
        }
        if still_connected {
            self.socket.leave(room);
        }
    }

    /// Every member of `room` but this socket.
    fn others<'a>(&'a self, room: &'a str) -> Target<'a, A> {
        Target::Others {
            sender: &self.socket,
            room,
        }
    }

    async fn deliver<T: Serialize + ?Sized>(&self, target: Target<'_, A>, event: &str, data: &T) -> usize {
        self.relay.deliver(target, event, data).await
    }
}
