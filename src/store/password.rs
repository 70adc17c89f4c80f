//! Room passwords are Argon2id digests ([`PasswordDigest`]): slow on
//! purpose, so they are derived here, before a backend's atomic step (never
//! under a session's lock or inside a Redis script), on tokio's blocking
//! pool, and a few at a time: a burst of password joins queues here instead
//! of taking every core (each takes about 15 ms and 12 MiB).

use tokio::sync::Semaphore;

use super::{JoinAuth, JoinRequest};
use crate::domain::rules;
use crate::domain::secret::{KdfCost, Salt};
use crate::domain::{ChatMode, PasswordDigest};

/// Derivations running at once.
const CONCURRENT_DERIVATIONS: usize = 2;

static PERMITS: Semaphore = Semaphore::const_new(CONCURRENT_DERIVATIONS);

/// What `req`'s checks need (see [`JoinAuth`]), given the salt of the
/// room's password, when it has one. Slow: see [`derive`].
pub fn join_auth(req: &JoinRequest, salt: Option<Salt>, cost: KdfCost) -> JoinAuth {
    let mut auth = JoinAuth::default();
    if let (false, Some(offered), Some(salt)) = (req.is_creator, req.offered_password.as_deref(), salt) {
        auth.offered_password = Some(PasswordDigest::derive(salt, offered, cost));
    }
    if req.is_creator && req.may_create {
        auth.new_password = new_password(req.mode, req.offered_key.as_deref().unwrap_or_default(), cost);
    }
    auth
}

/// The password digest of a room created with `auth_key`, in password mode.
pub fn new_password(mode: ChatMode, auth_key: &str, cost: KdfCost) -> Option<PasswordDigest> {
    rules::room_password(mode, auth_key).map(|p| PasswordDigest::derive(PasswordDigest::new_salt(), p, cost))
}

/// Runs a derivation on the blocking pool, a few at a time.
pub async fn derive<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let _permit = PERMITS.acquire().await.expect("never closed");
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        // Only a panic inside Argon2 (or a runtime shutting down) gets here.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
