//! What a node does in Redis besides events: its heartbeat, removing the
//! members of dead nodes (and its own, at start and shutdown), and the
//! eviction sweep.

use super::codec::{departures, flag, text};
use super::{RedisStore, SWEEP_BATCH};
use crate::domain::{epoch_ms, ConnId, SessionId, Unavailable, UserId};
use crate::store::{Departures, Expired, Sweep};

impl RedisStore {
    /// Evicts the sessions whose deadline passed. Every node sweeps; the
    /// script lets exactly one of them evict (and announce) each session.
    pub async fn sweep(&self) -> Result<Sweep, Unavailable> {
        // Not gated: evicting frees memory, and Redis allows it even when
        // full. Batches continue while they come back full, so a burst of
        // sessions due together is evicted before the keys' TTL backstop.
        let mut sweep = Sweep::default();
        loop {
            let due: Vec<String> = match self
                .query_ungated(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.key("idle"))
                        .arg("-inf")
                        .arg(epoch_ms())
                        .arg("LIMIT")
                        .arg(0)
                        .arg(SWEEP_BATCH),
                )
                .await
            {
                Ok(due) => due,
                Err(e) if sweep.evicted == 0 => return Err(e),
                // What was evicted must still be announced.
                Err(_) => return Ok(sweep),
            };
            let full = due.len() == SWEEP_BATCH;
            let mut progress = false;
            for id in due {
                let mut inv = self.invocation(&self.inner.scripts.evict);
                inv.arg(&id);
                let Ok((status, mut r)) = self.run_ungated(inv).await else {
                    return Ok(sweep);
                };
                if status != "ok" {
                    continue;
                }
                progress = true;
                sweep.evicted += 1;
                let conns: Vec<ConnId> = r.list().into_iter().map(|v| ConnId::new(text(v))).collect();
                if let (false, Some(session)) = (conns.is_empty(), SessionId::parse(&id)) {
                    sweep.expired.push(Expired { session, conns });
                }
            }
            if !full || !progress {
                return Ok(sweep);
            }
        }
    }

    /// Writes this node's heartbeat. Returns false when it had lapsed (the
    /// other nodes may have removed this node's members meanwhile).
    pub async fn heartbeat(&self) -> Result<bool, Unavailable> {
        let node = &self.inner.node;
        let beat = self.key(&format!("node:{node}"));
        let ttl = self.inner.node_timeout.as_millis() as u64;
        // PEXPIRE first: Redis allows it even when full, so a full Redis
        // does not make every node look dead.
        let mut conn = self.beat_connection();
        let alive: bool = self
            .bounded(redis::cmd("PEXPIRE").arg(&beat).arg(ttl).query_async(&mut conn))
            .await?;
        if alive {
            return Ok(true);
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&beat)
            .arg(epoch_ms())
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("SADD")
            .arg(self.key("nodes"))
            .arg(node)
            .ignore();
        let () = self.bounded(pipe.query_async(&mut conn)).await?;
        Ok(false)
    }

    /// Removes the members of every node whose heartbeat expired. Only the
    /// node whose call removes a member gets it back, so each departure is
    /// announced once.
    pub async fn reap_dead_nodes(&self) -> Result<Vec<Departures>, Unavailable> {
        let nodes: Vec<String> = self
            .query_ungated(redis::cmd("SMEMBERS").arg(self.key("nodes")))
            .await?;
        let mut all = Vec::new();
        for node in nodes.iter().filter(|n| **n != self.inner.node) {
            // What was removed must still be announced.
            let Ok(departed) = self.remove_members_of(node, false).await else {
                break;
            };
            if !departed.is_empty() {
                let members: usize = departed.iter().map(|d| d.members.len()).sum();
                tracing::warn!(node, members, "node stopped beating: its members were removed");
                crate::metrics::forced_disconnect("dead_node");
            }
            all.extend(departed);
        }
        Ok(all)
    }

    /// The members Redis holds for this node: `(session, user, socket)`.
    pub async fn own_members(&self) -> Result<Vec<(SessionId, UserId, ConnId)>, Unavailable> {
        let mut inv = self.invocation(&self.inner.scripts.node_members);
        inv.arg(&self.inner.node);
        let (_, r) = self.run(inv).await?;
        let fields: Vec<String> = r.0.map(text).collect();
        Ok(fields
            .chunks_exact(3)
            .filter_map(|f| {
                Some((
                    SessionId::parse(&f[0])?,
                    UserId::parse(&f[1])?,
                    ConnId::new(f[2].as_str()),
                ))
            })
            .collect())
    }

    /// Removes the members held by this node, unconditionally: at shutdown,
    /// and at start-up (members left by an earlier run of this `NODE_ID`).
    pub async fn remove_local_members(&self) -> Result<Vec<Departures>, Unavailable> {
        let node = self.inner.node.clone();
        self.remove_members_of(&node, true).await
    }

    /// Removes the members held by `node`: only when it is dead, unless `always`.
    async fn remove_members_of(&self, node: &str, always: bool) -> Result<Vec<Departures>, Unavailable> {
        let mut inv = self.invocation(&self.inner.scripts.remove_node);
        inv.arg(node).arg(flag(always));
        let (status, r) = self.run_ungated(inv).await?;
        if status != "ok" {
            return Ok(Vec::new());
        }
        Ok(r.0.filter_map(departures).collect())
    }
}
