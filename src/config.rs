//! Settings, read once at start-up from the environment (after `.env`).
//!
//! Every setting has a documented default (README and `.env.example`); a value
//! that does not parse stops start-up with an error naming the variable, so
//! nothing ever runs half-configured.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http::HeaderValue;

/// What happens to the plaintext `originalContent` the stock client sends
/// beside each ciphertext (see docs/PROTOCOL.md, `send-message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OriginalContent {
    /// Echoed back to its author in that call's `message-sent` only.
    #[default]
    Echo,
    /// As `Echo`, and also kept for the author's own `messages-history`.
    Author,
    /// Never echoed or stored.
    Drop,
}

impl FromStr for OriginalContent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "echo" => Ok(Self::Echo),
            "author" => Ok(Self::Author),
            "drop" => Ok(Self::Drop),
            _ => Err("expected one of echo, author, drop".into()),
        }
    }
}

/// Origins allowed by CORS and by the Socket.IO handshake origin check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `CLIENT_URL=*`: any origin (the request's origin is mirrored).
    Any,
    /// Exact origins, compared byte for byte with the `Origin` header.
    List(Vec<HeaderValue>),
}

impl AllowedOrigins {
    /// Parses a comma-separated list of origins, or `*`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Self::Any);
        }
        let mut list = Vec::new();
        for origin in s.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            // Browsers never send a trailing slash in `Origin`.
            let origin = origin.trim_end_matches('/');
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(format!("origin {origin:?} must start with http:// or https://"));
            }
            let value = HeaderValue::from_str(origin)
                .map_err(|_| format!("origin {origin:?} is not a valid header value"))?;
            list.push(value);
        }
        if list.is_empty() {
            return Err("expected `*` or at least one origin".into());
        }
        Ok(Self::List(list))
    }

    /// Whether a request carrying this `Origin` header may be served.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            Self::Any => true,
            Self::List(list) => list.iter().any(|o| o == origin),
        }
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::List(list) => {
                let parts: Vec<&str> = list.iter().filter_map(|o| o.to_str().ok()).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

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
    /// `HANDSHAKE_RATE_PER_IP`: new Socket.IO connections per client IP per minute (0 = no limit).
    pub handshake_rate_per_ip: u32,
    /// `RESERVE_RATE_PER_IP`: reservations per client IP per minute (0 = no limit).
    pub reserve_rate_per_ip: u32,
    /// `SEND_RATE_PER_SOCKET`: sustained `send-message` per second per socket (0 = no limit).
    pub send_rate_per_socket: u32,
    /// `SEND_BURST_PER_SOCKET`: `send-message` a socket may send at once.
    pub send_burst_per_socket: u32,
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
    /// The documented defaults, except that it listens on 127.0.0.1 and a free port:
    /// the value tests start from.
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            client_origins: AllowedOrigins::parse(DEFAULT_CLIENT_URL).expect("valid default"),
            node_env: "development".into(),
            debug: false,
            log_format: LogFormat::Text,
            session_idle_timeout: Duration::from_secs(1800),
            session_member_timeout: Duration::from_secs(7200),
            cleanup_interval: Duration::from_secs(60),
            max_payload_bytes: 20 * 1024 * 1024,
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(60_000),
            original_content: OriginalContent::Echo,
            max_sessions: 10_000,
            max_group_members: 100,
            max_history_messages: 1_000,
            max_history_bytes: 64 * 1024 * 1024,
            max_total_history_bytes: 1024 * 1024 * 1024,
            redis_url: None,
            redis_tls_ca_file: None,
            redis_prefix: "e2e".into(),
            node_id: uuid::Uuid::new_v4().simple().to_string(),
            node_timeout: Duration::from_secs(15),
            store_timeout: Duration::from_millis(2000),
            max_connections: 20_000,
            header_read_timeout: Duration::from_secs(10),
            api_request_timeout: Duration::from_secs(10),
            trust_proxy: None,
            max_sockets_per_ip: 200,
            handshake_rate_per_ip: 300,
            reserve_rate_per_ip: 30,
            send_rate_per_socket: 30,
            send_burst_per_socket: 300,
            join_rate_per_min: 60,
            typing_rate_per_min: 600,
            key_rate_per_min: 600,
            metrics_addr: Some(std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
            shutdown_drain: Duration::ZERO,
            #[cfg(feature = "test-hooks")]
            test_panic_event: None,
        }
    }
}

/// Prometheus' conventional exporter port, on loopback only.
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// The stock frontend's development origin (Vite's default port).
const DEFAULT_CLIENT_URL: &str = "http://localhost:5173";

/// A setting that could not be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

