//! The Redis backend: the sessions of a cluster, shared by every node.
//!
//! Each [`Store`](crate::store::Store) operation is one Lua script (one
//! round trip, atomic in Redis; see [`scripts`] for the key layout). Every
//! call is bounded by `STORE_TIMEOUT_MS`: a Redis that is down or slow turns
//! into [`Unavailable`] (`STORE_UNAVAILABLE` on the wire), never a hang, and
//! the connection manager reconnects by itself when Redis is back.
//!
//! Each node also keeps a heartbeat key and an index of the members
//! connected to it, so that the survivors can remove the members of a node
//! that died ([`RedisStore::reap_dead_nodes`]).

mod codec;
pub mod driver;
mod nodes;
mod ops;
pub mod scripts;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, ScriptInvocation, Value};

use super::Limits;
use crate::domain::{epoch_ms, Unavailable};
use codec::Reply;
use driver::ManagedDriver;

/// Sessions evicted per sweep at most; the rest wait for the next sweep.
const SWEEP_BATCH: usize = 500;
/// Reconnection attempts per failed call; the next call starts again.
const RECONNECT_RETRIES: usize = 2;
/// Longest wait between reconnection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// Oldest Redis the adapter works with (it needs RESP3).
const MIN_REDIS_MAJOR: u32 = 7;

/// The cluster settings from [`crate::Config`].
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `REDIS_URL`.
    pub url: String,
    /// `REDIS_TLS_CA_FILE`.
    pub tls_ca_file: Option<PathBuf>,
    /// `REDIS_PREFIX`: of every key and pub/sub channel.
    pub prefix: String,
    /// `NODE_ID`: how this node names itself in Redis.
    pub node_id: String,
    /// `NODE_TIMEOUT_SECS`: a node whose heartbeat is older is dead.
    pub node_timeout: Duration,
    /// `STORE_TIMEOUT_MS`: the longest a Redis call may take.
    pub store_timeout: Duration,
    /// `CLEANUP_INTERVAL_SECS`: the backstop TTL must outlast a sweep.
    pub cleanup_interval: Duration,
}

/// Who asks for a leave, which decides whether a departure can be
/// announced twice or never when an answer from Redis was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaveBy {
    /// The member's socket (leave-session or disconnect), first attempt.
    Member,
    /// The same, again, after an attempt that got no answer (it may have
    /// been applied: then this one answers as it would have).
    Retry,
    /// The node's reconciliation after a Redis loss: its answer is never
    /// taken by a later retry.
    Reconciliation,
}

/// Cloneable handle to the sessions in Redis.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    /// The heartbeat's own connection: behind a burst of large history
    /// reads on `conn`, a beat could wait long enough for this healthy node
    /// to look dead.
    beat_conn: ConnectionManager,
    prefix: String,
    node: String,
    limits: Limits,
    timeout: Duration,
    node_timeout: Duration,
    /// How long session keys outlive their eviction deadline.
    ttl_margin: Duration,
    /// False from a failed call until the node has recovered (see
    /// [`RedisStore::mark_recovered`]); meanwhile every operation is refused
    /// at once and `/health` says `degraded`.
    healthy: AtomicBool,
    /// Wakes the cluster task when the gate closes, so recovery starts at once.
    gate_closed: tokio::sync::Notify,
    scripts: Scripts,
}

struct Scripts {
    reserve: Script,
    join: Script,
    public_keys: Script,
    save_key: Script,
    set_session_key: Script,
    send_message: Script,
    download_target: Script,
    typing: Script,
    leave: Script,
    evict: Script,
    remove_node: Script,
    node_members: Script,
    history_page: Script,
}

impl Scripts {
    fn all(&self) -> [&Script; 13] {
        [
            &self.reserve,
            &self.join,
            &self.public_keys,
            &self.save_key,
            &self.set_session_key,
            &self.send_message,
            &self.download_target,
            &self.typing,
            &self.leave,
            &self.evict,
            &self.remove_node,
            &self.node_members,
            &self.history_page,
        ]
    }

