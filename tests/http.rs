//! docs/PROTOCOL.md sections 1 (transport: CORS, origins, Engine.IO version,
//! handshake values, upgrade) and 2 (the HTTP API).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use e2e_chat_server::AllowedOrigins;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as f64
}

fn assert_json_content_type(answer: &HttpAnswer) {
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "Content-Type is {content_type:?}, body {:?}",
        answer.body
    );
}

/// Asserts a 4xx answer of the form `{"error": "<string>"}`.
fn assert_json_error(answer: &HttpAnswer, status: u16) -> String {
    assert_eq!(answer.status, status, "body: {}", answer.body);
    assert_json_content_type(answer);
    let body = answer.json();
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {body}"))
        .to_string()
}

async fn assert_nothing_created(server: &TestServer) {
    assert_eq!(server.sessions().await, Vec::<Value>::new());
    assert_eq!(server.health().await["activeSessions"], 0);
}

/// Status of a WebSocket upgrade to `/socket.io/` with `query`.
async fn ws_upgrade_status(server: &TestServer, query: &str, origin: Option<&str>) -> u16 {
    let url = format!("ws://{}/socket.io/?{query}", server.addr);
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", origin.parse().unwrap());
    }
    let result = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade timed out");
    match result {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

async fn polling_handshake(server: &TestServer, query: &str, origin: Option<&str>) -> HttpAnswer {
    let mut request = server.http.get(server.url(&format!("/socket.io/?{query}")));
    if let Some(origin) = origin {
        request = request.header("Origin", origin);
    }
    server.send(request).await
}

// ---------------------------------------------------------------- /health

#[tokio::test]
async fn health_reports_status_uptime_session_counts_and_timestamp() {
    let server = TestServer::start().await;
    let answer = server.get("/health").await;
    assert_eq!(answer.status, 200);
    assert_json_content_type(&answer);
    let health = answer.json();
    assert_eq!(health["status"], "ok");
    assert!(health["uptime"].as_f64().unwrap() >= 0.0, "{health}");
    assert_eq!(health["activeSessions"], 0);
    assert_eq!(health["sessions"], 0);
    let timestamp = health["timestamp"].as_f64().expect("timestamp is a number");
    assert!(
        (timestamp - now_ms()).abs() < 60_000.0,
        "timestamp {timestamp} is not epoch ms"
    );

    server.reserve("one", "k1", "group").await;
    let _creator = server
        .open_session(Transport::WebSocket, "two", "k2", "private", "alice")
        .await;
    let health = server.health().await;
    assert_eq!(health["activeSessions"], 2);
    assert_eq!(health["sessions"], 2);
}

// ---------------------------------------------------- /api/reserve-session

#[tokio::test]
async fn reserve_session_answers_success_and_creates_a_reserved_session() {
    let server = TestServer::start().await;
    for mode in ["group", "private", "password"] {
        let id = format!("room-{mode}");
        let answer = server
            .reserve_raw(json!({"sessionId": id, "authKey": "key:cGFzcw==", "chatMode": mode}))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_json_content_type(&answer);
        assert_eq!(
            answer.json(),
            json!({"success": true, "sessionId": id, "chatMode": mode, "message": "Session reserved successfully"})
        );
    }
    let listing = server.sessions().await;
    assert_eq!(listing.len(), 3);
    for entry in &listing {
        assert_eq!(entry["members"], 0);
        assert_eq!(entry["messages"], 0);
        assert_eq!(entry["publicKeys"], 0);
    }
}

#[tokio::test]
async fn reserve_without_chat_mode_names_the_mode_it_chose() {
    let server = TestServer::start().await;
    let answer = server
        .reserve_raw(json!({"sessionId": "plain", "authKey": "k"}))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["sessionId"], "plain");
    let mode = body["chatMode"]
        .as_str()
        .expect("chatMode in the answer")
        .to_string();
    assert!(
        ["group", "private", "password"].contains(&mode.as_str()),
        "{body}"
    );

    // The session really is in that mode.
    let creator = server.connect(Transport::WebSocket).await;
    let joined = join_ok(&creator, join_payload("plain:k", "alice", true)).await;
    assert_eq!(joined.metadata["chatMode"], mode);
}

