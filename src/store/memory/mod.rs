//! The embedded backend: every session's state in this process, behind one
//! cloneable handle.
//!
//! Locking: a std `RwLock` over the map of sessions, and a std `Mutex` per
//! session, so events of different sessions never wait on each other. No lock
//! is held across an `.await` (there is none in this file) and callers never
//! see a guard: each method returns what the transport must emit, and the
//! transport emits after the locks are gone. A panic in a critical section
//! cannot poison the store: every lock is taken through `session::lock`,
//! `read` or `write`, which recover the guard.

mod invariants;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::time::Instant;

use super::types::CursorAt;
use super::{
    Departures, Expired, HistoryCursor, HistoryPage, JoinAuth, JoinKind, JoinRequest, Joined, Left, Limits,
    NewMessage, Route, Sent, SessionSummary, StoreStats,
};
use crate::domain::rules;
use crate::domain::{
    ChatMode, ConnId, EventError, JoinError, PasswordDigest, PublicKeyEntry, RawJson, ReserveError,
    SessionId, UserId, WrappedKeys,
};
use session::{lock, read, write, Member, Session};

/// Cloneable handle to the sessions held in this process.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    sessions: RwLock<HashMap<SessionId, Arc<Mutex<Session>>>>,
    /// Creation counter, for the debug listing's order.
    next_seq: AtomicU64,
    /// Bytes in the history budget (`MAX_TOTAL_HISTORY_BYTES`) of all
    /// sessions: their history and wrapped keys. Changed only under a
    /// session's lock.
    total_history_bytes: AtomicUsize,
    /// The wrapped keys' part of `total_history_bytes` (they cannot be
    /// evicted to make room).
    total_wrapped_bytes: AtomicUsize,
    limits: Limits,
}

