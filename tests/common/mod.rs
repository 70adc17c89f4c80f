//! Shared test helpers: a real server on port 0, a raw Socket.IO client
//! (`client.rs`), plain HTTP calls, and the join steps most tests start with.
//!
//! Every integration-test file compiles this module on its own and uses a
//! different part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod client;

use std::net::SocketAddr;
use std::time::Duration;

use e2e_chat_server::{Config, RunningServer, Server};
use serde_json::{json, Value};

#[allow(unused_imports)]
pub use client::{Client, ConnectOptions, Event, Transport, TIMEOUT, TRANSPORTS};

/// How long a test waits to be sure something did *not* happen. Events on
/// loopback arrive within milliseconds, so this is generous.
pub const QUIET: Duration = Duration::from_millis(300);

/// The default allowed origin (`CLIENT_URL`'s default).
pub const ALLOWED_ORIGIN: &str = "http://localhost:5173";
pub const FOREIGN_ORIGIN: &str = "http://evil.example";

/// The configuration every test starts from: the documented defaults on
/// 127.0.0.1:0, with `DEBUG` on so that `/sessions` can show what exists,
/// and with the abuse rate limits off. Every test client comes from
/// 127.0.0.1, so per-IP limits would be shared by a whole test (a join storm
/// or a table of refused reservations trips them); these suites test the
/// contract's behaviour, and the limits are tested on their own.
pub fn test_config() -> Config {
    Config {
        debug: true,
        max_sockets_per_ip: 0,
        handshake_rate_per_ip: 0,
        reserve_rate_per_ip: 0,
        max_sessions_per_ip: 0,
        send_rate_per_socket: 0,
        join_rate_per_min: 0,
        typing_rate_per_min: 0,
        key_rate_per_min: 0,
        ..Config::local()
    }
}

/// A heartbeat of a few hundred milliseconds, for tests where a member's
/// old socket goes silent: the server replaces such a socket once it missed
/// a ping interval (and a 2 s grace), docs/PROTOCOL.md "One member, one
/// socket".
pub fn quick_heartbeat(config: &mut Config) {
    config.ping_interval = std::time::Duration::from_millis(300);
    config.ping_timeout = std::time::Duration::from_secs(5);
}