#[tokio::test]
async fn reserve_without_session_id_or_auth_key_is_400_and_creates_nothing() {
    let server = TestServer::start().await;
    for body in [
        json!({"authKey": "k"}),
        json!({"sessionId": "s"}),
        json!({"sessionId": "", "authKey": "k"}),
        json!({"sessionId": "s", "authKey": ""}),
        json!({}),
    ] {
        let answer = server.reserve_raw(body.clone()).await;
        let error = assert_json_error(&answer, 400);
        assert_eq!(error, "Missing sessionId or authKey", "for {body}");
    }
    assert_nothing_created(&server).await;
}

#[tokio::test]
async fn reserve_of_a_taken_id_is_409_and_keeps_the_first_key() {
    let server = TestServer::start().await;
    server.reserve("taken", "first", "group").await;
    let answer = server
        .reserve_raw(json!({"sessionId": "taken", "authKey": "second", "chatMode": "private"}))
        .await;
    assert_eq!(assert_json_error(&answer, 409), "Session already exists");

    // An id created by a creator's join is taken too.
    let _other = server.connect(Transport::WebSocket).await;
    join_ok(&_other, join_payload("joined:k", "bob", true)).await;
    let answer = server
        .reserve_raw(json!({"sessionId": "joined", "authKey": "k"}))
        .await;
    assert_eq!(assert_json_error(&answer, 409), "Session already exists");

    // The refused reservation changed nothing: the first key and mode hold.
    let creator = server.connect(Transport::WebSocket).await;
    join_refused(
        &creator,
        join_payload("taken:second", "alice", true),
        "INVALID_KEY",
    )
    .await;
    let joined = join_ok(&creator, join_payload("taken:first", "alice", true)).await;
    assert_eq!(joined.metadata["chatMode"], "group");
    assert_eq!(server.sessions().await.len(), 2);
}

#[tokio::test]
async fn reserve_with_malformed_json_is_400_json() {
    let server = TestServer::start().await;
    for body in [
        "{not json",
        "",
        "[]",
        "\"text\"",
        "42",
        "null",
        "{\"sessionId\": 5, \"authKey\": \"k\"}",
        "{\"sessionId\": \"s\", \"authKey\": [1]}",
    ] {
        let answer = server.post_raw("/api/reserve-session", body).await;
        assert!(
            answer.status == 400,
            "body {body:?} answered {} {:?}",
            answer.status,
            answer.body
        );
        assert_json_error(&answer, 400);
    }
    assert_nothing_created(&server).await;
}

#[tokio::test]
async fn reserve_with_an_unknown_chat_mode_is_400() {
    let server = TestServer::start().await;
    for mode in [json!("public"), json!("GROUP"), json!(""), json!(3), json!(null)] {
        let answer = server
            .reserve_raw(json!({"sessionId": "s", "authKey": "k", "chatMode": mode}))
            .await;
        // `null` may be read as "absent"; anything else must be refused.
        if mode.is_null() && answer.status == 200 {
            continue;
        }
        assert_json_error(&answer, 400);
    }
    let ids = server.session_ids().await;
    assert!(ids.is_empty() || ids == ["s"], "{ids:?}");
}

#[tokio::test]
async fn reserve_with_an_invalid_session_id_is_400() {
    let server = TestServer::start().await;
    let too_long = "a".repeat(65);
    for id in [
        "a b",
        "a:b",
        "../etc",
        "ü",
        "a/b",
        "a.b",
        "<script>",
        too_long.as_str(),
    ] {
        let answer = server.reserve_raw(json!({"sessionId": id, "authKey": "k"})).await;
        assert_json_error(&answer, 400);
    }
    assert_nothing_created(&server).await;

    let longest = format!("-_{}", "Az09".repeat(16))
        .chars()
        .take(64)
        .collect::<String>();
    assert_eq!(longest.len(), 64);
    server.reserve(&longest, "k", "group").await;
    server.reserve("x", "k", "group").await;
    assert_eq!(server.sessions().await.len(), 2);
}

#[tokio::test]
async fn reserve_with_an_auth_key_over_512_characters_is_400() {
    let server = TestServer::start().await;
    let answer = server
        .reserve_raw(json!({"sessionId": "s", "authKey": "k".repeat(513)}))
        .await;
    assert_json_error(&answer, 400);
    assert_nothing_created(&server).await;

    server.reserve("s", &"k".repeat(512), "group").await;
}

