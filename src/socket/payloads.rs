//! Client → server payloads as they arrive, before validation.
//!
//! Every field is optional so that a missing field becomes a clear
//! `INVALID_PAYLOAD` answer naming it, not a silently skipped handler; a field
//! of the wrong JSON type fails the whole decode, answered the same way.

use serde::Deserialize;
use serde_json::Value;

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
