//! The event operations of the Redis backend, one script call each (see
//! [`scripts`](super::scripts) for what each script does in Redis).

use std::sync::Arc;

use redis::{Script, ScriptInvocation};
use tokio::time::Instant;

use super::codec::{
    event_refusal, flag, join_refusal, opt_arg, public_keys, raw_opt, secret_arg, text, Reply, StoredMessage,
};
use super::{LeaveBy, RedisStore};
use crate::domain::rules;
use crate::domain::secret::Salt;
use crate::domain::PasswordDigest;
use crate::domain::{
    ChatMode, ConnId, EventError, JoinError, Message, PublicKeyEntry, RawJson, ReserveError, SessionId,
    Unavailable, UserId, WrappedKeys,
};
use crate::store::types::{CursorAt, AUTH_FAILURE_WINDOW_MS};
use crate::store::{
    HistoryCursor, HistoryPage, JoinAuth, JoinKind, JoinRequest, Joined, Left, NewMessage, Route, Sent,
    SessionSummary, StoreStats,
};

/// How long a departure is retried while Redis is out of reach; one still
/// not recorded then is found by the node's reconciliation once Redis is
/// back (see `cluster::reconcile`).
const DEPARTURE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
/// Pause between two attempts.
const DEPARTURE_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

impl RedisStore {
    pub async fn session_count(&self) -> Result<usize, Unavailable> {
        self.query(redis::cmd("ZCARD").arg(self.key("sessions"))).await
    }