#[tokio::test]
async fn reserve_with_a_body_over_16_kib_is_413() {
    let server = TestServer::start().await;
    let body = json!({"sessionId": "big", "authKey": "k", "padding": "x".repeat(17 * 1024)});
    let answer = server.reserve_raw(body).await;
    assert_json_error(&answer, 413);
    assert_nothing_created(&server).await;
}

// --------------------------------------------------------------- /sessions

#[tokio::test]
async fn sessions_listing_is_404_unless_debug() {
    let server = TestServer::start_with(|c| c.debug = false).await;
    server.reserve("secret-room", "secret-key", "group").await;
    let answer = server.get("/sessions").await;
    assert_json_error(&answer, 404);
    assert!(!answer.body.contains("secret-room"));
}

#[tokio::test]
async fn sessions_listing_with_debug_shows_counts_in_creation_order_and_no_secrets() {
    let server = TestServer::start().await;
    server.reserve("first", "auth-one", "group").await;
    let alice = server
        .open_session(Transport::WebSocket, "second", "auth-two", "group", "alice")
        .await;
    let bob = server
        .join_member(Transport::Polling, "second", "auth-two", "bob")
        .await;
    server.reserve("third", "auth-three", "private").await;

    alice.emit(
        "send-message",
        json!({"sessionId": "second", "from": "alice", "encrypted": "CIPHERTEXT-1", "originalContent": "PLAINTEXT-1", "clientMessageId": "m-1"}),
    );
    bob.recv("new-message").await;

    let answer = server.get("/sessions").await;
    assert_eq!(answer.status, 200);
    assert_json_content_type(&answer);
    let listing = answer.json();
    assert_eq!(
        listing,
        json!([
            {"sessionId": "first", "members": 0, "messages": 0, "publicKeys": 0},
            {"sessionId": "second", "members": 2, "messages": 1, "publicKeys": 2},
            {"sessionId": "third", "members": 0, "messages": 0, "publicKeys": 0},
        ])
    );
    for secret in [
        "auth-one",
        "auth-two",
        "CIPHERTEXT-1",
        "PLAINTEXT-1",
        &public_key("alice"),
    ] {
        assert!(!answer.body.contains(secret), "/sessions reveals {secret}");
    }
}

// ------------------------------------------------------------ anything else

#[tokio::test]
async fn unknown_path_is_404_json() {
    let server = TestServer::start().await;
    for path in ["/nope", "/api", "/api/reserve-session/extra", "/health/x"] {
        let answer = server.get(path).await;
        assert_eq!(assert_json_error(&answer, 404), "Not found", "for {path}");
    }
    let answer = server.post_raw("/api/unknown", "{}").await;
    assert_eq!(assert_json_error(&answer, 404), "Not found");
}

#[tokio::test]
async fn wrong_method_on_a_known_path_is_404_json() {
    let server = TestServer::start().await;
    let answer = server.get("/api/reserve-session").await;
    assert_eq!(assert_json_error(&answer, 404), "Not found");
    let answer = server.post_raw("/health", "{}").await;
    assert_eq!(assert_json_error(&answer, 404), "Not found");
}

// -------------------------------------------------------------------- CORS

