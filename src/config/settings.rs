//! Every setting, defined once: its variable, its documented default and
//! what it means. [`Config::from_lookup`](super::Config::from_lookup) reads
//! each through this table (an unset variable takes the default written
//! here), `--help` prints it, and a test checks that the README and
//! `.env.example` list the same variables and defaults.

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The environment variable.
    pub name: &'static str,
    /// Its default, as it would be written in the environment; empty when
    /// the default is "unset".
    pub default: &'static str,
    /// What it means, in one line.
    pub help: &'static str,
}

const fn s(name: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting { name, default, help }
}

/// Every setting, in the README's order.
pub const SETTINGS: &[Setting] = &[
    s("HOST", "0.0.0.0", "address to listen on"),
    s("PORT", "3001", "port to listen on (0 picks a free one)"),
    s("CLIENT_URL", "http://localhost:5173", "allowed browser origins (CORS and the Socket.IO handshake): a comma-separated list, or * for any"),
    s("NODE_ENV", "development", "only logged (kept for the original's deployment files)"),
    s("DEBUG", "false", "true: this server's debug logs and the /sessions debug listing"),
    s("LOG_FORMAT", "text", "text, or json for one JSON object per line"),
    s("SESSION_IDLE_TIMEOUT_SECS", "1800", "a session with no connected member is evicted after this long idle"),
    s("SESSION_MEMBER_TIMEOUT_SECS", "7200", "a session with members is evicted after this long without activity (SESSION_EXPIRED)"),
    s("CLEANUP_INTERVAL_SECS", "60", "how often the eviction sweep runs"),
    s("MAX_PAYLOAD_BYTES", "20971520", "largest Socket.IO message, on both transports (at most 4294967295)"),
    s("PING_INTERVAL_MS", "25000", "Engine.IO heartbeat interval"),
    s("PING_TIMEOUT_MS", "60000", "Engine.IO heartbeat timeout"),
    s("ORIGINAL_CONTENT", "echo", "plaintext policy: echo, author or drop"),
    s("MAX_SESSIONS", "10000", "live sessions at once; more reservations and creations are refused"),
    s("MAX_GROUP_MEMBERS", "100", "connected members of one group session (at least 2)"),
    s("MAX_HISTORY_MESSAGES", "1000", "messages kept per session; the oldest go first"),
    s("MAX_HISTORY_BYTES", "67108864", "ciphertext bytes kept per session; the oldest go first"),
    s("MAX_TOTAL_HISTORY_BYTES", "1073741824", "history bytes of all sessions together; past it the oldest messages of the largest sessions go first"),
    s("MAX_CONNECTIONS", "20000", "open TCP connections at once (more wait in the backlog), and open sockets at once"),
    s("MAX_SOCKETS_PER_IP", "200", "open Socket.IO connections per client IP (0 = no limit)"),
    s("MAX_CONNECTIONS_PER_IP", "500", "open TCP connections per client IP, an IPv6 one by its /64 (0 = no limit); behind TRUST_PROXY, per forwarded address"),
    s("IDLE_CONNECTION_TIMEOUT_SECS", "30", "an HTTP connection with no request in flight for this long is closed (WebSockets: the Engine.IO heartbeat)"),
    s("BODY_MIN_RATE_BYTES_PER_SEC", "2048", "a Socket.IO polling body must bring this much per second, over each BODY_RATE_WINDOW_SECS, or is cut with 408 (0 = no minimum)"),
    s("BODY_RATE_WINDOW_SECS", "20", "the window BODY_MIN_RATE_BYTES_PER_SEC is measured over; the first is the grace period"),
    s("HEADER_READ_TIMEOUT_SECS", "10", "time a client has to send a request's headers (slowloris)"),
    s("API_REQUEST_TIMEOUT_SECS", "10", "time an HTTP API request may take (408 after)"),
    s("TRUST_PROXY", "", "header carrying the client IP set by a trusted reverse proxy (e.g. x-forwarded-for, last entry used); unset: the peer address"),
    s("HANDSHAKE_RATE_PER_IP", "300", "new Socket.IO connections per client IP per minute (0 = no limit)"),
    s("RESERVE_RATE_PER_IP", "30", "sessions created (reservations and creators' joins) per client IP per minute (0 = no limit)"),
    s("AUTH_FAILURES_PER_IP_PER_MIN", "10", "wrong session keys and room passwords per client IP per minute; past it that IP's joins wait (0 = no limit)"),
    s("AUTH_FAILURES_PER_SESSION_PER_MIN", "30", "wrong session keys and room passwords one session takes per minute, from any IP; past it its joins wait (0 = no limit)"),
    s("MAX_SESSIONS_PER_IP", "100", "live sessions created per client IP, by reservation or creator's join (0 = no limit)"),
    s("SEND_RATE_PER_SOCKET", "30", "send-message per second per socket, sustained (0 = no limit)"),
    s("SEND_BURST_PER_SOCKET", "300", "send-message a socket may send at once"),
    s("MAX_BUFFERED_BYTES_PER_SOCKET", "67108864", "bytes queued for one socket and not yet written; past it the socket is cut off as a slow consumer (at least MAX_PAYLOAD_BYTES + 1 MiB)"),
    s("HISTORY_REPLAY_BYTES_PER_MIN", "134217728", "history bytes one socket is sent per minute by its joins; more waits (at least 1 MiB)"),
    s("JOIN_RATE_PER_MIN", "60", "join-session and leave-session per socket per minute (0 = no limit)"),
    s("TYPING_RATE_PER_MIN", "600", "typing + stopped-typing per socket per minute (0 = no limit)"),
    s("METRICS_ADDR", "127.0.0.1:9464", "where GET /metrics is served (host:port), or off; never the public port"),
    s("SHUTDOWN_DRAIN_SECS", "1", "on SIGTERM, how long /ready answers 503 while everything is still served"),
    s("KEY_RATE_PER_MIN", "600", "get-public-keys, save-public-key, set-session-key, file-downloaded and unknown events per socket per minute (0 = no limit)"),
    s("REDIS_URL", "", "unset: the embedded in-memory store. Set (redis:// or rediss://): cluster mode, state in Redis 7 or newer"),
    s("REDIS_TLS_CA_FILE", "", "with a rediss:// REDIS_URL: the CA certificate(s) (PEM) the Redis server must chain to; unset: the system's roots"),
    s("REDIS_PREFIX", "e2e", "prefix of every Redis key and pub/sub channel (1-64 of A-Z a-z 0-9 . _ -)"),
    s("NODE_ID", "", "this node's name in Redis (1-64 of A-Z a-z 0-9 . _ -); unset: random per start. Each node needs its own"),
    s("NODE_TIMEOUT_SECS", "15", "2-300: a node whose heartbeat is older is dead, and the others remove its members"),
    s("STORE_TIMEOUT_MS", "2000", "a Redis call slower than this fails its event with STORE_UNAVAILABLE; at most a third of NODE_TIMEOUT_SECS"),
];

/// The table entry of `name`; every name the configuration reads is in it.
pub fn setting(name: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("setting {name} is missing from SETTINGS"))
}

/// The settings as `--help` lists them.
pub fn help_text() -> String {
    let width = SETTINGS.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut out =
        String::from("settings (environment variables, or a .env file in the working directory):\n");
    for s in SETTINGS {
        let default = if s.default.is_empty() { "unset" } else { s.default };
        out.push_str(&format!(
            "  {:width$}  {}\n  {:width$}  default: {default}\n",
            s.name, s.help, ""
        ));
    }
    out.push_str(&format!(
        "  {:width$}  log filter; overrides DEBUG (e.g. info,e2e_chat_server=debug)\n",
        "RUST_LOG"
    ));
    out
}
