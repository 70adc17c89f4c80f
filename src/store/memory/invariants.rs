//! The memory backend's invariants, checked by the property tests and the
//! fuzz targets after every step.

use std::collections::HashSet;

use super::session::{lock, read};
use super::MemoryStore;
use crate::domain::rules;

impl MemoryStore {
    /// Checks the store's invariants; used by property tests and fuzzing.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let limits = &self.shared.limits;
        let sessions: Vec<_> = read(&self.shared.sessions)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if sessions.len() > limits.max_sessions {
            return Err(format!("{} sessions over the limit", sessions.len()));
        }
        let mut total = 0;
        for (id, session) in sessions {
            let s = lock(&session);
            if s.id != id {
                return Err(format!("session {id} stored under another id"));
            }
            let capacity = rules::capacity(s.mode, limits.max_group_members);
            if s.members.len() > capacity {
                return Err(format!(
                    "{id}: {} members over capacity {capacity}",
                    s.members.len()
                ));
            }
            let mut conns = HashSet::new();
            if !s.members.values().all(|m| conns.insert(m.conn.clone())) {
                return Err(format!("{id}: one socket bound to two members"));
            }
            if let Some(k) = s.public_keys.iter().find(|k| !s.members.contains_key(&k.user_id)) {
                return Err(format!("{id}: key of non-member {}", k.user_id));
            }
            if s.reserved && !s.members.is_empty() {
                return Err(format!("{id}: reserved session with members"));
            }
            let bytes: usize = s.history.iter().map(|m| m.weight()).sum();
            if bytes != s.history_bytes {
                return Err(format!(
                    "{id}: history bytes {} but counted {}",
                    bytes, s.history_bytes
                ));
            }
            if s.history.len() > limits.max_history_messages
                || (s.history.len() > 1 && s.history_bytes > limits.max_history_bytes)
            {
                return Err(format!("{id}: history over its bounds"));
            }
            let ids: HashSet<_> = s.history.iter().map(|m| (m.from.clone(), m.id.clone())).collect();
            if ids.len() != s.history.len() || ids != s.history_ids {
                return Err(format!("{id}: history ids out of step"));
            }
            total += bytes + s.wrapped_bytes();
        }
        if total != self.total_history_bytes() {
            return Err(format!(
                "total history and wrapped keys {} but counted {}",
                total,
                self.total_history_bytes()
            ));
        }
        if total > limits.max_total_history_bytes {
            return Err(format!("total history {total} over the budget"));
        }
        Ok(())
    }
}