impl MemoryStore {
    pub fn new(limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                sessions: RwLock::new(HashMap::new()),
                next_seq: AtomicU64::new(0),
                total_history_bytes: AtomicUsize::new(0),
                total_wrapped_bytes: AtomicUsize::new(0),
                limits,
            }),
        }
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        read(&self.shared.sessions).len()
    }

    /// Live sessions by mode, connected members and history bytes, for metrics.
    pub fn stats(&self) -> StoreStats {
        let sessions: Vec<_> = read(&self.shared.sessions).values().cloned().collect();
        let mut stats = StoreStats {
            sessions: sessions.len(),
            sessions_by_mode: vec![
                (ChatMode::Group, 0),
                (ChatMode::Private, 0),
                (ChatMode::Password, 0),
            ],
            members: 0,
            history_bytes: self.total_history_bytes(),
        };
        for session in sessions {
            let s = lock(&session);
            if let Some(entry) = stats.sessions_by_mode.iter_mut().find(|(m, _)| *m == s.mode) {
                entry.1 += 1;
            }
            stats.members += s.members.len();
        }
        stats
    }

    /// The debug listing, in creation order.
    pub fn summaries(&self) -> Vec<SessionSummary> {
        let sessions: Vec<_> = read(&self.shared.sessions).values().cloned().collect();
        let mut rows: Vec<(u64, SessionSummary)> = sessions
            .iter()
            .map(|s| {
                let s = lock(s);
                (
                    s.seq,
                    SessionSummary {
                        session_id: s.id.clone(),
                        members: s.members.len(),
                        messages: s.history.len(),
                        public_keys: s.public_keys.len(),
                    },
                )
            })
            .collect();
        rows.sort_by_key(|(seq, _)| *seq);
        rows.into_iter().map(|(_, row)| row).collect()
    }

    /// `POST /api/reserve-session`: the session exists from now on, reserved.
    pub fn reserve(
        &self,
        id: SessionId,
        auth_key: &str,
        mode: ChatMode,
        password: Option<PasswordDigest>,
    ) -> Result<(), ReserveError> {
        let mut sessions = write(&self.shared.sessions);
        if sessions.contains_key(&id) {
            return Err(ReserveError::Exists);
        }
        if sessions.len() >= self.shared.limits.max_sessions {
            return Err(ReserveError::Limit);
        }
        let session = self.new_session(id.clone(), mode, auth_key, password);
        sessions.insert(id, Arc::new(Mutex::new(session)));
        Ok(())
    }

    /// `join-session`, docs/PROTOCOL.md section 5 steps 2–10, for socket `conn`.
    pub fn join(
        &self,
        req: JoinRequest,
        auth: &JoinAuth,
        conn: &ConnId,
        now_ms: u64,
    ) -> Result<Joined, JoinError> {
        let (session, created) = match self.get(&req.session) {
            Some(session) => (session, false),
            None if !(req.is_creator && req.may_create) => return Err(JoinError::SessionNotFound),
            None => self.create_for_creator(&req, auth)?,
        };
        let mut s = lock(&session);
        s.admit(&req, auth, &self.shared.limits, now_ms)?;
        if let Some(member) = s.members.get(&req.user) {
            if member.conn != *conn && req.replacing.as_ref() != Some(&member.conn) {
                return Err(JoinError::MemberConnected(member.conn.clone()));
            }
        }
        if req.is_creator && s.creator.as_ref().is_none_or(|c| *c == req.user) {
            s.reserved = false;
            s.creator = Some(req.user.clone());
        }
        let kind = Self::seat(&mut s, &req, conn, now_ms, self.shared.limits.max_group_members)?;
        let member = s.members.get_mut(&req.user).expect("seated above");
        if req.display_name.is_some() {
            member.display_name = req.display_name.clone();
        }
        let (display_name, joined_at) = (member.display_name.clone(), member.joined_at);
        if let Some(key) = req.public_key.filter(|k| crate::domain::raw::is_truthy(k)) {
            s.store_key(&req.user, key, display_name.clone(), joined_at);
        }
        s.last_activity = Instant::now();
        let (history, next) = s.page(&req.user, s.first_seq, self.shared.limits.history_page_bytes);
        Ok(Joined {
            kind,
            mode: s.mode,
            display_name,
            history,
            more_history: next.map(|seq| HistoryCursor(CursorAt::Seq(seq))),
            encrypted_session_key: s
                .wrapped_keys
                .as_ref()
                .and_then(|k| k.for_user(req.user.as_str())),
            created,
            public_keys: s.public_keys.clone(),
            timestamp: now_ms,
        })
    }

    /// Gives the joiner its seat: the same socket again, a new socket for a
    /// member, or a new member when there is room (step 5).
    fn seat(
        s: &mut Session,
        req: &JoinRequest,
        conn: &ConnId,
        now_ms: u64,
        max_group_members: usize,
    ) -> Result<JoinKind, JoinError> {
        let capacity = rules::capacity(s.mode, max_group_members);
        let full = s.members.len() >= capacity;
        Ok(match s.members.get_mut(&req.user) {
            Some(member) if member.conn == *conn => JoinKind::Repeat,
            Some(member) => {
                let previous = std::mem::replace(&mut member.conn, conn.clone());
                JoinKind::Rejoined { previous }
            }
            None if full => return Err(rules::session_full(s.mode, capacity)),
            None => {
                let member = Member {
                    conn: conn.clone(),
                    display_name: None,
                    joined_at: now_ms,
                };
                s.members.insert(req.user.clone(), member);
                JoinKind::New
            }
        })
    }

    /// The page of `viewer`'s history at `cursor` (see [`Limits::history_page_bytes`]);
    /// an empty last page once `conn` is no longer the member's socket.
    pub fn history_page(
        &self,
        session: &SessionId,
        viewer: &UserId,
        conn: &ConnId,
        cursor: &HistoryCursor,
    ) -> HistoryPage {
        let from = match cursor.0 {
            CursorAt::Seq(seq) => seq,
            CursorAt::Start => 0,
            CursorAt::Entry(_) => return HistoryPage::default(),
        };
        let Some(session) = self.get(session) else {
            return HistoryPage::default();
        };
        let s = lock(&session);
        if s.members.get(viewer).is_none_or(|m| m.conn != *conn) {
            return HistoryPage::default();
        }
        let (messages, next) = s.page(viewer, from, self.shared.limits.history_page_bytes);
        HistoryPage {
            messages,
            next: next.map(|seq| HistoryCursor(CursorAt::Seq(seq))),
        }
    }

    /// The bounds this store enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// What `req`'s password checks need, derived here (slow: for tests and
    /// fuzzing, which call this backend directly; the server goes through
    /// [`Store::join`](crate::store::Store::join)).
    pub fn auth_for(&self, req: &JoinRequest) -> JoinAuth {
        let salt = self.password_salt(&req.session);
        crate::store::password::join_auth(req, salt, self.shared.limits.password_kdf)
    }

    /// The salt of the session's room password, when it has one.
    pub fn password_salt(&self, session: &SessionId) -> Option<crate::domain::secret::Salt> {
        let session = self.get(session)?;
        let s = lock(&session);
        s.password.as_ref().map(PasswordDigest::salt)
    }

    /// Which of `ids` are live sessions.
    pub fn sessions_exist(&self, ids: &[SessionId]) -> Vec<bool> {
        let sessions = read(&self.shared.sessions);
        ids.iter().map(|id| sessions.contains_key(id)).collect()
    }

    /// `get-public-keys`: every key but the requester's, or nothing when the
    /// socket is not a member (nothing is revealed or created).
    pub fn public_keys_for(&self, session: &SessionId, user: &UserId, conn: &ConnId) -> Vec<PublicKeyEntry> {
        self.with_member(session, user, conn, |s| {
            Ok(rules::keys_except(s.public_keys.clone(), user))
        })
        .unwrap_or_default()
    }

    /// `save-public-key`: stores the key; returns every key for the room.
    pub fn save_public_key(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        key: RawJson,
        display_name: Option<Arc<str>>,
    ) -> Result<Vec<PublicKeyEntry>, EventError> {
        rules::require_public_key(&key)?;
        self.with_member(session, user, conn, |s| {
            let member = s.members.get_mut(user).expect("checked by with_member");
            if display_name.is_some() {
                member.display_name = display_name;
            }
            let (name, joined_at) = (member.display_name.clone(), member.joined_at);
            s.store_key(user, key, name, joined_at);
            Ok(s.public_keys.clone())
        })
    }

    /// `set-session-key`: the creator of a group session replaces the
    /// wrapped keys. They count in the history budget; when even evicting
    /// every message could not make room for them, they are refused.
    pub fn set_session_key(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        keys: WrappedKeys,
    ) -> Result<WrappedKeys, EventError> {
        let budget = self.shared.limits.max_total_history_bytes;
        let stored = self.with_member(session, user, conn, |s| {
            rules::may_set_session_key(s.mode, s.creator.as_ref() == Some(user))?;
            let (old, new) = (s.wrapped_bytes(), keys.weight());
            let wrapped = &self.shared.total_wrapped_bytes;
            if wrapped.load(Ordering::Relaxed) - old + new > budget {
                return Err(EventError::StoreFull);
            }
            wrapped.fetch_add(new, Ordering::Relaxed);
            wrapped.fetch_sub(old, Ordering::Relaxed);
            self.shared.total_history_bytes.fetch_add(new, Ordering::Relaxed);
            self.shared.total_history_bytes.fetch_sub(old, Ordering::Relaxed);
            s.wrapped_keys = Some(keys.clone());
            Ok(keys)
        });
        if self.total_history_bytes() > budget {
            self.enforce_history_budget();
        }
        stored
    }

    /// `send-message`: stores a new id once and says where the message goes.
    pub fn send_message(
        &self,
        session: &SessionId,
        from: &UserId,
        conn: &ConnId,
        message: NewMessage,
        now_ms: u64,
        keep_original: bool,
    ) -> Result<Sent, EventError> {
        let limits = &self.shared.limits;
        let sent = self.with_member(session, from, conn, |s| {
            let route = match rules::direct_recipient(message.to.as_deref()) {
                None => Route::Others,
                Some(to) => match s.members.iter().find(|(id, _)| id.as_str() == to) {
                    Some((_, member)) => Route::Conn(member.conn.clone()),
                    None => return Err(EventError::UnknownRecipient),
                },
            };
            let sender_name = s.members.get(from).and_then(|m| m.display_name.clone());
            let message = Arc::new(message.into_message(from.clone(), sender_name, now_ms, keep_original));
            let is_new = !s
                .history_ids
                .contains(&(message.from.clone(), message.id.clone()));
            if is_new {
                s.push_history(message.clone(), limits, &self.shared.total_history_bytes);
            }
            Ok(Sent {
                message,
                is_new,
                route,
            })
        });
        if self.total_history_bytes() > limits.max_total_history_bytes {
            self.enforce_history_budget();
        }
        sent
    }

    /// History bytes held by all sessions.
    pub fn total_history_bytes(&self) -> usize {
        self.shared.total_history_bytes.load(Ordering::Relaxed)
    }

    /// Drops the oldest messages of the largest sessions until all history
    /// fits `MAX_TOTAL_HISTORY_BYTES`. Runs only when over the budget.
    fn enforce_history_budget(&self) {
        let budget = self.shared.limits.max_total_history_bytes;
        let total = &self.shared.total_history_bytes;
        while total.load(Ordering::Relaxed) > budget {
            let sessions: Vec<_> = read(&self.shared.sessions)
                .iter()
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect();
            // Ties go to the greatest id, as in the Redis store. Only history
            // can be evicted: wrapped keys stay.
            let Some((_, largest)) = sessions
                .iter()
                // One session lock at a time: the key is taken per session.
                .max_by_key(|(id, s)| (lock(s).history_bytes, id.clone()))
            else {
                return;
            };
            let mut s = lock(largest);
            if s.history.is_empty() {
                return;
            }
            while total.load(Ordering::Relaxed) > budget && !s.history.is_empty() {
                s.pop_oldest(total);
            }
        }
    }

    /// `file-downloaded`: the socket of the member `sender` gets the notification.
    pub fn download_target(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        sender: &str,
    ) -> Result<ConnId, EventError> {
        self.with_member(session, user, conn, |s| {
            s.members
                .iter()
                .find(|(id, _)| id.as_str() == sender)
                .map(|(_, m)| m.conn.clone())
                .ok_or(EventError::UnknownRecipient)
        })
    }

    /// `typing` / `stopped-typing`: the member's display name, when it is a member.
    pub fn typing(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<Option<Arc<str>>, EventError> {
        self.with_member(session, user, conn, |s| Ok(s.members[user].display_name.clone()))
    }

    /// `leave-session`: removes the member and its key.
    pub fn leave(&self, session: &SessionId, user: &UserId, conn: &ConnId) -> Result<Left, EventError> {
        self.with_member(session, user, conn, |s| {
            let member = s.members.remove(user).expect("checked by with_member");
            s.public_keys.retain(|k| &k.user_id != user);
            Ok(Left {
                display_name: member.display_name,
                public_keys: s.public_keys.clone(),
            })
        })
    }

    /// A socket's departure (`leave-session` or disconnect): as
    /// [`MemoryStore::leave`] when it is still the member's current socket,
    /// otherwise nothing (the member rejoined from a newer one).
    pub fn depart(&self, session: &SessionId, user: &UserId, conn: &ConnId) -> Option<Left> {
        self.leave(session, user, conn).ok()
    }

    /// Removes every member of every session (at shutdown: every member is
    /// local to this process), returning who left where so that the departures can be announced once.
    pub fn remove_local_members(&self) -> Vec<Departures> {
        let sessions: Vec<_> = read(&self.shared.sessions).values().cloned().collect();
        let mut all = Vec::new();
        for session in sessions {
            let mut s = lock(&session);
            if s.members.is_empty() {
                continue;
            }
            s.public_keys.clear();
            let members = s
                .members
                .drain()
                .map(|(user, m)| (user, m.display_name, m.conn))
                .collect();
            all.push(Departures {
                session: s.id.clone(),
                members,
                remaining_keys: None,
            });
        }
        all
    }

    /// Evicts idle sessions; returns those that still had members, whose
    /// sockets must be told `SESSION_EXPIRED`.
    pub fn sweep(&self, now: Instant) -> Vec<Expired> {
        let limits = &self.shared.limits;
        let mut expired = Vec::new();
        let mut sessions = write(&self.shared.sessions);
        sessions.retain(|id, session| {
            let s = lock(session);
            let idle = now.saturating_duration_since(s.last_activity);
            let timeout = if s.members.is_empty() {
                limits.idle_timeout
            } else {
                limits.member_timeout
            };
            if idle < timeout {
                return true;
            }
            let wrapped = s.wrapped_bytes();
            self.shared
                .total_history_bytes
                .fetch_sub(s.history_bytes + wrapped, Ordering::Relaxed);
            self.shared
                .total_wrapped_bytes
                .fetch_sub(wrapped, Ordering::Relaxed);
            if !s.members.is_empty() {
                let conns = s.members.values().map(|m| m.conn.clone()).collect();
                expired.push(Expired {
                    session: id.clone(),
                    conns,
                });
            }
            false
        });
        expired
    }

    /// Test hook: panics while holding `session`'s lock, to show that a bug
    /// in a critical section neither takes the server down nor poisons the store.
    #[cfg(feature = "test-hooks")]
    pub fn panic_while_locked(&self, session: &SessionId) {
        if let Some(session) = self.get(session) {
            let _guard = lock(&session);
            panic!("test hook: panic inside a session lock");
        }
        panic!("test hook: panic without a session");
    }

    fn get(&self, id: &SessionId) -> Option<Arc<Mutex<Session>>> {
        read(&self.shared.sessions).get(id).cloned()
    }

    /// A new session, reserved until its creator joins.
    fn new_session(
        &self,
        id: SessionId,
        mode: ChatMode,
        auth_key: &str,
        password: Option<PasswordDigest>,
    ) -> Session {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        Session::new(id, seq, mode, auth_key, password)
    }

    /// A creator's join of an unknown id creates the session with the offered key.
    fn create_for_creator(
        &self,
        req: &JoinRequest,
        auth: &JoinAuth,
    ) -> Result<(Arc<Mutex<Session>>, bool), JoinError> {
        let Some(key) = req.offered_key.as_deref().filter(|k| !k.is_empty()) else {
            return Err(JoinError::InvalidKey);
        };
        let mut sessions = write(&self.shared.sessions);
        if let Some(existing) = sessions.get(&req.session) {
            // Created by another join between our look-up and this lock.
            return Ok((existing.clone(), false));
        }
        if sessions.len() >= self.shared.limits.max_sessions {
            return Err(JoinError::SessionLimit);
        }
        let session = Arc::new(Mutex::new(self.new_session(
            req.session.clone(),
            req.mode,
            key,
            auth.new_password,
        )));
        sessions.insert(req.session.clone(), session.clone());
        Ok((session, true))
    }

    /// Runs `f` on the session when `conn` is `user`'s current socket in it,
    /// and counts the call as activity when it succeeds.
    fn with_member<R>(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        f: impl FnOnce(&mut Session) -> Result<R, EventError>,
    ) -> Result<R, EventError> {
        let session = self.get(session).ok_or(EventError::NotInSession)?;
        let mut s = lock(&session);
        match s.members.get(user) {
            Some(member) if member.conn == *conn => {}
            _ => return Err(EventError::NotInSession),
        }
        let result = f(&mut s)?;
        s.last_activity = Instant::now();
        Ok(result)
    }
}
