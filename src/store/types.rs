//! The request and outcome types of the store: what a handler asks of
//! [`Store`](super::Store) and what it gets back to emit.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::domain::rules;
use crate::domain::{ChatMode, ConnId, Message, PublicKeyEntry, SessionId, UserId};

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

/// A `send-message` after its payload was parsed: a message coming in,
/// before the store gives it its id, time and sender.
#[derive(Debug)]
pub struct NewMessage {
    pub to: Option<Arc<str>>,
    pub encrypted: Value,
    pub original_content: Option<Value>,
    pub kind: Option<Arc<str>>,
    pub client_message_id: Option<Arc<str>>,
}

impl NewMessage {
    /// The message as both backends store it: the client's id or a fresh
    /// one, `type` defaulting to `text`, the plaintext only when
    /// `keep_original` (`ORIGINAL_CONTENT=author`).
    pub fn into_message(
        self,
        from: UserId,
        sender_display_name: Option<Arc<str>>,
        now_ms: u64,
        keep_original: bool,
    ) -> Message {
        Message {
            id: rules::message_id(self.client_message_id),
            from,
            to: self.to,
            encrypted: self.encrypted,
            timestamp: now_ms,
            kind: self.kind.unwrap_or_else(|| rules::DEFAULT_MESSAGE_KIND.into()),
            sender_display_name,
            original_content: if keep_original { self.original_content } else { None },
        }
    }
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