    /// Puts every script in Redis's cache, so that the first calls need no
    /// second round trip (after a Redis restart a call that gets `NOSCRIPT`
    /// loads its script again by itself).
    async fn preload(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        for script in self.all() {
            script.load_async(conn).await?;
        }
        Ok(())
    }

    fn load() -> Self {
        let s = |body: &str| Script::new(&format!("{}{}", scripts::PRELUDE, body));
        Self {
            reserve: s(scripts::RESERVE),
            join: s(scripts::JOIN),
            public_keys: s(scripts::PUBLIC_KEYS),
            save_key: s(scripts::SAVE_KEY),
            set_session_key: s(scripts::SET_SESSION_KEY),
            send_message: s(scripts::SEND_MESSAGE),
            download_target: s(scripts::DOWNLOAD_TARGET),
            typing: s(scripts::TYPING),
            leave: s(scripts::LEAVE),
            evict: s(scripts::EVICT),
            remove_node: s(scripts::REMOVE_NODE),
            node_members: s(scripts::NODE_MEMBERS),
            history_page: s(scripts::HISTORY_PAGE),
        }
    }
}

/// Connects the store and the adapter's pub/sub driver. Fails, naming
/// `REDIS_URL`, when Redis cannot be reached or is too old.
pub async fn connect(
    settings: &RedisSettings,
    limits: Limits,
) -> anyhow::Result<(RedisStore, ManagedDriver)> {
    let shown = crate::config::mask_url_password(&settings.url);
    let client = client(settings, &shown)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(settings.store_timeout))
        .set_connection_timeout(Some(settings.store_timeout))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_max_delay(RECONNECT_MAX_DELAY);
    let unreachable = || format!("cannot reach Redis at REDIS_URL ({shown})");
    let conn = ConnectionManager::new_with_config(client.clone(), config.clone())
        .await
        .with_context(unreachable)?;
    let beat_conn = ConnectionManager::new_with_config(client.clone(), config.clone())
        .await
        .with_context(unreachable)?;
    check_version(&mut conn.clone()).await.with_context(unreachable)?;
    let scripts = Scripts::load();
    scripts
        .preload(&mut conn.clone())
        .await
        .with_context(unreachable)?;
    let probe = format!("{}:probe:{}", settings.prefix, settings.node_id);
    let driver = ManagedDriver::connect(client, config, probe)
        .await
        .with_context(unreachable)?;
    let store = RedisStore {
        inner: Arc::new(Inner {
            conn,
            beat_conn,
            prefix: settings.prefix.clone(),
            node: settings.node_id.clone(),
            ttl_margin: settings.cleanup_interval * 2 + Duration::from_secs(60),
            limits,
            timeout: settings.store_timeout,
            node_timeout: settings.node_timeout,
            healthy: AtomicBool::new(true),
            gate_closed: tokio::sync::Notify::new(),
            scripts,
        }),
    };
    Ok((store, driver))
}

/// The client of `REDIS_URL`: `redis://` in the clear, `rediss://` over TLS
/// (the server's certificate checked against the system's roots, or against
/// `REDIS_TLS_CA_FILE`).
fn client(settings: &RedisSettings, shown: &str) -> anyhow::Result<redis::Client> {
    let url = with_resp3(&settings.url);
    let invalid = || format!("REDIS_URL ({shown}) is not a valid Redis URL");
    let Some(path) = &settings.tls_ca_file else {
        return redis::Client::open(url.as_str()).with_context(invalid);
    };
    anyhow::ensure!(
        url.starts_with("rediss://"),
        "REDIS_TLS_CA_FILE is set but REDIS_URL ({shown}) is not a rediss:// (TLS) URL"
    );
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read REDIS_TLS_CA_FILE ({})", path.display()))?;
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(url.as_str(), certificates).with_context(|| {
        format!(
            "REDIS_TLS_CA_FILE ({}) holds no usable PEM certificate, or {}",
            path.display(),
            invalid()
        )
    })
}

/// The socketioxide-redis adapter needs RESP3 (push messages).
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

