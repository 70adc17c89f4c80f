//! Client → server payloads as they arrive, before validation
//! ([`super::validate`] turns them into the store's requests).
//!
//! Every field is optional so that a missing field becomes a clear
//! `INVALID_PAYLOAD` answer naming it, not a silently skipped handler; a field
//! of the wrong JSON type fails the whole decode, answered the same way.
//! Opaque fields (ciphertext, plaintext, keys) stay the JSON text that
//! arrived ([`RawJson`]): nothing builds a tree of what a client sends.

use serde::Deserialize;

use crate::domain::RawJson;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinSession {
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub display_name: Option<String>,
    pub public_key: Option<RawJson>,
    pub is_creator: Option<RawJson>,
    pub auth_key: Option<String>,
    pub chat_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    pub session_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub encrypted: Option<RawJson>,
    pub original_content: Option<RawJson>,
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
    pub public_key: Option<RawJson>,
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetSessionKey {
    pub session_id: Option<String>,
    pub encrypted_keys: Option<RawJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileDownloaded {
    pub session_id: Option<String>,
    pub downloaded_by: Option<String>,
    pub sender_id: Option<String>,
    pub file_name: Option<String>,
    pub timestamp: Option<RawJson>,
}
