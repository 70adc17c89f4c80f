//! Client → server payloads as they arrive, before validation.
//!
//! Every field is optional so that a missing field becomes a clear
//! `INVALID_PAYLOAD` answer naming it, not a silently skipped handler; a field
//! of the wrong JSON type fails the whole decode, answered the same way.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::domain::ids::SessionRef;
use crate::domain::store::JoinRequest;
use crate::domain::{ChatMode, EventError, JoinError, SessionId, UserId};

/// Longest `displayName` kept.
pub const MAX_DISPLAY_NAME_LEN: usize = 128;
/// Longest `authKey` (or key suffix) accepted, as for reservations.
pub const MAX_AUTH_KEY_LEN: usize = 512;
/// Longest `clientMessageId`, as the contract says.
pub const MAX_CLIENT_MESSAGE_ID_LEN: usize = 128;
/// Longest message `type` (the stock client sends `text` or `file`).
pub const MAX_TYPE_LEN: usize = 64;
/// Longest `fileName` in a download notification.
pub const MAX_FILE_NAME_LEN: usize = 1024;
/// Largest serialized public key (an RSA-4096 SPKI in base64 is under 1 KiB).
pub const MAX_PUBLIC_KEY_BYTES: usize = 16 * 1024;
/// Largest serialized `encryptedKeys` map of `set-session-key`.
pub const MAX_WRAPPED_KEYS_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinSession {
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub display_name: Option<String>,
    pub public_key: Option<Value>,
    pub is_creator: Option<Value>,
    pub auth_key: Option<String>,
    pub chat_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    pub session_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub encrypted: Option<Value>,
    pub original_content: Option<Value>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub client_message_id: Option<String>,
}

/// `get-public-keys`, `leave-session`, `typing` and `stopped-typing`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionUser {
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavePublicKey {
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub public_key: Option<Value>,
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetSessionKey {
    pub session_id: Option<String>,
    pub encrypted_keys: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileDownloaded {
    pub session_id: Option<String>,
    pub downloaded_by: Option<String>,
    pub sender_id: Option<String>,
    pub file_name: Option<String>,
    pub timestamp: Option<Value>,
}

/// Validates a `join-session` payload (step 1 of the contract).
pub fn join_request(p: JoinSession) -> Result<JoinRequest, JoinError> {
    let invalid = |reason: &str| JoinError::InvalidPayload(reason.into());
    let raw = p
        .session_id
        .ok_or_else(|| invalid("sessionId must be a string"))?;
    let user = p.user_id.ok_or_else(|| invalid("userId must be a string"))?;
    let user = UserId::parse(&user).ok_or_else(|| invalid("userId must be 1 to 128 printable characters"))?;
    let is_creator = p.is_creator.is_some_and(|v| v.as_bool().unwrap_or(!v.is_null()));
    let parts = SessionRef::split(&raw);
    let session = match SessionId::parse(parts.id) {
        Some(id) => id,
        // Such an id can never have been created, so a joiner simply finds nothing.
        None if !is_creator => return Err(JoinError::SessionNotFound),
        None => return Err(invalid("sessionId must be 1 to 64 characters of A-Z a-z 0-9 _ -")),
    };
    let offered_key = p.auth_key.or_else(|| parts.suffix_key.map(str::to_owned));
    if offered_key.as_ref().is_some_and(|k| k.len() > MAX_AUTH_KEY_LEN)
        || parts.password.is_some_and(|pw| pw.len() > MAX_AUTH_KEY_LEN)
    {
        return Err(invalid("authKey is too long"));
    }
    if p.public_key
        .as_ref()
        .is_some_and(|k| json_len(k) > MAX_PUBLIC_KEY_BYTES)
    {
        return Err(invalid("publicKey is too large"));
    }
    let mode = match p.chat_mode.as_deref() {
        None => ChatMode::Group,
        Some(m) => {
            ChatMode::parse(m).ok_or_else(|| invalid("chatMode must be group, private or password"))?
        }
    };
    Ok(JoinRequest {
        session,
        user,
        display_name: display_name(p.display_name).map_err(|_| invalid("displayName is too long"))?,
        public_key: p.public_key,
        is_creator,
        offered_key,
        offered_password: parts.password.map(str::to_owned),
        mode,
    })
}

pub fn display_name(name: Option<String>) -> Result<Option<Arc<str>>, EventError> {
    match name {
        Some(n) if n.len() > MAX_DISPLAY_NAME_LEN => {
            Err(EventError::InvalidPayload("displayName is too long".into()))
        }
        Some(n) if n.is_empty() => Ok(None),
        n => Ok(n.map(Into::into)),
    }
}

/// Serialized length of a small JSON value, for size limits.
pub fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}
