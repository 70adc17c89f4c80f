//! Settings, read once at start-up from the environment (after `.env`).
//!
//! Every setting is defined once, with its default and meaning, in
//! [`SETTINGS`] (README, `.env.example` and `--help` list the same); a value
//! that does not parse stops start-up with an error naming the variable, so
//! nothing ever runs half-configured.

mod settings;
mod values;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use settings::{help_text, setting, Setting, SETTINGS};
pub use values::{AllowedOrigins, LogFormat, OriginalContent};

/// All settings of one server.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST`: address to listen on.
    pub host: IpAddr,
    /// `PORT`: port to listen on (0 picks a free one; tests use that).
    pub port: u16,
    /// `CLIENT_URL`: allowed browser origins.
    pub client_origins: AllowedOrigins,
    /// `NODE_ENV`: kept for compatibility with the original's deployments; only logged.
    pub node_env: String,
    /// `DEBUG`: verbose logs and the `/sessions` debug listing.
    pub debug: bool,
    /// `LOG_FORMAT`: `text` or `json` (one object per line).
    pub log_format: LogFormat,
    /// `SESSION_IDLE_TIMEOUT_SECS`: a session with no connected member is evicted after this long idle.
    pub session_idle_timeout: Duration,
    /// `SESSION_MEMBER_TIMEOUT_SECS`: a session with members is evicted after this long without activity.
    pub session_member_timeout: Duration,
    /// `CLEANUP_INTERVAL_SECS`: how often the eviction sweep runs.
    pub cleanup_interval: Duration,
    /// `MAX_PAYLOAD_BYTES`: largest Engine.IO message accepted, on both transports.
    pub max_payload_bytes: u64,
    /// `PING_INTERVAL_MS`: Engine.IO heartbeat interval.
    pub ping_interval: Duration,
    /// `PING_TIMEOUT_MS`: Engine.IO heartbeat timeout.
    pub ping_timeout: Duration,
    /// `ORIGINAL_CONTENT`: plaintext policy.
    pub original_content: OriginalContent,
    /// `MAX_SESSIONS`: live sessions at once; reservations and creations beyond it are refused.
    pub max_sessions: usize,
    /// `MAX_GROUP_MEMBERS`: connected members of one group session.
    pub max_group_members: usize,
    /// `MAX_HISTORY_MESSAGES`: messages kept per session (oldest go first).
    pub max_history_messages: usize,
    /// `MAX_HISTORY_BYTES`: ciphertext bytes kept per session (oldest go first).
    pub max_history_bytes: usize,
    /// `MAX_TOTAL_HISTORY_BYTES`: history bytes of all sessions together; past it
    /// the oldest messages of the largest sessions go first.
    pub max_total_history_bytes: usize,
    /// `REDIS_URL`: unset runs the embedded in-memory store; set, every node
    /// with the same URL and prefix shares sessions and emits through Redis.
    pub redis_url: Option<String>,
    /// `REDIS_TLS_CA_FILE`: the CA certificate(s) (PEM) a `rediss://` Redis
    /// is checked against instead of the system's trusted roots.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// `REDIS_PREFIX`: of every Redis key and pub/sub channel, so that
    /// several deployments can share one Redis.
    pub redis_prefix: String,
    /// `NODE_ID`: this node's name in Redis; a random one per start when unset.
    pub node_id: String,
    /// `NODE_TIMEOUT_SECS`: a node whose heartbeat is older is dead, and the
    /// others remove its members. Heartbeats and checks run every third of it.
    pub node_timeout: Duration,
    /// `STORE_TIMEOUT_MS`: the longest a Redis call may take before the
    /// event fails with `STORE_UNAVAILABLE`.
    pub store_timeout: Duration,
    /// `MAX_CONNECTIONS`: open TCP connections at once; more wait in the backlog.
    pub max_connections: usize,
    /// `HEADER_READ_TIMEOUT_SECS`: time a client has to send a request's headers (slowloris).
    pub header_read_timeout: Duration,
    /// `API_REQUEST_TIMEOUT_SECS`: time an HTTP API request may take.
    pub api_request_timeout: Duration,
    /// `TRUST_PROXY`: header carrying the client IP set by a trusted reverse proxy
    /// (e.g. `x-forwarded-for`; its last entry is used). Unset: the peer address.
    pub trust_proxy: Option<http::HeaderName>,
    /// `MAX_SOCKETS_PER_IP`: open Socket.IO connections per client IP (0 = no limit).
    pub max_sockets_per_ip: usize,
    /// `MAX_CONNECTIONS_PER_IP`: open TCP connections per client address (an
    /// IPv6 one by its /64; behind `TRUST_PROXY`, the forwarded one). 0 = no limit.
    pub max_connections_per_ip: usize,
    /// `IDLE_CONNECTION_TIMEOUT_SECS`: an HTTP connection with no request in
    /// flight, and none started or ended, for this long is closed.
    pub idle_connection_timeout: Duration,
    /// `BODY_MIN_RATE_BYTES_PER_SEC`: what a polling POST body must bring per
    /// second, counted over each `BODY_RATE_WINDOW_SECS` (0 = no minimum).
    pub body_min_rate: u64,
    /// `BODY_RATE_WINDOW_SECS`: the window of `BODY_MIN_RATE_BYTES_PER_SEC`;
    /// the first one is a body's grace period.
    pub body_rate_window: Duration,
    /// `HANDSHAKE_RATE_PER_IP`: new Socket.IO connections per client IP per minute (0 = no limit).
    pub handshake_rate_per_ip: u32,
    /// `RESERVE_RATE_PER_IP`: sessions created (reservations and creators'
    /// joins) per client IP per minute (0 = no limit).
    pub reserve_rate_per_ip: u32,
    /// `MAX_SESSIONS_PER_IP`: live sessions created per client IP (0 = no limit).
    pub max_sessions_per_ip: usize,
    /// `AUTH_FAILURES_PER_IP_PER_MIN`: wrong keys and passwords per client IP
    /// per minute before that IP's joins wait (0 = no limit).
    pub auth_failures_per_ip_per_min: u32,
    /// `AUTH_FAILURES_PER_SESSION_PER_MIN`: wrong keys and passwords one
    /// session takes per minute before its joins wait (0 = no limit).
    pub auth_failures_per_session_per_min: u32,
    /// `SEND_RATE_PER_SOCKET`: sustained `send-message` per second per socket (0 = no limit).
    pub send_rate_per_socket: u32,
    /// `SEND_BURST_PER_SOCKET`: `send-message` a socket may send at once.
    pub send_burst_per_socket: u32,
    /// `MAX_BUFFERED_BYTES_PER_SOCKET`: bytes queued for one socket and not
    /// yet written; past it the socket is a slow consumer and is cut off.
    pub max_buffered_bytes_per_socket: usize,
    /// `HISTORY_REPLAY_BYTES_PER_MIN`: history bytes one socket is sent per
    /// minute by its joins (more waits), so repeated joins cannot amplify.
    pub history_replay_bytes_per_min: usize,
    /// `JOIN_RATE_PER_MIN`: `join-session` per socket per minute (0 = no limit).
    pub join_rate_per_min: u32,
    /// `TYPING_RATE_PER_MIN`: `typing`/`stopped-typing` per socket per minute (0 = no limit).
    pub typing_rate_per_min: u32,
    /// `KEY_RATE_PER_MIN`: key events and download notices per socket per minute (0 = no limit).
    pub key_rate_per_min: u32,
    /// `METRICS_ADDR`: where `GET /metrics` is served (`off` disables it). Keep it private.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `SHUTDOWN_DRAIN_SECS`: on SIGTERM, how long `/ready` answers 503 while
    /// everything is still served, so a load balancer can take the node out.
    pub shutdown_drain: Duration,
    /// Test hook (`--features test-hooks`), never read from the environment:
    /// an event name whose handler panics inside a store lock.
    #[cfg(feature = "test-hooks")]
    pub test_panic_event: Option<String>,
}

