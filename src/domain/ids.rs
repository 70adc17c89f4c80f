//! Validated identifiers. Raw strings from the wire become these at the edge.

use std::fmt;
use std::sync::Arc;

use super::secret::SecretDigest;
use serde::{Deserialize, Serialize};

/// Longest accepted session id; ids are `[A-Za-z0-9_-]{1,64}`.
pub const MAX_SESSION_ID_LEN: usize = 64;
/// Longest accepted user id (the stock client sends a 36-character UUID).
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest `authKey` accepted, by reservations and joins alike (and so the
/// longest key suffix or room password of a wire `sessionId`).
pub const MAX_AUTH_KEY_LEN: usize = 512;

/// A session id, without any `:`-suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// Accepts 1–64 characters of `[A-Za-z0-9_-]`.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= MAX_SESSION_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short stable tag for logs: the id itself is half of a session link.
    pub fn log_tag(&self) -> String {
        SecretDigest::of(&self.0).short_hex(4)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user id as the client chose it (the stock client keeps a UUID in localStorage).
/// Deserialized only from what the server stored itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Accepts 1–128 characters without control characters.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty() && s.len() <= MAX_USER_ID_LEN && !s.chars().any(char::is_control);
        ok.then(|| Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One Socket.IO connection, as the transport names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnId(Arc<str>);

impl ConnId {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many people a session takes and how joiners prove themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChatMode {
    #[default]
    Group,
    Private,
    Password,
}

impl ChatMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "group" => Some(Self::Group),
            "private" => Some(Self::Private),
            "password" => Some(Self::Password),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Private => "private",
            Self::Password => "password",
        }
    }
}

/// The session part of a wire `sessionId` and whatever its `:`-suffix offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef<'a> {
    /// The part before the first `:`.
    pub id: &'a str,
    /// Everything after the first `:` (`"abc:key"` → `"key"`), when present.
    pub suffix_key: Option<&'a str>,
    /// The third part of `"ROOM:password:<base64>"`, when the second is `password`.
    pub password: Option<&'a str>,
}

impl<'a> SessionRef<'a> {
    /// Splits a wire `sessionId` as docs/PROTOCOL.md section 3 says.
    pub fn split(raw: &'a str) -> Self {
        let Some((id, rest)) = raw.split_once(':') else {
            return Self {
                id: raw,
                suffix_key: None,
                password: None,
            };
        };
        let password = rest.strip_prefix("password:");
        Self {
            id,
            suffix_key: Some(rest),
            password,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_short_and_url_safe() {
        assert!(SessionId::parse("abc_DEF-123").is_some());
        assert!(SessionId::parse("").is_none());
        assert!(SessionId::parse(&"a".repeat(65)).is_none());
        assert!(SessionId::parse("a b").is_none());
        assert!(SessionId::parse("a:b").is_none());
    }

    #[test]
    fn session_ref_splits_key_and_password_suffixes() {
        assert_eq!(SessionRef::split("abc").suffix_key, None);
        let r = SessionRef::split("abc:key");
        assert_eq!((r.id, r.suffix_key, r.password), ("abc", Some("key"), None));
        let r = SessionRef::split("ROOM:password:cHc=");
        assert_eq!((r.id, r.password), ("ROOM", Some("cHc=")));
        assert_eq!(r.suffix_key, Some("password:cHc="));
        // A key with a colon in it stays whole.
        assert_eq!(SessionRef::split("a:k1:k2").suffix_key, Some("k1:k2"));
    }
}
