//! Refusals of the domain, each with its wire code and message.
//!
//! Join failures travel as `session-error` (the stock client shows them and
//! leaves); everything else as the non-fatal `event-error`.

/// Why a `join-session` was refused (`session-error {error, message}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("Invalid join-session payload: {0}")]
    InvalidPayload(String),
    #[error("Session not found. Please check the session link.")]
    SessionNotFound,
    #[error("Session key mismatch. This should not happen.")]
    CreatorKeyMismatch,
    #[error("Invalid authentication key. Please check your link and try again.")]
    InvalidKey,
    #[error("Incorrect password. Please check and try again.")]
    InvalidPassword,
    #[error("Room not active yet. Please wait for the creator to join first.")]
    SessionNotActive,
    #[error("This room is full. Only 2 members allowed.")]
    SessionFull,
    #[error("This room is full. Only {0} members allowed.")]
    GroupFull(usize),
    #[error("The server holds too many sessions right now. Please try again later.")]
    SessionLimit,
    #[error("Too many open sessions from your network. Please try again later.")]
    AddressSessionLimit,
    #[error("Too many attempts. Please wait {} s and try again.", .0.as_secs().max(1))]
    RateLimited(std::time::Duration),
    #[error("This user is already connected to this session from another tab or device.")]
    MemberConnected(crate::domain::ConnId),
    #[error("This session expired after a long time without activity.")]
    SessionExpired,
    #[error("The session store is unavailable. Please try again in a moment.")]
    StoreUnavailable,
}

impl JoinError {
    /// The `error` field on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPayload(_) => "INVALID_PAYLOAD",
            Self::SessionNotFound => "SESSION_NOT_FOUND",
            Self::CreatorKeyMismatch | Self::InvalidKey => "INVALID_KEY",
            Self::InvalidPassword => "INVALID_PASSWORD",
            Self::SessionNotActive => "SESSION_NOT_ACTIVE",
            Self::SessionFull | Self::GroupFull(_) => "SESSION_FULL",
            Self::SessionLimit | Self::AddressSessionLimit => "SESSION_LIMIT",
            Self::RateLimited(_) => "RATE_LIMITED",
            Self::MemberConnected(_) => "ALREADY_CONNECTED",
            Self::SessionExpired => "SESSION_EXPIRED",
            Self::StoreUnavailable => STORE_UNAVAILABLE,
        }
    }
}

/// Why any other event was refused (`event-error {event, error, message}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("Invalid payload: {0}")]
    InvalidPayload(String),
    #[error("This socket has not joined that session.")]
    NotInSession,
    #[error("The user id does not match the joined user.")]
    UserMismatch,
    #[error("Only group sessions have a session key.")]
    NotGroupSession,
    #[error("Only the session's creator may set its key.")]
    NotCreator,
    #[error("The recipient is not a member of this session.")]
    UnknownRecipient,
    #[error("Unknown event.")]
    UnknownEvent,
    #[error("The server holds as much as it may keep right now. Please try again later.")]
    StoreFull,
    #[error("The session store is unavailable. Please try again in a moment.")]
    StoreUnavailable,
}

impl EventError {
    /// The `error` field on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPayload(_) => "INVALID_PAYLOAD",
            Self::NotInSession => "NOT_IN_SESSION",
            Self::UserMismatch | Self::NotGroupSession | Self::NotCreator => "NOT_ALLOWED",
            Self::UnknownRecipient => "UNKNOWN_RECIPIENT",
            Self::UnknownEvent => "UNKNOWN_EVENT",
            Self::StoreFull => "STORE_FULL",
            Self::StoreUnavailable => STORE_UNAVAILABLE,
        }
    }
}

/// Why `POST /api/reserve-session` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("Session already exists")]
    Exists,
    #[error("Session limit reached")]
    Limit,
    #[error("Session store unavailable")]
    StoreUnavailable,
}

/// The wire code of every refusal caused by a shared store that cannot be
/// reached (cluster mode only): the event was not applied; retrying later may work.
pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";

/// A shared store that did not answer in time or at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session store is unavailable")]
pub struct Unavailable;

impl From<Unavailable> for JoinError {
    fn from(_: Unavailable) -> Self {
        Self::StoreUnavailable
    }
}

impl From<Unavailable> for EventError {
    fn from(_: Unavailable) -> Self {
        Self::StoreUnavailable
    }
}

impl From<Unavailable> for ReserveError {
    fn from(_: Unavailable) -> Self {
        Self::StoreUnavailable
    }
}