impl Default for Config {
    /// The documented defaults (a random `NODE_ID`).
    fn default() -> Self {
        Self::from_lookup(|_| None).expect("the documented defaults are valid")
    }
}

/// A setting that could not be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

impl Config {
    /// The documented defaults, but listening on 127.0.0.1 on a free port,
    /// with metrics on a free loopback port and no shutdown drain: the
    /// value tests start from.
    pub fn local() -> Self {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Self {
            host: loopback,
            port: 0,
            metrics_addr: Some(std::net::SocketAddr::new(loopback, 0)),
            shutdown_drain: Duration::ZERO,
            ..Self::default()
        }
    }

    /// What cluster mode needs of the settings together: a heartbeat that
    /// can always be written within its interval.
    pub fn check_cluster(&self) -> Result<(), String> {
        if self.redis_url.is_none() || self.store_timeout * 3 <= self.node_timeout {
            return Ok(());
        }
        Err(format!(
            "STORE_TIMEOUT_MS ({} ms) must be at most a third of NODE_TIMEOUT_SECS ({} s): \
             a heartbeat slower than its interval would make this node look dead",
            self.store_timeout.as_millis(),
            self.node_timeout.as_secs()
        ))
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment in production, a
    /// map in tests); an unset variable takes its default from [`SETTINGS`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let config = Self {
            host: env.parse("HOST")?,
            port: env.parse("PORT")?,
            client_origins: env.with("CLIENT_URL", AllowedOrigins::parse)?,
            node_env: env.with("NODE_ENV", |v| Ok(v.to_owned()))?,
            debug: env.with("DEBUG", parse_bool)?,
            log_format: env.parse("LOG_FORMAT")?,
            session_idle_timeout: env.secs("SESSION_IDLE_TIMEOUT_SECS")?,
            session_member_timeout: env.secs("SESSION_MEMBER_TIMEOUT_SECS")?,
            cleanup_interval: env.secs("CLEANUP_INTERVAL_SECS")?,
            max_payload_bytes: env.with("MAX_PAYLOAD_BYTES", |v| match v.parse::<u64>() {
                Ok(n) if n > u64::from(u32::MAX) => Err("must be at most 4294967295".into()),
                Ok(n) if n > 0 => Ok(n),
                _ => Err("expected a positive whole number".into()),
            })?,
            ping_interval: env.millis("PING_INTERVAL_MS")?,
            ping_timeout: env.millis("PING_TIMEOUT_MS")?,
            original_content: env.parse("ORIGINAL_CONTENT")?,
            max_sessions: env.positive("MAX_SESSIONS")?,
            max_group_members: env.with("MAX_GROUP_MEMBERS", |v| match v.parse::<usize>() {
                Ok(n) if n >= 2 => Ok(n),
                _ => Err("expected a whole number of at least 2".into()),
            })?,
            max_history_messages: env.parse("MAX_HISTORY_MESSAGES")?,
            max_history_bytes: env.parse("MAX_HISTORY_BYTES")?,
            max_total_history_bytes: env.positive("MAX_TOTAL_HISTORY_BYTES")?,
            redis_url: env.optional("REDIS_URL", |v| Ok(v.to_owned()))?,
            redis_tls_ca_file: env.optional("REDIS_TLS_CA_FILE", |v| Ok(PathBuf::from(v)))?,
            redis_prefix: env.with("REDIS_PREFIX", redis_name)?,
            node_id: env
                .optional("NODE_ID", redis_name)?
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            node_timeout: env.with("NODE_TIMEOUT_SECS", |v| match v.parse::<u64>() {
                Ok(n) if (2..=300).contains(&n) => Ok(Duration::from_secs(n)),
                _ => Err("expected a whole number of seconds from 2 to 300".into()),
            })?,
            store_timeout: env.millis("STORE_TIMEOUT_MS")?,
            max_connections: env.positive("MAX_CONNECTIONS")?,
            header_read_timeout: env.secs("HEADER_READ_TIMEOUT_SECS")?,
            api_request_timeout: env.secs("API_REQUEST_TIMEOUT_SECS")?,
            trust_proxy: env.optional("TRUST_PROXY", |v| {
                http::HeaderName::from_bytes(v.to_ascii_lowercase().as_bytes())
                    .map_err(|_| "expected a header name such as x-forwarded-for".into())
            })?,
            max_sockets_per_ip: env.parse("MAX_SOCKETS_PER_IP")?,
            max_connections_per_ip: env.parse("MAX_CONNECTIONS_PER_IP")?,
            idle_connection_timeout: env.secs("IDLE_CONNECTION_TIMEOUT_SECS")?,
            body_min_rate: env.parse("BODY_MIN_RATE_BYTES_PER_SEC")?,
            body_rate_window: env.secs("BODY_RATE_WINDOW_SECS")?,
            handshake_rate_per_ip: env.parse("HANDSHAKE_RATE_PER_IP")?,
            reserve_rate_per_ip: env.parse("RESERVE_RATE_PER_IP")?,
            max_sessions_per_ip: env.parse("MAX_SESSIONS_PER_IP")?,
            auth_failures_per_ip_per_min: env.parse("AUTH_FAILURES_PER_IP_PER_MIN")?,
            auth_failures_per_session_per_min: env.parse("AUTH_FAILURES_PER_SESSION_PER_MIN")?,
            send_rate_per_socket: env.parse("SEND_RATE_PER_SOCKET")?,
            send_burst_per_socket: env.positive("SEND_BURST_PER_SOCKET")?,
            max_buffered_bytes_per_socket: env.positive("MAX_BUFFERED_BYTES_PER_SOCKET")?,
            history_replay_bytes_per_min: env.with("HISTORY_REPLAY_BYTES_PER_MIN", |v| {
                match v.parse::<usize>() {
                    Ok(n) if n >= 1 << 20 => Ok(n),
                    _ => Err("expected a whole number of bytes of at least 1048576".into()),
                }
            })?,
            join_rate_per_min: env.parse("JOIN_RATE_PER_MIN")?,
            typing_rate_per_min: env.parse("TYPING_RATE_PER_MIN")?,
            key_rate_per_min: env.parse("KEY_RATE_PER_MIN")?,
            metrics_addr: env.with("METRICS_ADDR", |v| match v {
                "off" => Ok(None),
                v => v
                    .parse()
                    .map(Some)
                    .map_err(|_| "expected host:port such as 127.0.0.1:9464, or off".into()),
            })?,
            shutdown_drain: Duration::from_secs(env.parse("SHUTDOWN_DRAIN_SECS")?),
            #[cfg(feature = "test-hooks")]
            test_panic_event: None,
        };
        // One largest message must fit in a socket's buffer beside what it
        // already waits for, or a reader that keeps up would be cut off.
        if (config.max_buffered_bytes_per_socket as u64) < config.max_payload_bytes + (1 << 20) {
            return Err(ConfigError {
                name: "MAX_BUFFERED_BYTES_PER_SOCKET",
                value: config.max_buffered_bytes_per_socket.to_string(),
                reason: format!(
                    "must be at least MAX_PAYLOAD_BYTES ({}) + 1048576",
                    config.max_payload_bytes
                ),
            });
        }
        Ok(config)
    }
}