#[tokio::test]
async fn http_api_answers_an_allowed_origin_with_cors_headers() {
    let server = TestServer::start().await;
    let answer = server
        .send(
            server
                .http
                .get(server.url("/health"))
                .header("Origin", ALLOWED_ORIGIN),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("access-control-allow-origin").as_deref(),
        Some(ALLOWED_ORIGIN)
    );
    assert_eq!(
        answer.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );

    let answer = server
        .send(
            server
                .http
                .post(server.url("/api/reserve-session"))
                .header("Origin", ALLOWED_ORIGIN)
                .header("Content-Type", "application/json")
                .body(json!({"sessionId": "s", "authKey": "k"}).to_string()),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("access-control-allow-origin").as_deref(),
        Some(ALLOWED_ORIGIN)
    );
    assert_eq!(
        answer.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
}

#[tokio::test]
async fn preflight_for_an_allowed_origin_succeeds_on_api_and_socket_io() {
    let server = TestServer::start().await;
    for (path, method) in [
        ("/api/reserve-session", "POST"),
        ("/socket.io/?EIO=4&transport=polling", "GET"),
    ] {
        let answer = server
            .send(
                server
                    .http
                    .request(reqwest::Method::OPTIONS, server.url(path))
                    .header("Origin", ALLOWED_ORIGIN)
                    .header("Access-Control-Request-Method", method)
                    .header("Access-Control-Request-Headers", "content-type"),
            )
            .await;
        assert!(
            (200..300).contains(&answer.status),
            "preflight {path}: {}",
            answer.status
        );
        assert_eq!(
            answer.header("access-control-allow-origin").as_deref(),
            Some(ALLOWED_ORIGIN),
            "preflight {path}"
        );
        assert_eq!(
            answer.header("access-control-allow-credentials").as_deref(),
            Some("true")
        );
        let methods = answer
            .header("access-control-allow-methods")
            .unwrap_or_default()
            .to_uppercase();
        assert!(
            methods.contains(method) || methods.contains('*'),
            "methods {methods:?} for {path}"
        );
    }
}

#[tokio::test]
async fn socket_io_handshake_answers_an_allowed_origin_with_cors_headers() {
    let server = TestServer::start().await;
    let answer = polling_handshake(&server, "EIO=4&transport=polling", Some(ALLOWED_ORIGIN)).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with('0'), "{}", answer.body);
    assert_eq!(
        answer.header("access-control-allow-origin").as_deref(),
        Some(ALLOWED_ORIGIN)
    );
    assert_eq!(
        answer.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );

    let client = Client::connect_with(
        server.addr,
        Transport::Polling,
        ConnectOptions {
            origin: Some(ALLOWED_ORIGIN.into()),
        },
    )
    .await;
    join_ok(&client, join_payload("s:k", "alice", true)).await;
}

