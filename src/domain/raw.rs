//! Opaque JSON: what the server relays and keeps but never reads
//! (ciphertext, the author's plaintext echo, public keys, wrapped group
//! keys). It stays the text the client sent, from the socket to the store
//! and back out: never expanded into a tree (a 20 MB array of tiny objects
//! would cost gigabytes as `serde_json::Value`), never re-escaped, and
//! charged to the budgets by its exact length.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::EventError;

/// One JSON value, kept as the text that arrived (syntax checked, nothing parsed).
pub type RawJson = Box<RawValue>;

/// Bytes charged per wrapped key entry on top of the text (the key and value
/// as separate strings in Redis, a hash slot).
const WRAPPED_KEY_ENTRY_OVERHEAD: usize = 32;

/// `raw` as JSON text for tests and defaults; `s` must be valid JSON.
pub fn raw(s: &str) -> RawJson {
    RawValue::from_string(s.to_owned()).expect("valid JSON")
}

/// A JSON string holding `s`.
pub fn raw_string(s: &str) -> RawJson {
    serde_json::value::to_raw_value(s).expect("a string serializes")
}

/// Whether the value is `null` (absent and `null` are the same to the contract).
pub fn is_null(v: &RawValue) -> bool {
    v.get().trim() == "null"
}

/// Deepest nesting of arrays and objects an opaque value may have: as deep
/// as `serde_json` parses by default, far deeper than any ciphertext
/// envelope, and shallow enough for every client's JSON parser.
pub const MAX_DEPTH: usize = 128;

/// Whether `v` nests arrays and objects at most [`MAX_DEPTH`] deep. One pass
/// over the bytes, nothing allocated.
pub fn within_depth(v: &RawValue) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in v.get().as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// JavaScript truthiness, as the original tested `publicKey`: `null`,
/// `false`, `0` and `""` are falsy; every object, array and other value is
/// truthy. Reads only the value's first token (and a number whole).
pub fn is_truthy(v: &RawValue) -> bool {
    let text = v.get().trim();
    match text.as_bytes().first() {
        None => false,
        Some(b'n') => false,
        Some(b'f') => false,
        Some(b'"') => text != "\"\"",
        Some(b'-' | b'0'..=b'9') => text.parse::<f64>().is_ok_and(|n| n != 0.0),
        Some(_) => true,
    }
}

/// The group key wrapped for each member (`set-session-key`'s
/// `encryptedKeys`): a JSON object of user id → string, kept as the client
/// sent it. Cheap to clone.
#[derive(Clone)]
pub struct WrappedKeys {
    raw: Arc<RawValue>,
    entries: usize,
}

impl WrappedKeys {
    /// Checks that `raw` is an object whose values are all strings.
    pub fn parse(raw: RawJson) -> Result<Self, EventError> {
        let entries = Shape::of(raw.get())
            .ok_or_else(|| EventError::InvalidPayload("encryptedKeys must map user ids to strings".into()))?;
        Ok(Self {
            raw: Arc::from(raw),
            entries,
        })
    }

    /// The JSON object as it arrived.
    pub fn raw(&self) -> &RawValue {
        &self.raw
    }

    /// The entry of `user`: its JSON string as it arrived.
    pub fn for_user(&self, user: &str) -> Option<RawJson> {
        let mut de = serde_json::Deserializer::from_str(self.raw.get());
        de.deserialize_map(Lookup { user }).ok().flatten()
    }

    /// Every entry, as user id and JSON string (for the Redis backend's hash).
    pub fn entries(&self) -> Vec<(String, &RawValue)> {
        let mut de = serde_json::Deserializer::from_str(self.raw.get());
        de.deserialize_map(Entries).unwrap_or_default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Bytes these keys are charged in the history budget, the same in both stores.
    pub fn weight(&self) -> usize {
        self.raw.get().len() + self.entries * WRAPPED_KEY_ENTRY_OVERHEAD
    }
}

impl Serialize for WrappedKeys {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl fmt::Debug for WrappedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WrappedKeys({} entries, {} bytes)",
            self.entries,
            self.raw.get().len()
        )
    }
}

/// Counts the entries of an object of strings, or `None` for any other shape.
struct Shape;

impl Shape {
    fn of(json: &str) -> Option<usize> {
        let mut de = serde_json::Deserializer::from_str(json);
        let n = de.deserialize_map(Shape).ok()?;
        de.end().ok()?;
        Some(n)
    }
}

impl<'de> Visitor<'de> for Shape {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of strings")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<usize, M::Error> {
        let mut n = 0;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value::<StringOnly>()?;
            n += 1;
        }
        Ok(n)
    }
}

/// Accepts a JSON string without keeping it.
struct StringOnly;

impl<'de> Deserialize<'de> for StringOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StringOnly;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<StringOnly, E> {
                Ok(StringOnly)
            }
        }
        d.deserialize_str(V)
    }
}

/// Finds one entry of an object without building the others.
struct Lookup<'u> {
    user: &'u str,
}

impl<'de> Visitor<'de> for Lookup<'_> {
    type Value = Option<RawJson>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        // The rest is read too: the parser checks that the object ends.
        let mut found = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if found.is_none() && key == self.user {
                found = Some(map.next_value::<RawJson>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Lists the entries of an object, the values as their raw text.
struct Entries;

impl<'de> Visitor<'de> for Entries {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            out.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        let deep = |n: usize| raw(&format!("{}1{}", "[".repeat(n), "]".repeat(n)));
        assert!(within_depth(&deep(MAX_DEPTH)));
        assert!(!within_depth(&deep(MAX_DEPTH + 1)));
        assert!(
            within_depth(&raw_string(&"[".repeat(1000))),
            "brackets in a string do not count"
        );
        assert!(within_depth(&raw(r#"{"a":"\"[[[[","b":[]}"#)));
    }

    #[test]
    fn truthiness_follows_javascript() {
        for falsy in ["null", "false", "0", "-0", "0.0", "\"\"", " null "] {
            assert!(!is_truthy(&raw(falsy)), "{falsy}");
        }
        for truthy in ["true", "1", "-2.5", "\"k\"", "[]", "{}", "\" \""] {
            assert!(is_truthy(&raw(truthy)), "{truthy}");
        }
    }

    #[test]
    fn wrapped_keys_are_an_object_of_strings_looked_up_without_a_tree() {
        let keys = WrappedKeys::parse(raw(r#"{"alice":"K\u0041","bob":"kb"}"#)).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.for_user("alice").unwrap().get(), r#""K\u0041""#);
        assert!(keys.for_user("carol").is_none());
        assert_eq!(keys.entries().len(), 2);
        assert_eq!(
            keys.weight(),
            keys.raw().get().len() + 2 * WRAPPED_KEY_ENTRY_OVERHEAD
        );
        for bad in [r#"{"a":1}"#, r#"["a"]"#, r#""a""#, r#"{"a":{"b":"c"}}"#, "null"] {
            assert!(WrappedKeys::parse(raw(bad)).is_err(), "{bad}");
        }
    }
}