impl Config {
    /// Every effective setting as `NAME=value` pairs for the start-up log,
    /// with the password of `REDIS_URL` masked.
    pub fn summary(&self) -> String {
        let secs = |d: Duration| d.as_secs().to_string();
        let opt = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
        let pairs: Vec<(&str, String)> = vec![
            ("HOST", self.host.to_string()),
            ("PORT", self.port.to_string()),
            ("CLIENT_URL", self.client_origins.to_string()),
            ("NODE_ENV", self.node_env.clone()),
            ("DEBUG", self.debug.to_string()),
            ("LOG_FORMAT", format!("{:?}", self.log_format).to_lowercase()),
            ("SESSION_IDLE_TIMEOUT_SECS", secs(self.session_idle_timeout)),
            ("SESSION_MEMBER_TIMEOUT_SECS", secs(self.session_member_timeout)),
            ("CLEANUP_INTERVAL_SECS", secs(self.cleanup_interval)),
            ("MAX_PAYLOAD_BYTES", self.max_payload_bytes.to_string()),
            ("PING_INTERVAL_MS", self.ping_interval.as_millis().to_string()),
            ("PING_TIMEOUT_MS", self.ping_timeout.as_millis().to_string()),
            (
                "ORIGINAL_CONTENT",
                format!("{:?}", self.original_content).to_lowercase(),
            ),
            ("MAX_SESSIONS", self.max_sessions.to_string()),
            ("MAX_GROUP_MEMBERS", self.max_group_members.to_string()),
            ("MAX_HISTORY_MESSAGES", self.max_history_messages.to_string()),
            ("MAX_HISTORY_BYTES", self.max_history_bytes.to_string()),
            (
                "MAX_TOTAL_HISTORY_BYTES",
                self.max_total_history_bytes.to_string(),
            ),
            ("REDIS_URL", opt(self.redis_url.as_deref().map(mask_url_password))),
            (
                "REDIS_TLS_CA_FILE",
                opt(self.redis_tls_ca_file.as_ref().map(|p| p.display().to_string())),
            ),
            ("REDIS_PREFIX", self.redis_prefix.clone()),
            ("NODE_ID", self.node_id.clone()),
            ("NODE_TIMEOUT_SECS", secs(self.node_timeout)),
            ("STORE_TIMEOUT_MS", self.store_timeout.as_millis().to_string()),
            ("MAX_CONNECTIONS", self.max_connections.to_string()),
            ("HEADER_READ_TIMEOUT_SECS", secs(self.header_read_timeout)),
            ("API_REQUEST_TIMEOUT_SECS", secs(self.api_request_timeout)),
            (
                "TRUST_PROXY",
                opt(self.trust_proxy.as_ref().map(|h| h.to_string())),
            ),
            ("MAX_SOCKETS_PER_IP", self.max_sockets_per_ip.to_string()),
            ("MAX_CONNECTIONS_PER_IP", self.max_connections_per_ip.to_string()),
            ("IDLE_CONNECTION_TIMEOUT_SECS", secs(self.idle_connection_timeout)),
            ("BODY_MIN_RATE_BYTES_PER_SEC", self.body_min_rate.to_string()),
            ("BODY_RATE_WINDOW_SECS", secs(self.body_rate_window)),
            ("HANDSHAKE_RATE_PER_IP", self.handshake_rate_per_ip.to_string()),
            ("RESERVE_RATE_PER_IP", self.reserve_rate_per_ip.to_string()),
            ("MAX_SESSIONS_PER_IP", self.max_sessions_per_ip.to_string()),
            (
                "AUTH_FAILURES_PER_IP_PER_MIN",
                self.auth_failures_per_ip_per_min.to_string(),
            ),
            (
                "AUTH_FAILURES_PER_SESSION_PER_MIN",
                self.auth_failures_per_session_per_min.to_string(),
            ),
            ("SEND_RATE_PER_SOCKET", self.send_rate_per_socket.to_string()),
            ("SEND_BURST_PER_SOCKET", self.send_burst_per_socket.to_string()),
            (
                "MAX_BUFFERED_BYTES_PER_SOCKET",
                self.max_buffered_bytes_per_socket.to_string(),
            ),
            (
                "HISTORY_REPLAY_BYTES_PER_MIN",
                self.history_replay_bytes_per_min.to_string(),
            ),
            ("JOIN_RATE_PER_MIN", self.join_rate_per_min.to_string()),
            ("TYPING_RATE_PER_MIN", self.typing_rate_per_min.to_string()),
            ("KEY_RATE_PER_MIN", self.key_rate_per_min.to_string()),
            ("METRICS_ADDR", opt(self.metrics_addr.map(|a| a.to_string()))),
            ("SHUTDOWN_DRAIN_SECS", secs(self.shutdown_drain)),
        ];
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// `REDIS_PREFIX` and `NODE_ID`: names inside Redis keys.
fn redis_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(v.to_owned())
    } else {
        Err("expected 1 to 64 characters of A-Z a-z 0-9 - _ .".into())
    }
}

