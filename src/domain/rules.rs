//! The contract's rules that both store backends apply the same way: who
//! fits in a session, what a message gets by default, where it goes, which
//! keys a member is shown. Pure functions, no state (docs/PROTOCOL.md
//! sections 4 and 5).

use std::sync::Arc;

use serde_json::value::RawValue;

use super::error::{EventError, JoinError};
use super::ids::{ChatMode, UserId};
use super::message::PublicKeyEntry;
use super::raw::is_truthy;

/// Members of a `private` or `password` session.
pub const PAIR_SESSION_SIZE: usize = 2;

/// The `type` of a message whose client sent none.
pub const DEFAULT_MESSAGE_KIND: &str = "text";

/// The `to` that addresses every other member, as absent does.
pub const TO_EVERYONE: &str = "all";

/// How many members a session of `mode` takes.
pub fn capacity(mode: ChatMode, max_group_members: usize) -> usize {
    match mode {
        ChatMode::Group => max_group_members,
        ChatMode::Private | ChatMode::Password => PAIR_SESSION_SIZE,
    }
}

/// The refusal of a newcomer to a session of `mode` that holds `capacity` members.
pub fn session_full(mode: ChatMode, capacity: usize) -> JoinError {
    match mode {
        ChatMode::Group => JoinError::GroupFull(capacity),
        ChatMode::Private | ChatMode::Password => JoinError::SessionFull,
    }
}

/// In `password` mode the `authKey` is `<key>:<password>`, and joiners prove
/// the password part; no other mode has a password.
pub fn room_password(mode: ChatMode, auth_key: &str) -> Option<&str> {
    match mode {
        ChatMode::Password => auth_key.split_once(':').map(|(_, password)| password),
        ChatMode::Group | ChatMode::Private => None,
    }
}

/// The one member a message's `to` names, or `None` when it goes to every
/// other member (absent or `"all"`).
pub fn direct_recipient(to: Option<&str>) -> Option<&str> {
    to.filter(|to| *to != TO_EVERYONE)
}

/// The id of a new message: the client's `clientMessageId`, or a fresh UUID.
pub fn message_id(client_message_id: Option<Arc<str>>) -> Arc<str> {
    client_message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string().into())
}

/// `save-public-key` needs a key to save (a truthy one, as the original
/// tested it).
pub fn require_public_key(key: &RawValue) -> Result<(), EventError> {
    if is_truthy(key) {
        Ok(())
    } else {
        Err(EventError::InvalidPayload(
            "publicKey must be a non-empty value".into(),
        ))
    }
}

/// Only the creator of a group session sets its wrapped group key.
pub fn may_set_session_key(mode: ChatMode, is_creator: bool) -> Result<(), EventError> {
    match (mode, is_creator) {
        (ChatMode::Group, true) => Ok(()),
        (ChatMode::Group, false) => Err(EventError::NotCreator),
        _ => Err(EventError::NotGroupSession),
    }
}

/// What `get-public-keys` shows a member: every key but its own.
pub fn keys_except(keys: Vec<PublicKeyEntry>, user: &UserId) -> Vec<PublicKeyEntry> {
    keys.into_iter().filter(|k| &k.user_id != user).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_sessions_take_two_and_groups_their_limit() {
        assert_eq!(capacity(ChatMode::Group, 100), 100);
        assert_eq!(capacity(ChatMode::Private, 100), 2);
        assert_eq!(session_full(ChatMode::Password, 2), JoinError::SessionFull);
        assert_eq!(session_full(ChatMode::Group, 3), JoinError::GroupFull(3));
    }

    #[test]
    fn only_password_rooms_split_a_password_out_of_the_key() {
        assert_eq!(room_password(ChatMode::Password, "k:pw:x"), Some("pw:x"));
        assert_eq!(room_password(ChatMode::Password, "k"), None);
        assert_eq!(room_password(ChatMode::Group, "k:pw"), None);
    }

    #[test]
    fn all_and_absent_address_everyone() {
        assert_eq!(direct_recipient(None), None);
        assert_eq!(direct_recipient(Some("all")), None);
        assert_eq!(direct_recipient(Some("bob")), Some("bob"));
    }
}
