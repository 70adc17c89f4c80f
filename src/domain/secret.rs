//! Secrets as the server keeps them: SHA-256 digests, compared in constant
//! time, so that neither their content nor their length leaks through timing
//! and neither store ever holds an `authKey` or a password.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 digest of a secret (or of anything that must not be shown as is).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `offered` has this digest, in constant time.
    pub fn matches(&self, offered: &str) -> bool {
        bool::from(self.0.ct_eq(&Self::of(offered).0))
    }

    /// Lower-case hex, as the Redis store keeps digests.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// The first `bytes` bytes in hex: a short stable tag.
    pub fn short_hex(&self, bytes: usize) -> String {
        hex(&self.0[..bytes.min(32)])
    }
}

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_only_their_secret() {
        let d = SecretDigest::of("k:pw");
        assert!(d.matches("k:pw"));
        assert!(!d.matches("k:pw "));
        assert_eq!(
            SecretDigest::of("abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(SecretDigest::of("abc").short_hex(4), "ba7816bf");
    }
}