/// Typed access to the variables, each falling back to its default in
/// [`SETTINGS`]; every error names the variable and its value.
struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    /// The trimmed value, or the default; empty is unset.
    fn get(&self, name: &'static str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .or_else(|| Some(setting(name).default.to_owned()).filter(|d| !d.is_empty()))
    }

    /// A setting that may be unset (its default is).
    fn optional<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(value) => parse(&value)
                .map(Some)
                .map_err(|reason| ConfigError { name, value, reason }),
        }
    }

    /// A setting with a default.
    fn with<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.optional(name, parse)?.ok_or_else(|| ConfigError {
            name,
            value: String::new(),
            reason: "has no default and must be set".into(),
        })
    }

    fn parse<T: FromStr>(&self, name: &'static str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.with(name, |v| v.parse::<T>().map_err(|e| e.to_string()))
    }

    fn positive<T: FromStr + Default + PartialOrd>(&self, name: &'static str) -> Result<T, ConfigError> {
        self.with(name, |v| match v.parse::<T>() {
            Ok(n) if n > T::default() => Ok(n),
            _ => Err("expected a positive whole number".into()),
        })
    }

    fn secs(&self, name: &'static str) -> Result<Duration, ConfigError> {
        self.positive(name).map(Duration::from_secs)
    }

    fn millis(&self, name: &'static str) -> Result<Duration, ConfigError> {
        self.positive(name).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests;
