//! The session store's interface: what every backend answers, and the
//! [`Store`] handle the transport calls. Two backends: [`MemoryStore`] (this
//! process, the default) and [`RedisStore`](crate::redis::RedisStore)
//! (shared by every node of a cluster). Handlers do not know which one runs.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::error::{EventError, JoinError, ReserveError, Unavailable};
use super::ids::{ChatMode, ConnId, SessionId, UserId};
use super::memory::MemoryStore;
use super::message::{Message, PublicKeyEntry};
use crate::redis::{LeaveBy, RedisStore};

/// Bounds the store enforces; all come from [`crate::Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_group_members: usize,
    pub max_history_messages: usize,
    pub max_history_bytes: usize,
    /// History bytes of all sessions together.
    pub max_total_history_bytes: usize,
    pub idle_timeout: Duration,
    pub member_timeout: Duration,
}

/// A `join-session` after its payload was parsed.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub session: SessionId,
    pub user: UserId,
    pub display_name: Option<Arc<str>>,
    /// Stored only when truthy (the stock client rejoins with `null`).
    pub public_key: Option<Value>,
    pub is_creator: bool,
    pub offered_key: Option<String>,
    pub offered_password: Option<String>,
    /// The mode a creator's join creates an unknown session with.
    pub mode: ChatMode,
}

/// How a successful join relates to what was there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinKind {
    /// A new member: the others are told.
    New,
    /// A member back from a new socket; `previous` must leave the room.
    Rejoined { previous: ConnId },
    /// The same socket joined again: nothing changes.
    Repeat,
}

/// What a successful join must send.
#[derive(Debug)]
pub struct Joined {
    pub kind: JoinKind,
    pub mode: ChatMode,
    pub display_name: Option<Arc<str>>,
    /// Messages this member may see, oldest first.
    pub history: Vec<Arc<Message>>,
    /// The group key wrapped for this member, when one was set.
    pub encrypted_session_key: Option<Value>,
    /// Every stored key, for the whole room.
    pub public_keys: Vec<PublicKeyEntry>,
    pub timestamp: u64,
}

/// A `send-message` after its payload was parsed.
#[derive(Debug)]
pub struct Outgoing {
    pub to: Option<Arc<str>>,
    pub encrypted: Value,
    pub original_content: Option<Value>,
    pub kind: Option<Arc<str>>,
    pub client_message_id: Option<Arc<str>>,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Every other member of the session.
    Others,
    /// One member's current socket.
    Conn(ConnId),
}

/// What an accepted `send-message` must send.
#[derive(Debug)]
pub struct Sent {
    pub message: Arc<Message>,
    /// False for a repeat of an id already in history: no `message-sent`.
    pub is_new: bool,
    pub route: Route,
}

/// What a departure must announce.
#[derive(Debug)]
pub struct Left {
    pub display_name: Option<Arc<str>>,
    /// The keys that remain.
    pub public_keys: Vec<PublicKeyEntry>,
}

/// Members removed from one session at once: `(user, display name, socket)`.
#[derive(Debug)]
pub struct Departures {
    pub session: SessionId,
    pub members: Vec<(UserId, Option<Arc<str>>, ConnId)>,
    /// The keys that remain, when members remain to be told (members of
    /// other nodes in a cluster); `None` when everyone left.
    pub remaining_keys: Option<Vec<PublicKeyEntry>>,
}

/// What one eviction sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Sessions evicted, with or without members.
    pub evicted: usize,
    /// Those that still had members.
    pub expired: Vec<Expired>,
}

/// A session evicted while members were still connected.
#[derive(Debug)]
pub struct Expired {
    pub session: SessionId,
    pub conns: Vec<ConnId>,
}

/// Gauges of the store's state.
#[derive(Debug)]
pub struct StoreStats {
    /// Live sessions.
    pub sessions: usize,
    /// Live sessions by mode, when the backend counts them.
    pub sessions_by_mode: Vec<(ChatMode, usize)>,
    pub members: usize,
    pub history_bytes: usize,
}

/// One row of the debug listing; no secrets, no contents.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummary {
    pub session_id: SessionId,
    pub members: usize,
    pub messages: usize,
    pub public_keys: usize,
}

