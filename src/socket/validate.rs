//! Validation of client payloads, as pure functions from what arrived
//! ([`super::payloads`]) to what the store is asked ([`crate::store`]) or the
//! room is sent. The handlers call them after checking the socket's
//! binding; the fuzz targets call them directly. Limits are the contract's
//! (docs/PROTOCOL.md section 5).

use std::sync::Arc;

use serde::Serialize;

use super::payloads::{FileDownloaded, JoinSession, SavePublicKey, SendMessage};
use crate::config::OriginalContent;
use crate::domain::ids::{SessionRef, MAX_AUTH_KEY_LEN};
use crate::domain::raw::{self, RawJson};
use crate::domain::{epoch_ms, ChatMode, EventError, JoinError, SessionId, UserId, WrappedKeys};
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
    if p.is_creator.as_deref().is_some_and(|v| !raw::within_depth(v)) {
        return Err(invalid("isCreator is nested too deeply"));
    }
    // `true`, or anything but `false` and `null`, as the original read it.
    let is_creator = p
        .is_creator
        .is_some_and(|v| !matches!(v.get().trim(), "false" | "null"));
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
        .is_some_and(|k| k.get().len() > MAX_PUBLIC_KEY_BYTES || !raw::within_depth(k))
    {
        return Err(invalid("publicKey is too large or nested too deeply"));
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
        may_create: false,
        replacing: None,
    })
}

/// A display name: at most [`MAX_DISPLAY_NAME_LEN`] bytes of text without
/// control characters (empty means none).
pub fn display_name(name: Option<String>) -> Result<Option<Arc<str>>, EventError> {
    match name {
        Some(n) if n.len() > MAX_DISPLAY_NAME_LEN || n.chars().any(char::is_control) => Err(
            EventError::InvalidPayload("displayName must be at most 128 bytes of printable text".into()),
        ),
        Some(n) if n.is_empty() => Ok(None),
        n => Ok(n.map(Into::into)),
    }
}

/// A `send-message` that passed validation.
#[derive(Debug)]
pub struct SendRequest {
    /// What the store is asked to keep and relay.
    pub message: NewMessage,
    /// The plaintext echoed to the author in `message-sent`, as
    /// `ORIGINAL_CONTENT` allows.
    pub echo: Option<RawJson>,
}

/// Validates a `send-message` payload (its binding checked before).
pub fn send_request(p: SendMessage, policy: OriginalContent) -> Result<SendRequest, EventError> {
    let invalid = |reason: &str| EventError::InvalidPayload(reason.into());
    let encrypted = p
        .encrypted
        .filter(|v| !raw::is_null(v))
        .ok_or_else(|| invalid("encrypted is required"))?;
    if !raw::within_depth(&encrypted)
        || p.original_content
            .as_deref()
            .is_some_and(|o| !raw::within_depth(o))
    {
        return Err(invalid(
            "encrypted and originalContent may nest at most 128 levels deep",
        ));
    }
    if p.kind.as_ref().is_some_and(|t| t.len() > MAX_TYPE_LEN) {
        return Err(invalid("type is too long"));
    }
    if p.client_message_id
        .as_ref()
        .is_some_and(|id| id.is_empty() || id.len() > MAX_CLIENT_MESSAGE_ID_LEN)
    {
        return Err(invalid("clientMessageId must be 1 to 128 characters"));
    }
    let original = p.original_content.filter(|v| !raw::is_null(v));
    let (echo, kept) = match policy {
        OriginalContent::Echo => (original, None),
        OriginalContent::Author => (original.clone(), original),
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
pub fn public_key_request(p: SavePublicKey) -> Result<(RawJson, Option<Arc<str>>), EventError> {
    let key = p.public_key.unwrap_or_else(|| raw::raw("null"));
    if key.get().len() > MAX_PUBLIC_KEY_BYTES || !raw::within_depth(&key) {
        return Err(EventError::InvalidPayload(
            "publicKey is too large or nested too deeply".into(),
        ));
    }
    Ok((key, display_name(p.display_name)?))
}

/// Validates `set-session-key`'s `encryptedKeys`: user ids to strings, at
/// most [`MAX_WRAPPED_KEYS_BYTES`].
pub fn wrapped_keys(encrypted_keys: Option<RawJson>) -> Result<WrappedKeys, EventError> {
    let keys = encrypted_keys
        .ok_or_else(|| EventError::InvalidPayload("encryptedKeys must map user ids to strings".into()))?;
    if keys.get().len() > MAX_WRAPPED_KEYS_BYTES {
        return Err(EventError::InvalidPayload("encryptedKeys is too large".into()));
    }
    WrappedKeys::parse(keys)
}

/// A `download-notification` for the sender of a file.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadNotice {
    pub downloaded_by: String,
    pub file_name: String,
    /// The client's timestamp when it is a number, else server time.
    pub timestamp: RawJson,
}

/// Validates a `file-downloaded` payload: whose file (`senderId`) and the
/// notice they get. `downloadedBy` is what the sender's page shows ("<who>
/// downloaded your file"): the stock client sends its display name, or its
/// user id when it has none; it is relayed as given (the downloader's user
/// id when empty), not checked as an id.
pub fn download_notice(
    p: FileDownloaded,
    downloader: &UserId,
) -> Result<(String, DownloadNotice), EventError> {
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
    if p.timestamp.as_deref().is_some_and(|t| !raw::within_depth(t)) {
        return Err(invalid("timestamp is nested too deeply"));
    }
    let timestamp = match p.timestamp {
        Some(t) if serde_json::from_str::<serde_json::Number>(t.get()).is_ok() => t,
        _ => raw::raw(&epoch_ms().to_string()),
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