impl Config {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment in production, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let defaults = Self::default();
        let config = Self {
            host: env.parse("HOST", IpAddr::V4(Ipv4Addr::UNSPECIFIED))?,
            port: env.parse("PORT", 3001)?,
            client_origins: env.with("CLIENT_URL", defaults.client_origins, AllowedOrigins::parse)?,
            node_env: env.get("NODE_ENV").unwrap_or(defaults.node_env),
            debug: env.with("DEBUG", false, parse_bool)?,
            log_format: env.parse("LOG_FORMAT", defaults.log_format)?,
            session_idle_timeout: env.secs("SESSION_IDLE_TIMEOUT_SECS", defaults.session_idle_timeout)?,
            session_member_timeout: env
                .secs("SESSION_MEMBER_TIMEOUT_SECS", defaults.session_member_timeout)?,
            cleanup_interval: env.secs("CLEANUP_INTERVAL_SECS", defaults.cleanup_interval)?,
            max_payload_bytes: env.positive("MAX_PAYLOAD_BYTES", defaults.max_payload_bytes)?,
            ping_interval: env.millis("PING_INTERVAL_MS", defaults.ping_interval)?,
            ping_timeout: env.millis("PING_TIMEOUT_MS", defaults.ping_timeout)?,
            original_content: env.parse("ORIGINAL_CONTENT", defaults.original_content)?,
            max_sessions: env.positive("MAX_SESSIONS", defaults.max_sessions)?,
            max_group_members: env.with("MAX_GROUP_MEMBERS", defaults.max_group_members, |v| match v
                .parse::<usize>()
            {
                Ok(n) if n >= 2 => Ok(n),
                _ => Err("expected a whole number of at least 2".into()),
            })?,
            max_history_messages: env.parse("MAX_HISTORY_MESSAGES", defaults.max_history_messages)?,
            max_history_bytes: env.parse("MAX_HISTORY_BYTES", defaults.max_history_bytes)?,
            max_total_history_bytes: env
                .positive("MAX_TOTAL_HISTORY_BYTES", defaults.max_total_history_bytes)?,
            redis_url: env.get("REDIS_URL"),
            redis_tls_ca_file: env.get("REDIS_TLS_CA_FILE").map(PathBuf::from),
            redis_prefix: env.with("REDIS_PREFIX", defaults.redis_prefix.clone(), |v| {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if ok {
                    Ok(v.to_owned())
                } else {
                    Err("expected 1 to 64 characters of A-Z a-z 0-9 - _ .".into())
                }
            })?,
            node_id: env.with("NODE_ID", defaults.node_id.clone(), |v| {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if ok {
                    Ok(v.to_owned())
                } else {
                    Err("expected 1 to 64 characters of A-Z a-z 0-9 - _ .".into())
                }
            })?,
            node_timeout: env.with("NODE_TIMEOUT_SECS", defaults.node_timeout, |v| {
                match v.parse::<u64>() {
                    Ok(n) if (2..=300).contains(&n) => Ok(Duration::from_secs(n)),
                    _ => Err("expected a whole number of seconds from 2 to 300".into()),
                }
            })?,
            store_timeout: env.millis("STORE_TIMEOUT_MS", defaults.store_timeout)?,
            max_connections: env.positive("MAX_CONNECTIONS", defaults.max_connections)?,
            header_read_timeout: env.secs("HEADER_READ_TIMEOUT_SECS", defaults.header_read_timeout)?,
            api_request_timeout: env.secs("API_REQUEST_TIMEOUT_SECS", defaults.api_request_timeout)?,
            trust_proxy: env.with("TRUST_PROXY", None, |v| {
                http::HeaderName::from_bytes(v.to_ascii_lowercase().as_bytes())
                    .map(Some)
                    .map_err(|_| "expected a header name such as x-forwarded-for".into())
            })?,
            max_sockets_per_ip: env.parse("MAX_SOCKETS_PER_IP", defaults.max_sockets_per_ip)?,
            handshake_rate_per_ip: env.parse("HANDSHAKE_RATE_PER_IP", defaults.handshake_rate_per_ip)?,
            reserve_rate_per_ip: env.parse("RESERVE_RATE_PER_IP", defaults.reserve_rate_per_ip)?,
            send_rate_per_socket: env.parse("SEND_RATE_PER_SOCKET", defaults.send_rate_per_socket)?,
            send_burst_per_socket: env.positive("SEND_BURST_PER_SOCKET", defaults.send_burst_per_socket)?,
            join_rate_per_min: env.parse("JOIN_RATE_PER_MIN", defaults.join_rate_per_min)?,
            typing_rate_per_min: env.parse("TYPING_RATE_PER_MIN", defaults.typing_rate_per_min)?,
            key_rate_per_min: env.parse("KEY_RATE_PER_MIN", defaults.key_rate_per_min)?,
            metrics_addr: env.with(
                "METRICS_ADDR",
                Some(DEFAULT_METRICS_ADDR.parse().expect("valid")),
                |v| {
                    if v == "off" {
                        return Ok(None);
                    }
                    v.parse()
                        .map(Some)
                        .map_err(|_| "expected host:port such as 127.0.0.1:9464, or off".into())
                },
            )?,
            shutdown_drain: Duration::from_secs(env.parse("SHUTDOWN_DRAIN_SECS", 1u64)?),
            #[cfg(feature = "test-hooks")]
            test_panic_event: None,
        };
        if config.max_payload_bytes > u64::from(u32::MAX) {
            return Err(ConfigError {
                name: "MAX_PAYLOAD_BYTES",
                value: config.max_payload_bytes.to_string(),
                reason: "must be at most 4294967295".into(),
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
            ("HANDSHAKE_RATE_PER_IP", self.handshake_rate_per_ip.to_string()),
            ("RESERVE_RATE_PER_IP", self.reserve_rate_per_ip.to_string()),
            ("SEND_RATE_PER_SOCKET", self.send_rate_per_socket.to_string()),
            ("SEND_BURST_PER_SOCKET", self.send_burst_per_socket.to_string()),
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

/// Typed access to the variables; every error names the variable and its value.
struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    /// The trimmed value, with empty treated as unset.
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn with<T>(
        &self,
        name: &'static str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => parse(&value).map_err(|reason| ConfigError { name, value, reason }),
        }
    }

    fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.with(name, default, |v| v.parse::<T>().map_err(|e| e.to_string()))
    }

    fn positive<T: FromStr + Default + PartialOrd>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError> {
        self.with(name, default, |v| match v.parse::<T>() {
            Ok(n) if n > T::default() => Ok(n),
            _ => Err("expected a positive whole number".into()),
        })
    }

    fn secs(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let secs = self.positive(name, default.as_secs())?;
        Ok(Duration::from_secs(secs))
    }

    fn millis(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let ms = self.positive(name, default.as_millis() as u64)?;
        Ok(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 3001);
        assert_eq!(c.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(c.client_origins.to_string(), "http://localhost:5173");
        assert_eq!(c.session_idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.session_member_timeout, Duration::from_secs(7200));
        assert_eq!(c.max_payload_bytes, 20_971_520);
        assert_eq!(c.original_content, OriginalContent::Echo);
        assert!(c.redis_url.is_none());
        assert!(!c.debug);
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config(&[("METRICS_ADDR", "off")]).unwrap().metrics_addr, None);
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        for (name, value) in [
            ("PORT", "abc"),
            ("PORT", "70000"),
            ("DEBUG", "maybe"),
            ("CLIENT_URL", "localhost:5173"),
            ("SESSION_IDLE_TIMEOUT_SECS", "0"),
            ("MAX_PAYLOAD_BYTES", "-1"),
            ("ORIGINAL_CONTENT", "keep"),
            ("LOG_FORMAT", "xml"),
            ("HOST", "not-an-ip"),
            ("MAX_GROUP_MEMBERS", "1"),
            ("TRUST_PROXY", "bad header"),
            ("SEND_RATE_PER_SOCKET", "fast"),
            ("MAX_CONNECTIONS", "0"),
            ("METRICS_ADDR", "9464"),
        ] {
            let err = config(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn client_url_takes_a_list_or_a_wildcard() {
        let c = config(&[("CLIENT_URL", "https://a.example, https://b.example/")]).unwrap();
        assert!(c
            .client_origins
            .allows(&HeaderValue::from_static("https://b.example")));
        assert!(!c
            .client_origins
            .allows(&HeaderValue::from_static("https://c.example")));
        let c = config(&[("CLIENT_URL", "*")]).unwrap();
        assert_eq!(c.client_origins, AllowedOrigins::Any);
    }

    #[test]
    fn the_summary_masks_the_redis_password() {
        let c = config(&[("REDIS_URL", "redis://app:s3cret@redis:6379/0")]).unwrap();
        let summary = c.summary();
        assert!(
            summary.contains("REDIS_URL=redis://app:***@redis:6379/0"),
            "{summary}"
        );
        assert!(!summary.contains("s3cret"));
    }

    #[test]
    fn a_redis_ca_file_is_a_path_shown_in_the_summary() {
        let c = config(&[
            ("REDIS_URL", "rediss://redis:6380"),
            ("REDIS_TLS_CA_FILE", " /etc/redis-ca.pem "),
        ])
        .unwrap();
        assert_eq!(c.redis_tls_ca_file, Some(PathBuf::from("/etc/redis-ca.pem")));
        assert!(c.summary().contains("REDIS_TLS_CA_FILE=/etc/redis-ca.pem"));
        assert_eq!(config(&[]).unwrap().redis_tls_ca_file, None);
    }

    #[test]
    fn debug_accepts_the_usual_spellings() {
        assert!(config(&[("DEBUG", "true")]).unwrap().debug);
        assert!(config(&[("DEBUG", "TRUE")]).unwrap().debug);
        assert!(!config(&[("DEBUG", "false")]).unwrap().debug);
    }
}
