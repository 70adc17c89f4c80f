//! How values cross between Rust and the Lua scripts: digests, flags and
//! optional strings going in; script answers, public keys, stored messages
//! and refusal codes coming out.

use std::sync::Arc;

use redis::Value;
use serde::Deserialize;

use crate::domain::{
    ConnId, EventError, JoinError, Message, PublicKeyEntry, RawJson, SecretDigest, SessionId, UserId,
};
use crate::store::Departures;

/// A secret as the scripts take it: its hex SHA-256 (Redis only ever holds
/// digests, compared in the scripts without stopping at the first
/// difference), or empty when there is none.
pub(super) fn secret_arg(secret: Option<&str>) -> String {
    secret.map(|s| SecretDigest::of(s).hex()).unwrap_or_default()
}

pub(super) fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// An optional string as the scripts take it.
pub(super) fn opt_arg(v: Option<&str>) -> String {
    v.map_or_else(String::new, |v| format!("={v}"))
}

/// A script's answer, read front to back.
pub(super) struct Reply(pub(super) std::vec::IntoIter<Value>);

impl Reply {
    pub(super) fn string(&mut self) -> String {
        match self.0.next() {
            Some(Value::BulkString(b)) => String::from_utf8(b).unwrap_or_default(),
            Some(Value::SimpleString(s)) => s,
            Some(Value::Int(n)) => n.to_string(),
            _ => String::new(),
        }
    }

    pub(super) fn opt(&mut self) -> Option<Arc<str>> {
        let s = self.string();
        s.strip_prefix('=').map(Into::into)
    }

    pub(super) fn list(&mut self) -> Vec<Value> {
        match self.0.next() {
            Some(Value::Array(v) | Value::Set(v)) => v,
            _ => Vec::new(),
        }
    }
}

/// An optional JSON value as a script answers it (`''` or `'='` + JSON).
pub(super) fn raw_opt(v: Option<Arc<str>>) -> Option<RawJson> {
    v.and_then(|json| serde_json::value::RawValue::from_string(json.to_string()).ok())
}

pub(super) fn text(v: Value) -> String {
    Reply(vec![v].into_iter()).string()
}

/// Public key entries from a flat `user, "<order>|<json>"` list, in the
/// order they were first stored.
pub(super) fn public_keys(flat: Vec<Value>) -> Vec<PublicKeyEntry> {
    let mut rows: Vec<(u64, PublicKeyEntry)> = flat
        .into_iter()
        .skip(1)
        .step_by(2)
        .filter_map(|v| {
            let row = text(v);
            let (order, json) = row.split_once('|')?;
            Some((order.parse().ok()?, serde_json::from_str(json).ok()?))
        })
        .collect();
    rows.sort_by_key(|(order, _)| *order);
    rows.into_iter().map(|(_, k)| k).collect()
}

/// A history entry as stored: the wire shape plus the author's plaintext
/// when `ORIGINAL_CONTENT=author` kept it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StoredMessage {
    id: Arc<str>,
    from: UserId,
    #[serde(default)]
    to: Option<Arc<str>>,
    encrypted: RawJson,
    timestamp: u64,
    #[serde(rename = "type")]
    kind: Arc<str>,
    #[serde(default)]
    sender_display_name: Option<Arc<str>>,
    #[serde(default)]
    original_content: Option<RawJson>,
}

impl From<StoredMessage> for Message {
    fn from(m: StoredMessage) -> Self {
        Self {
            id: m.id,
            from: m.from,
            to: m.to,
            encrypted: m.encrypted,
            timestamp: m.timestamp,
            kind: m.kind,
            sender_display_name: m.sender_display_name,
            original_content: m.original_content,
        }
    }
}

pub(super) fn event_refusal(code: &str) -> EventError {
    match code {
        "UNKNOWN_RECIPIENT" => EventError::UnknownRecipient,
        "NOT_GROUP" => EventError::NotGroupSession,
        "NOT_CREATOR" => EventError::NotCreator,
        "STORE_FULL" => EventError::StoreFull,
        _ => EventError::NotInSession,
    }
}

pub(super) fn join_refusal(code: &str) -> JoinError {
    match code {
        "SESSION_NOT_FOUND" => JoinError::SessionNotFound,
        "CREATOR_KEY_MISMATCH" => JoinError::CreatorKeyMismatch,
        "INVALID_PASSWORD" => JoinError::InvalidPassword,
        "SESSION_NOT_ACTIVE" => JoinError::SessionNotActive,
        "SESSION_LIMIT" => JoinError::SessionLimit,
        _ => JoinError::InvalidKey,
    }
}

/// One session's entry of `REMOVE_NODE`'s answer.
pub(super) fn departures(v: Value) -> Option<Departures> {
    let Value::Array(parts) = v else { return None };
    let mut r = Reply(parts.into_iter());
    let session = SessionId::parse(&r.string())?;
    let remaining = public_keys(r.list());
    let members = r
        .list()
        .into_iter()
        .filter_map(|m| {
            let Value::Array(fields) = m else { return None };
            let mut f = Reply(fields.into_iter());
            let user = UserId::parse(&f.string())?;
            let name = f.opt();
            Some((user, name, ConnId::new(f.string())))
        })
        .collect();
    Some(Departures {
        session,
        members,
        remaining_keys: Some(remaining),
    })
}
