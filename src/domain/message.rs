//! What the server keeps and relays: messages and public keys.

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::raw::RawJson;
use super::UserId;

/// Bytes charged per stored message beyond its own JSON text: the index
/// entries both stores keep beside it (the id set, the weight index in
/// Redis), allocation headers, and the sender's display name, which the
/// stores add to the stored text themselves (at most 128 bytes of text
/// without control characters, so at most 256 once escaped).
const PER_MESSAGE_OVERHEAD: usize = 512;

/// A relayed message. Serializes to the wire shape of `new-message`,
/// `message-sent` and `messages-history` entries; the plaintext is never part
/// of that shape (see [`MessageView`]).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Arc<str>,
    pub from: UserId,
    /// `"all"`, a member's user id, or absent as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Arc<str>>,
    /// The ciphertext, opaque to the server.
    pub encrypted: RawJson,
    /// Server time of receipt, epoch ms.
    pub timestamp: u64,
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_display_name: Option<Arc<str>>,
    /// The author's plaintext, kept only with `ORIGINAL_CONTENT=author`.
    #[serde(skip)]
    pub original_content: Option<RawJson>,
}

impl Message {
    /// Whether `viewer` may see this message in its history.
    pub fn visible_to(&self, viewer: &UserId) -> bool {
        match self.to.as_deref() {
            None | Some("all") => true,
            Some(to) => to == viewer.as_str() || &self.from == viewer,
        }
    }

    /// Bytes this message is charged in the history bounds, the same in
    /// both stores: the exact length of the JSON the Redis store keeps
    /// ([`Message::stored`]) plus [`PER_MESSAGE_OVERHEAD`]. The embedded
    /// store holds no more than that.
    pub fn weight(&self) -> usize {
        let mut counter = Counter(0);
        // Writing to a counter cannot fail; a failure would only undercount.
        let _ = serde_json::to_writer(&mut counter, &self.stored());
        counter.0 + PER_MESSAGE_OVERHEAD
    }

    /// The JSON a store keeps of this message.
    pub fn stored(&self) -> StoredMessage<'_> {
        StoredMessage {
            id: &self.id,
            from: &self.from,
            to: self.to.as_deref(),
            encrypted: &self.encrypted,
            timestamp: self.timestamp,
            kind: &self.kind,
            original_content: self.original_content.as_deref(),
        }
    }
}

/// What a store keeps of a message: the wire shape with the kept plaintext,
/// without the display name (the Redis store adds the name it holds).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage<'a> {
    id: &'a str,
    from: &'a UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    encrypted: &'a RawValue,
    timestamp: u64,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_content: Option<&'a RawValue>,
}

/// Counts bytes written.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A message as one recipient sees it: with the plaintext only when it is
/// that recipient's own and the policy lets it through.
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    #[serde(flatten)]
    pub message: &'a Message,
    #[serde(rename = "originalContent", skip_serializing_if = "Option::is_none")]
    pub original_content: Option<&'a RawValue>,
}

/// A member's published public key, the wire shape of `public-keys-updated` entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyEntry {
    pub user_id: UserId,
    pub public_key: Arc<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Arc<str>>,
    /// When the member first joined, epoch ms.
    pub joined_at: u64,
}
