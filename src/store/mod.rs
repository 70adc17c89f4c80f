//! The session store: one [`Store`] handle above two backends, with the
//! request and outcome types of every operation ([`types`]).
//!
//! - [`memory`]: every session in this process (the default, one node).
//! - [`redis`]: every session in Redis, shared by the nodes of a cluster.
//!
//! Each method is one atomic step of the contract (docs/PROTOCOL.md
//! section 5): the memory backend takes the session's lock, the Redis
//! backend runs one Lua script. Both apply the same rules
//! ([`crate::domain::rules`]). Refusals come back as the contract's errors;
//! a Redis that cannot be reached comes back as their `StoreUnavailable`
//! variant. Handlers do not know which backend runs, and backend-specific
//! details (Redis's departure ids and retries) stay inside the backend.

pub mod memory;
pub mod password;
pub mod redis;
pub mod types;

use std::sync::Arc;

use crate::domain::{
    ChatMode, ConnId, EventError, JoinError, PublicKeyEntry, RawJson, ReserveError, SessionId,
};
use crate::domain::{Unavailable, UserId, WrappedKeys};
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use types::*;

/// The session store the transport talks to, whichever backend holds it.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// Calls the same method on whichever backend runs; the memory backend's
/// methods are synchronous, the Redis backend's are awaited.
macro_rules! on_backend {
    ($store:expr, $method:ident($($arg:expr),*)) => {
        match $store {
            Store::Memory(m) => m.$method($($arg),*),
            Store::Redis(r) => r.$method($($arg),*).await,
        }
    };
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
        let password = match mode {
            ChatMode::Password => {
                let (key, cost) = (auth_key.to_owned(), self.limits().password_kdf);
                password::derive(move || password::new_password(mode, &key, cost)).await
            }
            ChatMode::Group | ChatMode::Private => None,
        };
        on_backend!(self, reserve(id, auth_key, mode, password))
    }

    /// `join-session` for socket `conn` (docs/PROTOCOL.md section 5, steps 2–10):
    /// checks the key or password, creates the session for its creator,
    /// admits or rebinds the member, stores its key, and returns what the
    /// joiner and the room must be sent.
    pub async fn join(&self, req: JoinRequest, conn: &ConnId, now_ms: u64) -> Result<Joined, JoinError> {
        let auth = self.join_auth(&req).await?;
        on_backend!(self, join(req, &auth, conn, now_ms))
    }

    /// Derives what the join's password checks need: the offered password
    /// with the room's salt, and the password of a room this join creates.
    async fn join_auth(&self, req: &JoinRequest) -> Result<JoinAuth, Unavailable> {
        let offers = !req.is_creator && req.offered_password.is_some();
        let creates = req.is_creator && req.may_create && req.mode == ChatMode::Password;
        if !offers && !creates {
            return Ok(JoinAuth::default());
        }
        let salt = match (offers, self) {
            (false, _) => None,
            (true, Self::Memory(m)) => m.password_salt(&req.session),
            (true, Self::Redis(r)) => r.password_salt(&req.session).await?,
        };
        let (req, cost) = (req.clone(), self.limits().password_kdf);
        Ok(password::derive(move || password::join_auth(&req, salt, cost)).await)
    }

    /// The bounds this store enforces.
    pub fn limits(&self) -> &Limits {
        match self {
            Self::Memory(m) => m.limits(),
            Self::Redis(r) => r.limits(),
        }
    }

    /// The next page of a joiner's history (see [`Joined::more_history`]);
    /// nothing once `conn` is no longer the member's socket.
    pub async fn history_page(
        &self,
        session: &SessionId,
        viewer: &UserId,
        conn: &ConnId,
        cursor: &HistoryCursor,
    ) -> Result<HistoryPage, Unavailable> {
        match self {
            Self::Memory(m) => Ok(m.history_page(session, viewer, conn, cursor)),
            Self::Redis(r) => r.history_page(session, viewer, conn, cursor).await,
        }
    }

    /// Which of `ids` are live sessions.
    pub async fn sessions_exist(&self, ids: &[SessionId]) -> Result<Vec<bool>, Unavailable> {
        match self {
            Self::Memory(m) => Ok(m.sessions_exist(ids)),
            Self::Redis(r) => r.sessions_exist(ids).await,
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
        key: RawJson,
        display_name: Option<Arc<str>>,
    ) -> Result<Vec<PublicKeyEntry>, EventError> {
        crate::domain::rules::require_public_key(&key)?;
        on_backend!(self, save_public_key(session, user, conn, key, display_name))
    }

    /// `set-session-key`: the creator of a group session replaces the
    /// wrapped keys (charged to the history budget; `STORE_FULL` when even
    /// evicting all history could not make room).
    pub async fn set_session_key(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        keys: WrappedKeys,
    ) -> Result<WrappedKeys, EventError> {
        on_backend!(self, set_session_key(session, user, conn, keys))
    }

    /// `send-message`: stores a new id once and says where the message goes.
    pub async fn send_message(
        &self,
        session: &SessionId,
        from: &UserId,
        conn: &ConnId,
        message: NewMessage,
        now_ms: u64,
        keep_original: bool,
    ) -> Result<Sent, EventError> {
        on_backend!(
            self,
            send_message(session, from, conn, message, now_ms, keep_original)
        )
    }

    /// `file-downloaded`: the socket of the member `sender`.
    pub async fn download_target(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        sender: &str,
    ) -> Result<ConnId, EventError> {
        on_backend!(self, download_target(session, user, conn, sender))
    }

    /// `typing` / `stopped-typing`: the member's display name.
    pub async fn typing(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<Option<Arc<str>>, EventError> {
        on_backend!(self, typing(session, user, conn))
    }

    /// Whether `conn` is `user`'s current socket in `session` (checked after
    /// a join put the socket in the session's room: a newer socket may have
    /// taken the seat meanwhile).
    pub async fn is_member_socket(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<bool, Unavailable> {
        match self.typing(session, user, conn).await {
            Ok(_) => Ok(true),
            Err(EventError::StoreUnavailable) => Err(Unavailable),
            Err(_) => Ok(false),
        }
    }

    /// `leave-session` or a socket's disconnect: removes the member and its
    /// key when `conn` is still the member's current socket (`None`
    /// otherwise: the member rejoined from a newer one, or is gone). The
    /// Redis backend retries while Redis is out of reach, for a while,
    /// without ever announcing one departure twice.
    pub async fn depart(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<Option<Left>, Unavailable> {
        match self {
            Self::Memory(m) => Ok(m.depart(session, user, conn)),
            Self::Redis(r) => r.depart(session, user, conn).await,
        }
    }

    /// At shutdown: removes the members connected to this node (every member,
    /// for the embedded store), so that their departures are announced once.
    pub async fn remove_local_members(&self) -> Result<Vec<Departures>, Unavailable> {
        match self {
            Self::Memory(m) => Ok(m.remove_local_members()),
            Self::Redis(r) => r.remove_local_members().await,
        }
    }

    /// Evicts idle sessions (docs/PROTOCOL.md section 4). In a cluster every
    /// node sweeps, and each session is evicted, and announced, by exactly one.
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
    #[cfg(feature = "test-hooks")]
    pub fn panic_while_locked(&self, session: &SessionId) {
        match self {
            Self::Memory(m) => m.panic_while_locked(session),
            Self::Redis(_) => panic!("test hook: panic in a handler"),
        }
    }
}
