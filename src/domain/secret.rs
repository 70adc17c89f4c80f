//! Secrets as the server keeps them: SHA-256 digests of the high-entropy
//! keys of session links, Argon2id digests of human-chosen room passwords
//! (see [`PasswordDigest`]); compared in constant
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
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
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

/// Random bytes that make each room's password digest its own.
pub type Salt = [u8; 16];

/// The cost of an Argon2id derivation: memory (KiB) and passes, one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    pub memory_kib: u32,
    pub passes: u32,
}

impl KdfCost {
    /// OWASP's minimum for password storage (12 MiB, 3 passes): about 15 ms
    /// of one core here, so a dump of the store gives a dictionary attack
    /// 15 ms of work per guess and per room instead of nanoseconds.
    pub const STANDARD: KdfCost = KdfCost {
        memory_kib: 12 * 1024,
        passes: 3,
    };

    /// Argon2's least cost, for tests that derive thousands of digests.
    pub const CHEAPEST: KdfCost = KdfCost {
        memory_kib: 8,
        passes: 1,
    };
}

/// A room password as the stores keep it: Argon2id with a salt of the
/// room's own. Slow on purpose: derive on a blocking thread.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PasswordDigest {
    salt: Salt,
    hash: [u8; 32],
}

impl PasswordDigest {
    /// A fresh random salt.
    pub fn new_salt() -> Salt {
        uuid::Uuid::new_v4().into_bytes()
    }

    /// Derives the digest of `password` with `salt` (about 15 ms at
    /// [`KdfCost::STANDARD`]).
    pub fn derive(salt: Salt, password: &str, cost: KdfCost) -> Self {
        use argon2::{Algorithm, Argon2, Params, Version};
        let params = Params::new(cost.memory_kib, cost.passes, 1, Some(32)).expect("valid Argon2 parameters");
        let mut hash = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password.as_bytes(), &salt, &mut hash)
            .expect("a 16-byte salt and a 32-byte output are within Argon2's bounds");
        Self { salt, hash }
    }

    pub fn salt(&self) -> Salt {
        self.salt
    }

    /// Whether `offered` (derived with this digest's salt) is this one, in constant time.
    pub fn matches(&self, offered: &PasswordDigest) -> bool {
        bool::from(self.hash.ct_eq(&offered.hash)) && self.salt == offered.salt
    }

    /// `<salt hex>:<hash hex>`, as the Redis store keeps it.
    pub fn to_hex(&self) -> String {
        format!("{}:{}", hex(&self.salt), hex(&self.hash))
    }

    /// The hash alone in hex, as a join offers it to the Redis store.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }

    /// The salt of a digest written by [`PasswordDigest::to_hex`].
    pub fn salt_from_hex(stored: &str) -> Option<Salt> {
        let (salt, _) = stored.split_once(':')?;
        let mut out = [0u8; 16];
        if salt.len() != 32 {
            return None;
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&salt[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }
}

impl std::fmt::Debug for PasswordDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordDigest(..)")
    }
}

#[cfg(test)]
mod password_tests {
    use super::*;

    #[test]
    fn a_password_digest_matches_only_its_password_with_its_salt() {
        let salt = PasswordDigest::new_salt();
        let derive = |salt, password| PasswordDigest::derive(salt, password, KdfCost::STANDARD);
        let stored = derive(salt, "hunter2");
        assert!(stored.matches(&derive(salt, "hunter2")));
        assert!(!stored.matches(&derive(salt, "hunter3")));
        let other_salt = PasswordDigest::new_salt();
        assert_ne!(salt, other_salt);
        assert!(!stored.matches(&derive(other_salt, "hunter2")), "salted per room");
        assert_eq!(PasswordDigest::salt_from_hex(&stored.to_hex()), Some(salt));
        assert!(stored.to_hex().ends_with(&stored.hash_hex()));
    }
}
