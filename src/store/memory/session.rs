//! One session of the memory backend and the steps of the contract that
//! touch only it: admission, keys, history and its bounds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::Value;
use tokio::time::Instant;

use crate::domain::rules;
use crate::domain::{ChatMode, ConnId, JoinError, Message, PublicKeyEntry, SecretDigest, SessionId, UserId};
use crate::store::{JoinRequest, Limits};

pub(super) struct Session {
    pub(super) id: SessionId,
    pub(super) seq: u64,
    pub(super) mode: ChatMode,
    /// Digest of the whole `authKey`.
    pub(super) key: SecretDigest,
    /// In `password` mode, digest of the part after the first `:`.
    pub(super) password: Option<SecretDigest>,
    pub(super) reserved: bool,
    pub(super) creator: Option<UserId>,
    pub(super) members: HashMap<UserId, Member>,
    /// Published keys in the order they were first stored.
    pub(super) public_keys: Vec<PublicKeyEntry>,
    pub(super) history: VecDeque<Arc<Message>>,
    pub(super) history_bytes: usize,
    /// Ids of the messages in `history`, to store each id once.
    pub(super) history_ids: HashSet<Arc<str>>,
    /// The group key wrapped for each member.
    pub(super) wrapped_keys: Arc<serde_json::Map<String, Value>>,
    pub(super) last_activity: Instant,
}

pub(super) struct Member {
    pub(super) conn: ConnId,
    pub(super) display_name: Option<Arc<str>>,
    pub(super) joined_at: u64,
}


impl Session {
    /// A new session, reserved until its creator joins.
    pub(super) fn new(id: SessionId, seq: u64, mode: ChatMode, auth_key: &str) -> Self {
        Self {
            id,
            seq,
            mode,
            key: SecretDigest::of(auth_key),
            password: rules::room_password(mode, auth_key).map(SecretDigest::of),
            reserved: true,
            creator: None,
            members: HashMap::new(),
            public_keys: Vec::new(),
            history: VecDeque::new(),
            history_bytes: 0,
            history_ids: HashSet::new(),
            wrapped_keys: Arc::default(),
            last_activity: Instant::now(),
        }
    }

    /// The key and password checks of a join (steps 3–4).
    pub(super) fn admit(&self, req: &JoinRequest) -> Result<(), JoinError> {
        if req.is_creator {
            let offered = req.offered_key.as_deref().unwrap_or_default();
            return if self.key.matches(offered) {
                Ok(())
            } else {
                Err(JoinError::CreatorKeyMismatch)
            };
        }
        match (&self.password, req.offered_password.as_deref()) {
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

    pub(super) fn store_key(&mut self, user: &UserId, key: Value, display_name: Option<Arc<str>>, joined_at: u64) {
        let entry = PublicKeyEntry {
            user_id: user.clone(),
            public_key: key,
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
        self.history_ids.insert(message.id.clone());
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
            let weight = old.weight();
            self.history_bytes -= weight;
            total.fetch_sub(weight, Ordering::Relaxed);
            self.history_ids.remove(&old.id);
        }
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