    /// Sessions in the cluster and members connected to this node (summed
    /// over the nodes, that is every member). Per-mode counts and history
    /// bytes are not tracked in Redis.
    pub async fn stats(&self) -> Result<StoreStats, Unavailable> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZCARD")
            .arg(self.key("sessions"))
            .cmd("SCARD")
            .arg(self.node_members_key(&self.inner.node))
            .cmd("GET")
            .arg(self.key("hbtotal"));
        self.gate()?;
        let mut conn = self.inner.conn.clone();
        let (sessions, members, history_bytes): (usize, usize, Option<usize>) =
            self.bounded(pipe.query_async(&mut conn)).await?;
        Ok(StoreStats {
            sessions,
            sessions_by_mode: Vec::new(),
            members,
            history_bytes: history_bytes.unwrap_or(0),
        })
    }

    fn node_members_key(&self, node: &str) -> String {
        self.key(&format!("node:{node}:m"))
    }

    fn session_key(&self, id: &str) -> String {
        self.key(&format!("s:{{{id}}}"))
    }

    /// The debug listing (`DEBUG=true` only): one round trip per session.
    pub async fn summaries(&self) -> Result<Vec<SessionSummary>, Unavailable> {
        let ids: Vec<String> = self
            .query(redis::cmd("ZRANGE").arg(self.key("sessions")).arg(0).arg(-1))
            .await?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(session_id) = SessionId::parse(&id) else {
                continue;
            };
            let base = self.session_key(&id);
            let mut pipe = redis::pipe();
            pipe.cmd("HLEN")
                .arg(format!("{base}:m"))
                .cmd("LLEN")
                .arg(format!("{base}:h"))
                .cmd("HLEN")
                .arg(format!("{base}:k"));
            let mut conn = self.inner.conn.clone();
            let (members, messages, public_keys) = self.bounded(pipe.query_async(&mut conn)).await?;
            rows.push(SessionSummary {
                session_id,
                members,
                messages,
                public_keys,
            });
        }
        Ok(rows)
    }

    pub async fn reserve(
        &self,
        id: SessionId,
        auth_key: &str,
        mode: ChatMode,
        password: Option<PasswordDigest>,
    ) -> Result<(), ReserveError> {
        let mut inv = self.invocation(&self.inner.scripts.reserve);
        inv.arg(id.as_str())
            .arg(mode.as_str())
            .arg(secret_arg(Some(auth_key)))
            .arg(password.map(|p| p.to_hex()).unwrap_or_default())
            .arg(self.inner.limits.max_sessions);
        match self.run(inv).await?.0.as_str() {
            "ok" => Ok(()),
            "EXISTS" => Err(ReserveError::Exists),
            _ => Err(ReserveError::Limit),
        }
    }

    /// The salt of the session's room password, when it has one.
    pub async fn password_salt(&self, session: &SessionId) -> Result<Option<Salt>, Unavailable> {
        let stored: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.session_key(session.as_str()))
                    .arg("pw"),
            )
            .await?;
        Ok(stored.as_deref().and_then(PasswordDigest::salt_from_hex))
    }

    pub async fn join(
        &self,
        req: JoinRequest,
        auth: &JoinAuth,
        conn: &ConnId,
        now_ms: u64,
    ) -> Result<Joined, JoinError> {
        let offered_key = req.offered_key.as_deref().unwrap_or_default();
        let public_key = req
            .public_key
            .as_deref()
            .filter(|k| crate::domain::raw::is_truthy(k))
            .map_or("", |k| k.get());
        let limits = &self.inner.limits;
        let mut inv = self.invocation_at(&self.inner.scripts.join, now_ms);
        inv.arg(req.session.as_str())
            .arg(req.user.as_str())
            .arg(conn.as_str())
            .arg(&self.inner.node)
            .arg(flag(req.is_creator))
            .arg(secret_arg(Some(offered_key)))
            .arg(flag(!offered_key.is_empty()))
            .arg(auth.offered_password.map(|p| p.hash_hex()).unwrap_or_default())
            .arg(req.mode.as_str())
            .arg(auth.new_password.map(|p| p.to_hex()).unwrap_or_default())
            .arg(limits.max_sessions)
            .arg(limits.max_group_members)
            .arg(opt_arg(req.display_name.as_deref()))
            .arg(public_key)
            .arg(limits.history_page_bytes)
            .arg(flag(req.may_create))
            .arg(limits.auth_failures_per_session_per_min)
            .arg(AUTH_FAILURE_WINDOW_MS)
            .arg(req.replacing.as_ref().map_or("", ConnId::as_str));
        let (status, mut r) = self.run(inv).await?;
        match status.as_str() {
            "ok" => {}
            "RATE_LIMITED" => {
                let wait = r.string().parse().unwrap_or(AUTH_FAILURE_WINDOW_MS);
                return Err(JoinError::RateLimited(std::time::Duration::from_millis(wait)));
            }
            "MEMBER_CONNECTED" => return Err(JoinError::MemberConnected(ConnId::new(r.string()))),
            "SESSION_FULL" => {
                let mode = ChatMode::parse(&r.string()).unwrap_or_default();
                let capacity = r.string().parse().unwrap_or(rules::PAIR_SESSION_SIZE);
                return Err(rules::session_full(mode, capacity));
            }
            code => return Err(join_refusal(code)),
        }
        let kind = match (r.string().as_str(), r.string()) {
            ("new", _) => JoinKind::New,
            ("repeat", _) => JoinKind::Repeat,
            (_, previous) => JoinKind::Rejoined {
                previous: ConnId::new(previous),
            },
        };
        let mode = ChatMode::parse(&r.string()).unwrap_or_default();
        let display_name = r.opt();
        let encrypted_session_key = raw_opt(r.opt());
        let public_keys = public_keys(r.list());
        let page = read_page(&mut r, &req.user);
        Ok(Joined {
            kind,
            mode,
            display_name,
            history: page.messages,
            more_history: page.next,
            encrypted_session_key,
            created: r.string() == "1",
            public_keys,
            timestamp: now_ms,
        })
    }

    /// The next page of `viewer`'s history; nothing once `conn` is no
    /// longer the member's socket.
    pub async fn history_page(
        &self,
        session: &SessionId,
        viewer: &UserId,
        conn: &ConnId,
        cursor: &HistoryCursor,
    ) -> Result<HistoryPage, Unavailable> {
        // No index entry is empty: the start is found nowhere, as a trimmed one.
        let entry = match &cursor.0 {
            CursorAt::Entry(entry) => entry.as_str(),
            CursorAt::Start => "",
            CursorAt::Seq(_) => return Ok(HistoryPage::default()),
        };
        let mut inv = self.invocation(&self.inner.scripts.history_page);
        inv.arg(session.as_str())
            .arg(viewer.as_str())
            .arg(conn.as_str())
            .arg(entry)
            .arg(self.inner.limits.history_page_bytes);
        let (status, mut r) = self.run(inv).await?;
        if status != "ok" {
            return Ok(HistoryPage::default());
        }
        Ok(read_page(&mut r, viewer))
    }

    /// Which of `ids` are live sessions.
    pub async fn sessions_exist(&self, ids: &[SessionId]) -> Result<Vec<bool>, Unavailable> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("EXISTS").arg(self.session_key(id.as_str()));
        }
        self.gate()?;
        let mut conn = self.inner.conn.clone();
        self.bounded(pipe.query_async(&mut conn)).await
    }

    /// A member-only script: refusals map to the contract's event errors.
    async fn member_op(
        &self,
        script: &Script,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        extra: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<Reply, EventError> {
        let mut inv = self.invocation(script);
        inv.arg(session.as_str()).arg(user.as_str()).arg(conn.as_str());
        extra(&mut inv);
        match self.run(inv).await? {
            (status, reply) if status == "ok" => Ok(reply),
            (code, _) => Err(event_refusal(&code)),
        }
    }

    pub async fn public_keys_for(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<Vec<PublicKeyEntry>, EventError> {
        match self
            .member_op(&self.inner.scripts.public_keys, session, user, conn, |_| {})
            .await
        {
            Ok(mut r) => Ok(rules::keys_except(public_keys(r.list()), user)),
            Err(EventError::StoreUnavailable) => Err(EventError::StoreUnavailable),
            Err(_) => Ok(Vec::new()),
        }
    }

    pub async fn save_public_key(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        key: RawJson,
        display_name: Option<Arc<str>>,
    ) -> Result<Vec<PublicKeyEntry>, EventError> {
        rules::require_public_key(&key)?;
        let mut r = self
            .member_op(&self.inner.scripts.save_key, session, user, conn, |inv| {
                inv.arg(opt_arg(display_name.as_deref())).arg(key.get());
            })
            .await?;
        Ok(public_keys(r.list()))
    }

    pub async fn set_session_key(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        keys: WrappedKeys,
    ) -> Result<WrappedKeys, EventError> {
        let budget = self.inner.limits.max_total_history_bytes;
        self.member_op(&self.inner.scripts.set_session_key, session, user, conn, |inv| {
            inv.arg(keys.weight()).arg(budget);
            for (user, wrapped) in keys.entries() {
                inv.arg(user).arg(wrapped.get());
            }
        })
        .await?;
        Ok(keys)
    }

    pub async fn send_message(
        &self,
        session: &SessionId,
        from: &UserId,
        conn: &ConnId,
        message: NewMessage,
        now_ms: u64,
        keep_original: bool,
    ) -> Result<Sent, EventError> {
        let mut message = message.into_message(from.clone(), None, now_ms, keep_original);
        let to: Option<Arc<str>> = rules::direct_recipient(message.to.as_deref()).map(Into::into);
        // Serialized once, without the sender's name (the script adds the
        // name it holds): the ciphertext is copied into Redis and nowhere else.
        let stored = serde_json::to_string(&message.stored())
            .map_err(|e| EventError::InvalidPayload(e.to_string()))?;
        let limits = &self.inner.limits;
        let mut r = self
            .member_op(&self.inner.scripts.send_message, session, from, conn, |inv| {
                inv.arg(opt_arg(to.as_deref()))
                    .arg(&*message.id)
                    .arg(stored)
                    .arg(message.weight())
                    .arg(limits.max_history_messages)
                    .arg(limits.max_history_bytes)
                    .arg(limits.max_total_history_bytes);
            })
            .await?;
        let is_new = r.string() == "1";
        let route = match r.string() {
            conn if to.is_some() => Route::Conn(ConnId::new(conn)),
            _ => Route::Others,
        };
        message.sender_display_name = r.opt();
        Ok(Sent {
            message: Arc::new(message),
            is_new,
            route,
        })
    }

    pub async fn download_target(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        sender: &str,
    ) -> Result<ConnId, EventError> {
        let mut r = self
            .member_op(&self.inner.scripts.download_target, session, user, conn, |inv| {
                inv.arg(sender);
            })
            .await?;
        Ok(ConnId::new(r.string()))
    }

    pub async fn typing(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<Option<Arc<str>>, EventError> {
        let mut r = self
            .member_op(&self.inner.scripts.typing, session, user, conn, |_| {})
            .await?;
        Ok(r.opt())
    }

    /// See [`Store::depart`](crate::store::Store::depart): one departure id
    /// for every attempt, so that an attempt applied by Redis whose answer
    /// was lost is answered again, not applied twice or never announced.
    pub async fn depart(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<Option<Left>, Unavailable> {
        let deadline = Instant::now() + DEPARTURE_PATIENCE;
        let departure = uuid::Uuid::new_v4().simple().to_string();
        let mut by = LeaveBy::Member;
        loop {
            match self.leave_as(session, user, conn, by, &departure).await {
                Ok(left) => return Ok(Some(left)),
                Err(EventError::StoreUnavailable) if Instant::now() < deadline => {
                    by = LeaveBy::Retry;
                    tokio::time::sleep(DEPARTURE_RETRY).await;
                }
                Err(EventError::StoreUnavailable) => return Err(Unavailable),
                Err(_) => return Ok(None),
            }
        }
    }

    /// The leave of a member whose socket closed while Redis was lost, by
    /// the node's reconciliation (never taken by a later retry).
    pub async fn reconcile_leave(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
    ) -> Result<Left, EventError> {
        self.leave_as(session, user, conn, LeaveBy::Reconciliation, "")
            .await
    }

    /// A leave; see [`LeaveBy`] and [`scripts::LEAVE`](super::scripts::LEAVE).
    async fn leave_as(
        &self,
        session: &SessionId,
        user: &UserId,
        conn: &ConnId,
        by: LeaveBy,
        departure: &str,
    ) -> Result<Left, EventError> {
        let mode = match by {
            LeaveBy::Member => "0",
            LeaveBy::Retry => "1",
            LeaveBy::Reconciliation => "2",
        };
        let mut r = self
            .member_op(&self.inner.scripts.leave, session, user, conn, |inv| {
                inv.arg(mode).arg(departure);
            })
            .await?;
        Ok(Left {
            display_name: r.opt(),
            public_keys: public_keys(r.list()),
        })
    }
}

/// A page of history as a script answers it: the stored messages (those
/// `viewer` may see are kept), the index entry of the last, whether more follow.
fn read_page(r: &mut Reply, viewer: &UserId) -> HistoryPage {
    let messages = r
        .list()
        .into_iter()
        .filter_map(|v| serde_json::from_slice::<StoredMessage>(text(v).as_bytes()).ok())
        .map(Message::from)
        .filter(|m| m.visible_to(viewer))
        .map(Arc::new)
        .collect();
    let last = r.string();
    let more = r.string() == "1";
    HistoryPage {
        messages,
        next: (more && !last.is_empty()).then_some(HistoryCursor(CursorAt::Entry(last))),
    }
}
