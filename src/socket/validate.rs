//! Validation of client payloads, as pure functions from what arrived
//! ([`super::payloads`]) to what the store is asked ([`crate::store`]) or the
//! room is sent. The handlers call them after checking the socket's
//! binding; the fuzz targets call them directly. Limits are the contract's
//! (docs/PROTOCOL.md section 5).

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::payloads::{FileDownloaded, JoinSession, SavePublicKey, SendMessage};
use crate::config::OriginalContent;
use crate::domain::ids::{SessionRef, MAX_AUTH_KEY_LEN};
use crate::domain::{epoch_ms, ChatMode, EventError, JoinError, SessionId, UserId};
use crate::store::{JoinRequest, NewMessage};

/// Longest `displayName` kept.
pub const MAX_DISPLAY_NAME_LEN: usize = 128;
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

/// A `send-message` that passed validation.
#[derive(Debug)]
pub struct SendRequest {
    /// What the store is asked to keep and relay.
    pub message: NewMessage,
    /// The plaintext echoed to the author in `message-sent`, as
    /// `ORIGINAL_CONTENT` allows.
    pub echo: Option<Value>,
}

/// Validates a `send-message` payload (its binding checked before).
pub fn send_request(p: SendMessage, policy: OriginalContent) -> Result<SendRequest, EventError> {
    let invalid = |reason: &str| EventError::InvalidPayload(reason.into());
    let encrypted = p
        .encrypted
        .filter(|v| !v.is_null())
        .ok_or_else(|| invalid("encrypted is required"))?;
    if p.kind.as_ref().is_some_and(|t| t.len() > MAX_TYPE_LEN) {
        return Err(invalid("type is too long"));
    }
    if p.client_message_id
        .as_ref()
        .is_some_and(|id| id.is_empty() || id.len() > MAX_CLIENT_MESSAGE_ID_LEN)
    {
        return Err(invalid("clientMessageId must be 1 to 128 characters"));
    }
    let (echo, kept) = match policy {
        OriginalContent::Echo => (p.original_content, None),
        OriginalContent::Author => (p.original_content.clone(), p.original_content),
        OriginalContent::Drop => (None, None),
    };
    Ok(SendRequest {
        message: NewMessage {
            to: p.to.map(Into::into),
            encrypted,
            original_content: kept,
            kind: p.kind.map(Into::into),
            client_message_id: p.client_message_id.map(Into::into),
        },
        echo,
    })
}

/// Validates a `save-public-key` payload: the key (absent is `null`, which
/// the store refuses) and the display name.
pub fn public_key_request(p: SavePublicKey) -> Result<(Value, Option<Arc<str>>), EventError> {
    let key = p.public_key.unwrap_or(Value::Null);
    if json_len(&key) > MAX_PUBLIC_KEY_BYTES {
        return Err(EventError::InvalidPayload("publicKey is too large".into()));
    }
    Ok((key, display_name(p.display_name)?))
}

/// Validates `set-session-key`'s `encryptedKeys`: user ids to strings, at
/// most [`MAX_WRAPPED_KEYS_BYTES`].
pub fn wrapped_keys(encrypted_keys: Option<Value>) -> Result<serde_json::Map<String, Value>, EventError> {
    let invalid = || EventError::InvalidPayload("encryptedKeys must map user ids to strings".into());
    let Some(Value::Object(keys)) = encrypted_keys else {
        return Err(invalid());
    };
    if !keys.values().all(Value::is_string) {
        return Err(invalid());
    }
    if keys.iter().map(|(k, v)| k.len() + json_len(v)).sum::<usize>() > MAX_WRAPPED_KEYS_BYTES {
        return Err(EventError::InvalidPayload("encryptedKeys is too large".into()));
    }
    Ok(keys)
}

/// A `download-notification` for the sender of a file.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadNotice {
    pub downloaded_by: String,
    pub file_name: String,
    pub timestamp: Value,
}

/// Validates a `file-downloaded` payload: whose file (`senderId`) and the
/// notice they get. `downloadedBy` is what the sender's page shows ("<who>
/// downloaded your file"): the stock client sends its display name, or its
/// user id when it has none; it is relayed as given (the downloader's user
/// id when empty), not checked as an id.
pub fn download_notice(p: FileDownloaded, downloader: &UserId) -> Result<(String, DownloadNotice), EventError> {
    let invalid = |reason: &str| EventError::InvalidPayload(reason.into());
    let sender = p.sender_id.ok_or_else(|| invalid("senderId is required"))?;
    let file_name = p.file_name.unwrap_or_default();
    if file_name.len() > MAX_FILE_NAME_LEN {
        return Err(invalid("fileName is too long"));
    }
    let downloaded_by = match p.downloaded_by {
        Some(name) if name.len() > MAX_DISPLAY_NAME_LEN => return Err(invalid("downloadedBy is too long")),
        Some(name) if !name.is_empty() => name,
        _ => downloader.to_string(),
    };
    let timestamp = match p.timestamp {
        Some(Value::Number(n)) => Value::Number(n),
        _ => Value::from(epoch_ms()),
    };
    let notice = DownloadNotice {
        downloaded_by,
        file_name,
        timestamp,
    };
    Ok((sender, notice))
}

/// The display name a typing notice carries when the member stored none:
/// the one offered, when it is not too long.
pub fn offered_typing_name(offered: Option<String>) -> Option<String> {
    offered.filter(|n| n.len() <= MAX_DISPLAY_NAME_LEN)
}
