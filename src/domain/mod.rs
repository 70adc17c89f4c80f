//! The chat domain: sessions, members, keys and history, with no transport
//! types. Handlers parse the wire into these types and turn the outcomes of
//! [`store::Store`] methods into emits.

pub mod error;
pub mod ids;
pub mod memory;
pub mod message;
pub mod store;

pub use error::{EventError, JoinError, ReserveError, Unavailable};
pub use ids::{ChatMode, ConnId, SessionId, UserId};
pub use memory::MemoryStore;
pub use message::{Message, PublicKeyEntry};
pub use store::Store;

/// Milliseconds since the Unix epoch, the unit of every wire timestamp.
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