#[tokio::test]
async fn disallowed_origin_gets_no_cors_allow_header_from_the_api() {
    let server = TestServer::start().await;
    let answer = server
        .send(
            server
                .http
                .get(server.url("/health"))
                .header("Origin", FOREIGN_ORIGIN),
        )
        .await;
    assert_eq!(answer.header("access-control-allow-origin"), None);

    let answer = server
        .send(
            server
                .http
                .request(reqwest::Method::OPTIONS, server.url("/api/reserve-session"))
                .header("Origin", FOREIGN_ORIGIN)
                .header("Access-Control-Request-Method", "POST"),
        )
        .await;
    assert_eq!(answer.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn polling_handshake_from_a_disallowed_origin_is_403() {
    let server = TestServer::start().await;
    let answer = polling_handshake(&server, "EIO=4&transport=polling", Some(FOREIGN_ORIGIN)).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        !answer.body.starts_with('0'),
        "an Engine.IO session was opened: {}",
        answer.body
    );
    assert_eq!(answer.header("access-control-allow-origin"), None);

    // No Origin at all (curl, native clients) is served.
    let answer = polling_handshake(&server, "EIO=4&transport=polling", None).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn websocket_upgrade_from_a_disallowed_origin_is_403() {
    let server = TestServer::start().await;
    let query = "EIO=4&transport=websocket";
    assert_eq!(ws_upgrade_status(&server, query, Some(FOREIGN_ORIGIN)).await, 403);
    assert_eq!(
        ws_upgrade_status(&server, query, Some("http://localhost:5174")).await,
        403
    );
    assert_eq!(ws_upgrade_status(&server, query, Some("null")).await, 403);
    assert_eq!(ws_upgrade_status(&server, query, Some(ALLOWED_ORIGIN)).await, 101);
    assert_eq!(ws_upgrade_status(&server, query, None).await, 101);
}

#[tokio::test]
async fn client_url_list_allows_each_listed_origin_and_no_other() {
    let server = TestServer::start_with(|c| {
        c.client_origins = AllowedOrigins::parse("http://a.example,https://b.example").unwrap();
    })
    .await;
    let query = "EIO=4&transport=websocket";
    assert_eq!(
        ws_upgrade_status(&server, query, Some("http://a.example")).await,
        101
    );
    assert_eq!(
        ws_upgrade_status(&server, query, Some("https://b.example")).await,
        101
    );
    assert_eq!(ws_upgrade_status(&server, query, Some(ALLOWED_ORIGIN)).await, 403);
    let answer = polling_handshake(&server, "EIO=4&transport=polling", Some("https://b.example")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("access-control-allow-origin").as_deref(),
        Some("https://b.example")
    );
    let answer = polling_handshake(&server, "EIO=4&transport=polling", Some(ALLOWED_ORIGIN)).await;
    assert_eq!(answer.status, 403);
}

#[tokio::test]
async fn client_url_star_allows_any_origin_with_credentials() {
    let server = TestServer::start_with(|c| c.client_origins = AllowedOrigins::Any).await;
    let query = "EIO=4&transport=websocket";
    assert_eq!(ws_upgrade_status(&server, query, Some(FOREIGN_ORIGIN)).await, 101);
    let answer = polling_handshake(&server, "EIO=4&transport=polling", Some(FOREIGN_ORIGIN)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("access-control-allow-origin").as_deref(),
        Some(FOREIGN_ORIGIN)
    );
    assert_eq!(
        answer.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
}

#[test]
fn allowed_origins_parse_accepts_a_list_and_star() {
    assert!(AllowedOrigins::parse("http://localhost:5173").is_ok());
    assert!(AllowedOrigins::parse("http://localhost:5173,https://chat.example").is_ok());
    assert!(matches!(AllowedOrigins::parse("*"), Ok(AllowedOrigins::Any)));
}

// -------------------------------------------------------- Engine.IO version

#[tokio::test]
async fn engine_io_v3_clients_are_refused_with_400() {
    let server = TestServer::start().await;
    let answer = polling_handshake(&server, "EIO=3&transport=polling", None).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(
        ws_upgrade_status(&server, "EIO=3&transport=websocket", None).await,
        400
    );
}

#[tokio::test]
async fn handshake_announces_the_documented_defaults() {
    let server = TestServer::start().await;
    for transport in TRANSPORTS {
        let client = server.connect(transport).await;
        let open = &client.open_packet;
        assert_eq!(open["pingInterval"], 25_000, "{open}");
        assert_eq!(open["pingTimeout"], 60_000, "{open}");
        assert_eq!(open["maxPayload"], 20 * 1024 * 1024, "{open}");
        if transport == Transport::Polling {
            assert_eq!(open["upgrades"], json!(["websocket"]), "{open}");
        }
    }
}

#[tokio::test]
async fn handshake_announces_configured_values() {
    let server = TestServer::start_with(|c| {
        c.ping_interval = Duration::from_millis(1500);
        c.ping_timeout = Duration::from_millis(2500);
        c.max_payload_bytes = 100_000;
    })
    .await;
    let client = server.connect(Transport::Polling).await;
    assert_eq!(client.open_packet["pingInterval"], 1500);
    assert_eq!(client.open_packet["pingTimeout"], 2500);
    assert_eq!(client.open_packet["maxPayload"], 100_000);
}

#[tokio::test]
async fn polling_session_upgrades_to_websocket_and_keeps_working() {
    let server = TestServer::start().await;
    let alice = server
        .open_session(Transport::WebSocket, "up", "k", "group", "alice")
        .await;

    // Polling handshake and namespace connect, by hand.
    let http = &server.http;
    let base = server.url("/socket.io/?EIO=4&transport=polling");
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap().to_string();
    let polling = format!("{base}&sid={sid}");
    let post = |body: &'static str| {
        http.post(&polling)
            .header("Content-Type", "text/plain;charset=UTF-8")
            .body(body)
            .send()
    };
    assert_eq!(post("40").await.unwrap().status(), 200);
    let connected = http.get(&polling).send().await.unwrap().text().await.unwrap();
    assert!(
        connected.split('\u{1e}').any(|p| p.starts_with("40")),
        "{connected}"
    );
    if connected.split('\u{1e}').any(|p| p == "2") {
        post("3").await.unwrap();
    }

    // Upgrade: 2probe / 3probe / 5 over a WebSocket carrying the same sid.
    let ws_url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        server.addr
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.expect("upgrade");
    ws.send(Message::text("2probe")).await.unwrap();
    let probe = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(probe.to_text().unwrap(), "3probe");
    ws.send(Message::text("5")).await.unwrap();

    // The upgraded socket joins and receives over the WebSocket.
    let join = json!(["join-session", join_payload("up:k", "bob", false)]);
    ws.send(Message::text(format!("42{join}"))).await.unwrap();
    alice.recv("user-joined").await;
    alice.emit(
        "send-message",
        message("up", "alice", Some("bob"), "after-upgrade"),
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no new-message after the upgrade")
            .unwrap()
            .unwrap();
        let text = frame.to_text().unwrap_or_default().to_string();
        if text == "2" {
            ws.send(Message::text("3")).await.unwrap();
        } else if text.starts_with("42[\"new-message\"") {
            assert!(text.contains("after-upgrade"), "{text}");
            break;
        }
    }
}
