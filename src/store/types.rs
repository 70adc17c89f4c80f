//! The request and outcome types of the store: what a handler asks of
//! [`Store`](super::Store) and what it gets back to emit.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::domain::rules;
use crate::domain::secret::KdfCost;
use crate::domain::{ChatMode, ConnId, Message, PasswordDigest, PublicKeyEntry, RawJson, SessionId, UserId};

/// History bytes (by [`Message::weight`]) of one `messages-history` event: a
/// joiner gets its history page by page, each sent once the one before has
/// been written. Small on purpose: tungstenite keeps a WebSocket's output
/// buffer at the size of the largest frame it ever wrote, for the life of
/// the connection (docs/PROTOCOL.md, "Facts about the stack", point 4).
pub const HISTORY_PAGE_BYTES: usize = 16 * 1024;

/// Bounds the store enforces; from [`crate::Config`] but the page size.
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
    /// What deriving a room password's digest costs (Argon2id):
    /// [`KdfCost::STANDARD`] but in tests.
    pub password_kdf: KdfCost,
    /// `AUTH_FAILURES_PER_SESSION_PER_MIN`: wrong keys and passwords one
    /// session takes per minute; past it, joins wait (0 = no limit).
    pub auth_failures_per_session_per_min: u32,
    /// Most history bytes (by [`Message::weight`]) one page holds: a join
    /// answers the first page, [`Store::history_page`](super::Store::history_page)
    /// the others, one `messages-history` event each. A larger message
    /// makes a page of its own.
    pub history_page_bytes: usize,
}

#[cfg(test)]
impl Limits {
    /// Roomy bounds for unit tests, with the cheapest password derivation.
    pub fn for_tests() -> Self {
        Self {
            max_sessions: 100,
            max_group_members: 10,
            max_history_messages: 10,
            max_history_bytes: 1 << 20,
            max_total_history_bytes: 1 << 30,
            idle_timeout: Duration::from_secs(1800),
            member_timeout: Duration::from_secs(7200),
            history_page_bytes: 1 << 14,
            auth_failures_per_session_per_min: 0,
            password_kdf: crate::domain::secret::KdfCost::CHEAPEST,
        }
    }
}

/// A `join-session` after its payload was parsed.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub session: SessionId,
    pub user: UserId,
    pub display_name: Option<Arc<str>>,
    /// Stored only when truthy (the stock client rejoins with `null`).
    pub public_key: Option<RawJson>,
    pub is_creator: bool,
    pub offered_key: Option<String>,
    pub offered_password: Option<String>,
    /// The mode a creator's join creates an unknown session with.
    pub mode: ChatMode,
    /// Whether a creator's join of an unknown id may create the session
    /// (the caller has charged the creation to the client's address);
    /// otherwise it is refused `SESSION_NOT_FOUND` like anyone's.
    pub may_create: bool,
    /// The member's previous socket, which the caller found gone: only then
    /// may a join from another socket take the member's seat (its key, name
    /// and creator rights). Without it, such a join is refused
    /// [`JoinError::MemberConnected`] and nothing changes.
    pub replacing: Option<ConnId>,
}

/// What a join's checks need that is slow to derive, derived by
/// [`Store::join`](super::Store::join) before the backend's atomic step.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinAuth {
    /// The offered password, derived with the room's salt (when it has one).
    pub offered_password: Option<PasswordDigest>,
    /// The password of a password room this join may create.
    pub new_password: Option<PasswordDigest>,
}

/// Wrong keys and passwords a session took in the current minute: past the
/// limit, joins wait (`RATE_LIMITED`) without being checked, so guessing is
/// slowed whatever addresses it comes from. Counted the same way in both
/// stores (fixed one-minute windows of the caller's clock).
pub const AUTH_FAILURE_WINDOW_MS: u64 = 60_000;

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
    /// The first page of the messages this member may see, oldest first.
    pub history: Vec<Arc<Message>>,
    /// Where the rest of the history starts, when there is more.
    pub more_history: Option<HistoryCursor>,
    /// The group key wrapped for this member, when one was set.
    pub encrypted_session_key: Option<RawJson>,
    /// Whether this join created the session.
    pub created: bool,
    /// Every stored key, for the whole room.
    pub public_keys: Vec<PublicKeyEntry>,
    pub timestamp: u64,
}

/// A `send-message` after its payload was parsed: a message coming in,
/// before the store gives it its id, time and sender.
#[derive(Debug)]
pub struct NewMessage {
    pub to: Option<Arc<str>>,
    pub encrypted: RawJson,
    pub original_content: Option<RawJson>,
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
            original_content: if keep_original {
                self.original_content
            } else {
                None
            },
        }
    }
}

/// Where a member's history replay goes on: opaque to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCursor(pub(super) CursorAt);

impl HistoryCursor {
    /// The start of a history, whichever store holds it.
    pub fn start() -> Self {
        Self(CursorAt::Start)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CursorAt {
    /// The oldest message held.
    Start,
    /// The embedded store: the sequence number of the next message.
    Seq(u64),
    /// The Redis store: the index entry of the last message sent.
    Entry(String),
}

/// One page of a member's history.
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// The messages of the page this member may see, oldest first (a page
    /// can hold none: messages between other members).
    pub messages: Vec<Arc<Message>>,
    /// Where the next page starts, when there is more.
    pub next: Option<HistoryCursor>,
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
