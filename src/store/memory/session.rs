//! One session of the memory backend and the steps of the contract that
//! touch only it: admission, keys, history and its bounds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::domain::rules;
use crate::domain::{
    ChatMode, ConnId, JoinError, Message, PasswordDigest, PublicKeyEntry, SecretDigest, SessionId, UserId,
    WrappedKeys,
};
use crate::store::types::AUTH_FAILURE_WINDOW_MS;
use crate::store::{JoinAuth, JoinRequest, Limits};

pub(super) struct Session {
    pub(super) id: SessionId,
    pub(super) seq: u64,
    pub(super) mode: ChatMode,
    /// Digest of the whole `authKey`.
    pub(super) key: SecretDigest,
    /// In `password` mode, the Argon2id digest of the part after the first `:`.
    pub(super) password: Option<PasswordDigest>,
    /// Wrong keys and passwords in the window that started at
    /// `auth_window_ms` (see [`AUTH_FAILURE_WINDOW_MS`]).
    pub(super) auth_failures: u32,
    pub(super) auth_window_ms: u64,
    pub(super) reserved: bool,
    pub(super) creator: Option<UserId>,
    pub(super) members: HashMap<UserId, Member>,
    /// Published keys in the order they were first stored.
    pub(super) public_keys: Vec<PublicKeyEntry>,
    pub(super) history: VecDeque<Arc<Message>>,
    /// Sequence number of `history[0]`; each message's is one more than
    /// the one before, so a replay can go on from where it stopped.
    pub(super) first_seq: u64,
    pub(super) history_bytes: usize,
    /// Sender and id of the messages in `history`, to store each sender's
    /// id once (another member reusing an id is a message of its own).
    pub(super) history_ids: HashSet<(UserId, Arc<str>)>,
    /// The group key wrapped for each member, when the creator set one.
    pub(super) wrapped_keys: Option<WrappedKeys>,
    pub(super) last_activity: Instant,
}

pub(super) struct Member {
    pub(super) conn: ConnId,
    pub(super) display_name: Option<Arc<str>>,
    pub(super) joined_at: u64,
}

impl Session {
    /// A new session, reserved until its creator joins.
    pub(super) fn new(
        id: SessionId,
        seq: u64,
        mode: ChatMode,
        auth_key: &str,
        password: Option<PasswordDigest>,
    ) -> Self {
        Self {
            id,
            seq,
            mode,
            key: SecretDigest::of(auth_key),
            password: password.filter(|_| rules::room_password(mode, auth_key).is_some()),
            auth_failures: 0,
            auth_window_ms: 0,
            reserved: true,
            creator: None,
            members: HashMap::new(),
            public_keys: Vec::new(),
            history: VecDeque::new(),
            first_seq: 0,
            history_bytes: 0,
            history_ids: HashSet::new(),
            wrapped_keys: None,
            last_activity: Instant::now(),
        }
    }

    /// The key and password checks of a join (steps 3–4), within the
    /// session's budget of wrong ones.
    pub(super) fn admit(
        &mut self,
        req: &JoinRequest,
        auth: &JoinAuth,
        limits: &Limits,
        now_ms: u64,
    ) -> Result<(), JoinError> {
        let max = limits.auth_failures_per_session_per_min;
        if now_ms.saturating_sub(self.auth_window_ms) >= AUTH_FAILURE_WINDOW_MS {
            (self.auth_failures, self.auth_window_ms) = (0, now_ms);
        }
        if max != 0 && self.auth_failures >= max {
            let wait = (self.auth_window_ms + AUTH_FAILURE_WINDOW_MS).saturating_sub(now_ms);
            return Err(JoinError::RateLimited(std::time::Duration::from_millis(
                wait.max(1),
            )));
        }
        let checked = self.check(req, auth);
        if matches!(
            checked,
            Err(JoinError::CreatorKeyMismatch | JoinError::InvalidKey | JoinError::InvalidPassword)
        ) {
            self.auth_failures += 1;
        }
        checked
    }

    fn check(&self, req: &JoinRequest, auth: &JoinAuth) -> Result<(), JoinError> {
        if req.is_creator {
            let offered = req.offered_key.as_deref().unwrap_or_default();
            return if self.key.matches(offered) {
                Ok(())
            } else {
                Err(JoinError::CreatorKeyMismatch)
            };
        }
        match (&self.password, &auth.offered_password) {
            (Some(password), Some(offered)) => {
                if !password.matches(offered) {
                    return Err(JoinError::InvalidPassword);
                }
            }
            _ => {
                let offered = req.offered_key.as_deref().unwrap_or_default();
                if !self.key.matches(offered) {
                    return Err(JoinError::InvalidKey);
                }
            }
        }
        if self.reserved {
            return Err(JoinError::SessionNotActive);
        }
        Ok(())
    }

    pub(super) fn store_key(
        &mut self,
        user: &UserId,
        key: Box<RawValue>,
        display_name: Option<Arc<str>>,
        joined_at: u64,
    ) {
        let entry = PublicKeyEntry {
            user_id: user.clone(),
            public_key: Arc::from(key),
            display_name,
            joined_at,
        };
        match self.public_keys.iter_mut().find(|k| &k.user_id == user) {
            Some(existing) => *existing = entry,
            None => self.public_keys.push(entry),
        }
    }

    /// Appends to history, dropping the oldest messages past either bound.
    pub(super) fn push_history(&mut self, message: Arc<Message>, limits: &Limits, total: &AtomicUsize) {
        let weight = message.weight();
        self.history_bytes += weight;
        total.fetch_add(weight, Ordering::Relaxed);
        self.history_ids
            .insert((message.from.clone(), message.id.clone()));
        self.history.push_back(message);
        while !self.history.is_empty()
            && (self.history.len() > limits.max_history_messages
                || self.history_bytes > limits.max_history_bytes)
        {
            self.pop_oldest(total);
        }
    }

    pub(super) fn pop_oldest(&mut self, total: &AtomicUsize) {
        if let Some(old) = self.history.pop_front() {
            self.first_seq += 1;
            let weight = old.weight();
            self.history_bytes -= weight;
            total.fetch_sub(weight, Ordering::Relaxed);
            self.history_ids.remove(&(old.from.clone(), old.id.clone()));
        }
    }

    /// Bytes of the wrapped keys in the history budget.
    pub(super) fn wrapped_bytes(&self) -> usize {
        self.wrapped_keys.as_ref().map_or(0, WrappedKeys::weight)
    }

    /// The page of `viewer`'s history that starts at sequence number `from`
    /// (or at the oldest message held, when that one is gone): messages
    /// up to `max_bytes` of weight (at least one), those `viewer` may see.
    pub(super) fn page(
        &self,
        viewer: &UserId,
        from: u64,
        max_bytes: usize,
    ) -> (Vec<Arc<Message>>, Option<u64>) {
        let start = usize::try_from(from.saturating_sub(self.first_seq)).unwrap_or(usize::MAX);
        let mut bytes = 0;
        let mut messages = Vec::new();
        let mut end = start;
        for m in self.history.iter().skip(start) {
            let weight = m.weight();
            if end > start && bytes + weight > max_bytes {
                break;
            }
            bytes += weight;
            end += 1;
            if m.visible_to(viewer) {
                messages.push(m.clone());
            }
        }
        let next = (end < self.history.len()).then(|| self.first_seq + end as u64);
        (messages, next)
    }
}

/// Locks are taken through these, which recover the guard of a lock whose
/// holder panicked: a bug in one critical section cannot poison the store.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