/// JavaScript truthiness, as the original tested `publicKey`.
pub fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The session store the transport talks to, whichever backend holds it.
///
/// Every method is one atomic step of the contract: the in-memory backend
/// takes the session's lock, the Redis backend runs one Lua script (one
/// round trip). Refusals come back as the contract's errors; a Redis that
/// cannot be reached comes back as their `StoreUnavailable` variant.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// The embedded store of a single node.
    pub fn memory(limits: Limits) -> Self {
        Self::Memory(MemoryStore::new(limits))
    }

    /// Whether other nodes share this store (and so the sockets of a
    /// session may be connected to other nodes).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    /// Number of live sessions.
    pub async fn session_count(&self) -> Result<usize, Unavailable> {
        match self {
            Self::Memory(m) => Ok(m.session_count()),
            Self::Redis(r) => r.session_count().await,
        }
    }

    /// Gauges for metrics.
    pub async fn stats(&self) -> Result<StoreStats, Unavailable> {
        match self {
            Self::Memory(m) => Ok(m.stats()),
            Self::Redis(r) => r.stats().await,
        }
    }

    /// The debug listing, in creation order.
    pub async fn summaries(&self) -> Result<Vec<SessionSummary>, Unavailable> {
        match self {
            Self::Memory(m) => Ok(m.summaries()),
            Self::Redis(r) => r.summaries().await,
        }
    }

    /// `POST /api/reserve-session`.
    pub async fn reserve(&self, id: SessionId, auth_key: &str, mode: ChatMode) -> Result<(), ReserveError> {
        match self {
            Self::Memory(m) => m.reserve(id, auth_key, mode),
            Self::Redis(r) => r.reserve(id, auth_key, mode).await,
        }
    }

    /// `join-session` for socket `conn`.
    pub async fn join(&self, req: JoinRequest, conn: &ConnId, now_ms: u64) -> Result<Joined, JoinError> {
        match self {
            Self::Memory(m) => m.join(req, conn, now_ms),
            Self::Redis(r) => r.join(req, conn, now_ms).await,
        }
    }

    /// `get-public-keys`: every key but the requester's; nothing for a non-member.
    pub async fn public_keys_for(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<Vec<PublicKeyEntry>, EventError> {
        match self {
            Self::Memory(m) => Ok(m.public_keys_for(session, user, conn)),
            Self::Redis(r) => r.public_keys_for(session, user, conn).await,
        }
    }

    /// `save-public-key`: returns every key for the room.
    pub async fn save_public_key(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        key: Value,
        display_name: Option<Arc<str>>,
    ) -> Result<Vec<PublicKeyEntry>, EventError> {
        match self {
            Self::Memory(m) => m.save_public_key(session, user, conn, key, display_name),
            Self::Redis(r) => r.save_public_key(session, user, conn, key, display_name).await,
        }
    }

    /// `set-session-key`: the creator of a group session replaces the wrapped keys.
    pub async fn set_session_key(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        keys: serde_json::Map<String, Value>,
    ) -> Result<Arc<serde_json::Map<String, Value>>, EventError> {
        match self {
            Self::Memory(m) => m.set_session_key(session, user, conn, keys),
            Self::Redis(r) => r.set_session_key(session, user, conn, keys).await,
        }
    }

    /// `send-message`: stores a new id once and says where the message goes.
    pub async fn send_message(
        &self,
        session: &SessionId,
        from: &UserId,
        conn: &ConnId,
        out: Outgoing,
        now_ms: u64,
        keep_original: bool,
    ) -> Result<Sent, EventError> {
        match self {
            Self::Memory(m) => m.send_message(session, from, conn, out, now_ms, keep_original),
            Self::Redis(r) => {
                r.send_message(session, from, conn, out, now_ms, keep_original)
                    .await
            }
        }
    }

    /// `file-downloaded`: the socket of the member `sender`.
    pub async fn download_target(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        sender: &str,
    ) -> Result<ConnId, EventError> {
        match self {
            Self::Memory(m) => m.download_target(session, user, conn, sender),
            Self::Redis(r) => r.download_target(session, user, conn, sender).await,
        }
    }

    /// `typing` / `stopped-typing`: the member's display name.
    pub async fn typing(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<Option<Arc<str>>, EventError> {
        match self {
            Self::Memory(m) => m.typing(session, user, conn),
            Self::Redis(r) => r.typing(session, user, conn).await,
        }
    }

    /// `leave-session`: removes the member and its key.
    pub async fn leave(&self, session: &SessionId, user: &UserId, conn: &ConnId) -> Result<Left, EventError> {
        match self {
            Self::Memory(m) => m.leave(session, user, conn),
            Self::Redis(r) => r.leave(session, user, conn).await,
        }
    }

    /// A socket's disconnect: a leave when it is still the member's current
    /// socket, otherwise nothing. `departure` names this departure, the
    /// same for every attempt; `retry` when an earlier attempt failed with
    /// [`Unavailable`] (it may have been applied).
    pub async fn disconnect(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        departure: &str,
        retry: bool,
    ) -> Result<Option<Left>, Unavailable> {
        let left = match self {
            Self::Memory(m) => m.leave(session, user, conn),
            Self::Redis(r) => {
                let by = if retry { LeaveBy::Retry } else { LeaveBy::Member };
                r.leave_as(session, user, conn, by, departure).await
            }
        };
        match left {
            Ok(left) => Ok(Some(left)),
            Err(EventError::StoreUnavailable) => Err(Unavailable),
            Err(_) => Ok(None),
        }
    }

    /// At shutdown: removes the members connected to this node (every member,
    /// for the embedded store), so that their departures are announced once.
    pub async fn remove_own_members(&self) -> Result<Vec<Departures>, Unavailable> {
        match self {
            Self::Memory(m) => Ok(m.remove_all_members()),
            Self::Redis(r) => r.remove_node_members(None).await,
        }
    }

    /// Evicts idle sessions (CONTRACT.md section 4). In a cluster every node
    /// sweeps, and each session is evicted, and announced, by exactly one.
    pub async fn sweep(&self) -> Result<Sweep, Unavailable> {
        match self {
            Self::Memory(m) => {
                let before = m.session_count();
                let expired = m.sweep(tokio::time::Instant::now());
                let evicted = before.saturating_sub(m.session_count());
                Ok(Sweep { evicted, expired })
            }
            Self::Redis(r) => r.sweep().await,
        }
    }

    /// Test hook: see [`MemoryStore::panic_while_locked`].
    #[doc(hidden)]
    pub fn panic_while_locked(&self, session: &SessionId) {
        match self {
            Self::Memory(m) => m.panic_while_locked(session),
            Self::Redis(_) => panic!("test hook: panic in a handler"),
        }
    }
}
