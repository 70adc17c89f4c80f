//! What the server keeps and relays: messages and public keys.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::UserId;

/// A relayed message. Serializes to the wire shape of `new-message`,
/// `message-sent` and `messages-history` entries; the plaintext is never part
/// of that shape (see [`MessageView`]).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Arc<str>,
    pub from: UserId,
    /// `"all"`, a member's user id, or absent as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Arc<str>>,
    /// The ciphertext, opaque to the server.
    pub encrypted: Value,
    /// Server time of receipt, epoch ms.
    pub timestamp: u64,
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_display_name: Option<Arc<str>>,
    /// The author's plaintext, kept only with `ORIGINAL_CONTENT=author`.
    #[serde(skip)]
    pub original_content: Option<Value>,
}

impl Message {
    /// Whether `viewer` may see this message in its history.
    pub fn visible_to(&self, viewer: &UserId) -> bool {
        match self.to.as_deref() {
            None | Some("all") => true,
            Some(to) => to == viewer.as_str() || &self.from == viewer,
        }
    }

    /// Bytes this message holds, for history bounds.
    pub fn weight(&self) -> usize {
        /// Fixed per-message cost: ids, timestamps, allocation headers.
        const OVERHEAD: usize = 256;
        OVERHEAD + json_weight(&self.encrypted) + self.original_content.as_ref().map_or(0, json_weight)
    }
}

/// A message as one recipient sees it: with the plaintext only when it is
/// that recipient's own and the policy lets it through.
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    #[serde(flatten)]
    pub message: &'a Message,
    #[serde(rename = "originalContent", skip_serializing_if = "Option::is_none")]
    pub original_content: Option<&'a Value>,
}

/// Approximate in-memory size of a JSON value.
fn json_weight(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(json_weight).sum::<usize>() + 8,
        Value::Object(o) => o.iter().map(|(k, v)| k.len() + json_weight(v)).sum::<usize>() + 8,
        _ => 8,
    }
}

/// A member's published public key, the wire shape of `public-keys-updated` entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyEntry {
    pub user_id: UserId,
    pub public_key: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Arc<str>>,
    /// When the member first joined, epoch ms.
    pub joined_at: u64,
}
