//! The chat domain: identifiers, messages, refusals and the contract's pure
//! rules, with no transport and no storage types. The store layer
//! ([`crate::store`]) applies these rules in each backend; the socket layer
//! parses the wire into these types.

pub mod error;
pub mod ids;
pub mod message;
pub mod raw;
pub mod rules;
pub mod secret;

pub use error::{EventError, JoinError, ReserveError, Unavailable};
pub use ids::{ChatMode, ConnId, SessionId, UserId};
pub use message::{Message, MessageView, PublicKeyEntry};
pub use raw::{RawJson, WrappedKeys};
pub use secret::{PasswordDigest, SecretDigest};

/// Milliseconds since the Unix epoch, the unit of every wire timestamp.
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