async fn check_version(conn: &mut ConnectionManager) -> anyhow::Result<()> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim()
        .to_owned();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    anyhow::ensure!(
        major >= MIN_REDIS_MAJOR,
        "Redis {version} is too old: the Socket.IO adapter needs Redis {MIN_REDIS_MAJOR} or later"
    );
    Ok(())
}

impl RedisStore {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// The bounds this store enforces.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// How often heartbeats are written and dead nodes looked for.
    pub fn heartbeat_interval(&self) -> Duration {
        self.inner.node_timeout / 3
    }

    pub(super) fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.inner.prefix)
    }

    /// A script call with the arguments every script takes.
    fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        self.invocation_at(script, epoch_ms())
    }

    /// As [`Self::invocation`], at the caller's time `now_ms` (what a join
    /// records as `joinedAt`).
    fn invocation_at<'a>(&self, script: &'a Script, now_ms: u64) -> ScriptInvocation<'a> {
        let limits = &self.inner.limits;
        let mut inv = script.prepare_invoke();
        inv.arg(&self.inner.prefix)
            .arg(now_ms)
            .arg(limits.idle_timeout.as_millis() as u64)
            .arg(limits.member_timeout.as_millis() as u64)
            .arg(self.inner.ttl_margin.as_millis() as u64);
        inv
    }

    /// Runs a script; its answer starts with `ok` or a refusal code. Refused
    /// at once while the node recovers from a lost Redis.
    async fn run(&self, inv: ScriptInvocation<'_>) -> Result<(String, Reply), Unavailable> {
        self.gate()?;
        self.run_ungated(inv).await
    }

    async fn run_ungated(&self, inv: ScriptInvocation<'_>) -> Result<(String, Reply), Unavailable> {
        let mut conn = self.inner.conn.clone();
        let value = self.bounded(inv.invoke_async::<Value>(&mut conn)).await?;
        let mut reply = match value {
            Value::Array(v) => Reply(v.into_iter()),
            other => {
                tracing::error!(?other, "unexpected answer from a store script");
                return Err(Unavailable);
            }
        };
        let status = reply.string();
        Ok((status, reply))
    }

    fn gate(&self) -> Result<(), Unavailable> {
        if self.inner.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Unavailable)
        }
    }

    /// Whether operations are served (Redis reachable, node recovered).
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    /// Stops serving operations until [`Self::mark_recovered`].
    pub fn mark_unhealthy(&self, why: &str) {
        if self.inner.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(
                error = why,
                "Redis unavailable: events fail with STORE_UNAVAILABLE"
            );
            self.inner.gate_closed.notify_one();
        }
    }

    /// Resolves when the gate has closed since the last call.
    pub async fn gate_closed(&self) {
        self.inner.gate_closed.notified().await;
    }

    /// Serves operations again: called once Redis answers, the adapter hears
    /// the other nodes again and this node's heartbeat has been dealt with.
    pub fn mark_recovered(&self) {
        if !self.inner.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("Redis reachable again: serving events");
        }
    }

    /// Awaits a Redis call for at most `STORE_TIMEOUT_MS`; a failure closes
    /// the gate until the node has recovered.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        let outcome = match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(v)) => return Ok(v),
            // A refusal by a working Redis (out of memory under
            // `noeviction`, a script error) fails this call only: closing
            // the gate would also stop what frees memory.
            Ok(Err(e))
                if !(e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()) =>
            {
                crate::metrics::store_unavailable();
                tracing::warn!(error = %e, "Redis refused a call");
                return Err(Unavailable);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within STORE_TIMEOUT_MS".to_owned(),
        };
        crate::metrics::store_unavailable();
        self.mark_unhealthy(&outcome);
        Err(Unavailable)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Unavailable> {
        self.gate()?;
        self.query_ungated(cmd).await
    }

    async fn query_ungated<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Unavailable> {
        let mut conn = self.inner.conn.clone();
        self.bounded(cmd.query_async(&mut conn)).await
    }

    /// The connection the heartbeat writes on.
    fn beat_connection(&self) -> ConnectionManager {
        self.inner.beat_conn.clone()
    }
}