/// A running server plus an HTTP client pointed at it.
pub struct TestServer {
    server: Option<RunningServer>,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

/// A plain HTTP answer.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpAnswer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server from `test_config()` changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        adjust(&mut config);
        let server = tokio::time::timeout(TIMEOUT, Server::start(config))
            .await
            .expect("server start timed out")
            .expect("server failed to start");
        let addr = server.addr();
        TestServer {
            server: Some(server),
            addr,
            http: client::http_client(),
        }
    }

    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server.shutdown())
                .await
                .expect("graceful shutdown took longer than 10 s");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> HttpAnswer {
        let response = tokio::time::timeout(TIMEOUT, request.send())
            .await
            .expect("HTTP request timed out")
            .expect("HTTP request failed");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("HTTP body");
        HttpAnswer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> HttpAnswer {
        self.send(self.http.get(self.url(path))).await
    }

    /// POSTs a raw body with `Content-Type: application/json`.
    pub async fn post_raw(&self, path: &str, body: impl Into<String>) -> HttpAnswer {
        let request = self
            .http
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .body(body.into());
        self.send(request).await
    }

    pub async fn reserve_raw(&self, body: Value) -> HttpAnswer {
        self.post_raw("/api/reserve-session", body.to_string()).await
    }

    /// Reserves a session and asserts success.
    pub async fn reserve(&self, session_id: &str, auth_key: &str, chat_mode: &str) {
        let answer = self
            .reserve_raw(json!({"sessionId": session_id, "authKey": auth_key, "chatMode": chat_mode}))
            .await;
        assert_eq!(answer.status, 200, "reserve failed: {}", answer.body);
    }

    pub async fn health(&self) -> Value {
        let answer = self.get("/health").await;
        assert_eq!(answer.status, 200, "health: {}", answer.body);
        answer.json()
    }

    /// The debug listing (`DEBUG` is on in `test_config`).
    pub async fn sessions(&self) -> Vec<Value> {
        let answer = self.get("/sessions").await;
        assert_eq!(answer.status, 200, "/sessions: {}", answer.body);
        answer.json().as_array().expect("/sessions is an array").clone()
    }

    /// The debug listing's entry for one session, if it exists.
    pub async fn session(&self, session_id: &str) -> Option<Value> {
        self.sessions()
            .await
            .into_iter()
            .find(|s| s["sessionId"] == session_id)
    }

    pub async fn session_ids(&self) -> Vec<String> {
        self.sessions()
            .await
            .iter()
            .map(|s| s["sessionId"].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn connect(&self, transport: Transport) -> Client {
        Client::connect(self.addr, transport).await
    }

    /// Reserves `session_id` in `mode` and joins `creator` as its creator
    /// the way the stock frontend does (`"id:key"` as `sessionId`). The
    /// join's own events are taken.
    pub async fn open_session(
        &self,
        transport: Transport,
        session_id: &str,
        key: &str,
        mode: &str,
        creator: &str,
    ) -> Client {
        self.reserve(session_id, key, mode).await;
        let client = self.connect(transport).await;
        join_ok(
            &client,
            join_payload(&format!("{session_id}:{key}"), creator, true),
        )
        .await;
        client
    }

    /// Opens `session_id` (key `key`, `mode`) with `users[0]` as creator and
    /// joins the others in turn. Each member's announcements of later joins
    /// (`user-joined`, `public-keys-updated`) are awaited and taken, so the
    /// returned clients start with nothing pending.
    pub async fn open_room(
        &self,
        session_id: &str,
        key: &str,
        mode: &str,
        users: &[(&str, Transport)],
    ) -> Vec<Client> {
        let (creator, transport) = users[0];
        let mut clients = vec![self.open_session(transport, session_id, key, mode, creator).await];
        for &(user, transport) in &users[1..] {
            let joiner = self.join_member(transport, session_id, key, user).await;
            for member in &clients {
                take_join_announcement(member, user).await;
            }
            clients.push(joiner);
        }
        for client in &clients {
            assert_eq!(
                client.pending_names(),
                Vec::<String>::new(),
                "left over after setup"
            );
        }
        clients
    }

    /// Connects and joins `user` to an active session with the right key;
    /// the join's own events are taken.
    pub async fn join_member(&self, transport: Transport, session_id: &str, key: &str, user: &str) -> Client {
        let client = self.connect(transport).await;
        join_ok(&client, join_payload(&format!("{session_id}:{key}"), user, false)).await;
        client
    }
}

/// The display name the helpers give a user.
pub fn display_name(user: &str) -> String {
    format!("{user} (name)")
}

/// The public key the helpers give a user.
pub fn public_key(user: &str) -> String {
    format!("pk-of-{user}")
}

/// A `join-session` payload as the stock client sends it, with no
/// `authKey` field (the key rides in the `sessionId` suffix).
pub fn join_payload(session_id: &str, user: &str, is_creator: bool) -> Value {
    json!({
        "sessionId": session_id,
        "userId": user,
        "displayName": display_name(user),
        "publicKey": public_key(user),
        "isCreator": is_creator,
    })
}

/// What a successful join sends to the joiner (steps 8–10).
#[derive(Debug)]
pub struct Joined {
    pub history: Value,
    pub metadata: Value,
    pub keys: Value,
}

/// Emits `join-session` and takes the three answers of a successful join.
pub async fn join_ok(client: &Client, payload: Value) -> Joined {
    client.emit("join-session", payload);
    let history = client.recv("messages-history").await;
    let metadata = client.recv("session-metadata").await;
    let keys = client.recv("public-keys-updated").await;
    Joined {
        history,
        metadata,
        keys,
    }
}

/// A joiner's whole history: the first page a join answers and the pages
/// that follow it, one `messages-history` each, until none comes for a
/// while (docs/PROTOCOL.md: history travels in pages the client merges).
pub async fn whole_history(client: &Client, first: Value) -> Value {
    let mut all = first.as_array().cloned().unwrap_or_default();
    while let Some(page) = client
        .try_recv_event("messages-history", std::time::Duration::from_millis(500))
        .await
    {
        all.extend(page.as_array().cloned().unwrap_or_default());
    }
    Value::Array(all)
}

/// Emits `join-session`, expects a `session-error` with `code`, and that
/// none of a successful join's events came.
pub async fn join_refused(client: &Client, payload: Value, code: &str) -> Value {
    client.emit("join-session", payload);
    let error = client.recv("session-error").await;
    assert_eq!(error["error"], code, "session-error: {error}");
    assert!(
        error["message"].is_string(),
        "session-error without message: {error}"
    );
    for name in ["messages-history", "session-metadata", "public-keys-updated"] {
        client.expect_no_event(name, Duration::ZERO).await;
    }
    client.expect_silence(QUIET).await;
    error
}

/// Takes what a member hears when `user` joins: `user-joined`, then
/// `public-keys-updated`.
pub async fn take_join_announcement(member: &Client, user: &str) {
    let joined = member.recv("user-joined").await;
    assert_eq!(joined["userId"], user, "{joined}");
    member.recv("public-keys-updated").await;
}

/// Expects an `event-error` for `event` with `code`.
pub async fn expect_event_error(client: &Client, event: &str, code: &str) -> Value {
    let error = client.recv("event-error").await;
    assert_eq!(error["event"], event, "event-error: {error}");
    assert_eq!(error["error"], code, "event-error: {error}");
    assert!(
        error["message"].is_string(),
        "event-error without message: {error}"
    );
    error
}

/// The `userId`s of a `public-keys-updated` list, sorted.
pub fn key_owners(keys: &Value) -> Vec<String> {
    let mut owners: Vec<String> = keys
        .as_array()
        .unwrap_or_else(|| panic!("public-keys-updated is not an array: {keys}"))
        .iter()
        .map(|k| k["userId"].as_str().unwrap().to_string())
        .collect();
    owners.sort();
    owners
}

/// A `send-message` payload from `from` to `to` (`None` = everyone).
pub fn message(session_id: &str, from: &str, to: Option<&str>, encrypted: &str) -> Value {
    let mut payload = json!({
        "sessionId": session_id,
        "from": from,
        "encrypted": encrypted,
        "type": "text",
    });
    if let Some(to) = to {
        payload["to"] = json!(to);
    }
    payload
}
