//! docs/PROTOCOL.md section 5: `send-message` (routing, ids, plaintext modes,
//! order), history replay per viewer, `file-downloaded`, typing.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use e2e_chat_server::OriginalContent;
use serde_json::{json, Value};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A group room "room" (key "k") with the given members, all joined and
/// their setup events taken.
async fn group(server: &TestServer, users: &[(&str, Transport)]) -> Vec<Client> {
    server.open_room("room", "k", "group", users).await
}

fn encrypted_of(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {messages}"))
        .iter()
        .map(|m| m["encrypted"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------- routing

#[tokio::test]
async fn broadcast_reaches_every_other_member_but_not_the_sender() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[
            ("alice", Transport::WebSocket),
            ("bob", Transport::Polling),
            ("carol", Transport::WebSocket),
        ],
    )
    .await;
    let (alice, bob, carol) = (&room[0], &room[1], &room[2]);

    alice.emit("send-message", message("room", "alice", None, "to-everyone"));
    alice.emit("send-message", message("room", "alice", Some("all"), "to-all"));
    for peer in [bob, carol] {
        let got = peer.recv_many("new-message", 2, TIMEOUT).await;
        assert_eq!(encrypted_of(&Value::Array(got)), ["to-everyone", "to-all"]);
    }
    let sent = alice.recv_many("message-sent", 2, TIMEOUT).await;
    assert_eq!(encrypted_of(&Value::Array(sent)), ["to-everyone", "to-all"]);
    alice.expect_no_event("new-message", QUIET).await;
}

#[tokio::test]
async fn message_has_the_contract_shape_with_server_fields() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[("alice", Transport::WebSocket), ("bob", Transport::Polling)],
    )
    .await;
    let (alice, bob) = (&room[0], &room[1]);

    let before = now_ms();
    alice.emit(
        "send-message",
        json!({"sessionId": "room:k", "from": "alice", "to": "bob", "encrypted": "CIPHER", "originalContent": "PLAIN", "clientMessageId": "cm-1"}),
    );
    let received = bob.recv("new-message").await;
    let after = now_ms();
    assert_eq!(received["id"], "cm-1");
    assert_eq!(received["from"], "alice");
    assert_eq!(received["to"], "bob");
    assert_eq!(received["encrypted"], "CIPHER");
    assert_eq!(received["type"], "text", "type defaults to text");
    assert_eq!(received["senderDisplayName"], display_name("alice"));
    let timestamp = received["timestamp"].as_i64().expect("timestamp is epoch ms");
    assert!(
        before - 1000 <= timestamp && timestamp <= after + 1000,
        "{timestamp} not in [{before}, {after}]"
    );
    let fields: Vec<&String> = received.as_object().unwrap().keys().collect();
    for field in &fields {
        assert!(
            [
                "id",
                "from",
                "to",
                "encrypted",
                "timestamp",
                "type",
                "senderDisplayName"
            ]
            .contains(&field.as_str()),
            "unexpected field {field} in new-message {received}"
        );
    }

    let sent = alice.recv("message-sent").await;
    assert_eq!(sent["id"], "cm-1");
    assert_eq!(sent["timestamp"], received["timestamp"]);
    assert_eq!(sent["senderDisplayName"], display_name("alice"));

    // An explicit type is kept; without clientMessageId the id is fresh.
    let mut file = message("room", "alice", None, "FILE");
    file["type"] = json!("file");
    alice.emit("send-message", file.clone());
    alice.emit("send-message", file);
    let two = bob.recv_many("new-message", 2, TIMEOUT).await;
    assert_eq!(two[0]["type"], "file");
    let (a, b) = (two[0]["id"].as_str().unwrap(), two[1]["id"].as_str().unwrap());
    assert!(!a.is_empty() && a != b, "ids {a:?} {b:?}");
    assert_eq!(server.session("room").await.unwrap()["messages"], 3);
}

#[tokio::test]
async fn direct_message_reaches_only_its_recipient() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let room = group(
            &server,
            &[("alice", transport), ("bob", transport), ("carol", transport)],
        )
        .await;
        let (alice, bob, carol) = (&room[0], &room[1], &room[2]);

        alice.emit("send-message", message("room", "alice", Some("bob"), "for-bob"));
        assert_eq!(bob.recv("new-message").await["encrypted"], "for-bob");
        assert_eq!(alice.recv("message-sent").await["encrypted"], "for-bob");
        carol.expect_silence(QUIET).await;
        alice.expect_no_event("new-message", Duration::ZERO).await;
    }
}

#[tokio::test]
async fn message_to_an_unknown_recipient_reaches_nobody_and_the_sender_gets_unknown_recipient() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[
            ("alice", Transport::WebSocket),
            ("bob", Transport::Polling),
            ("carol", Transport::WebSocket),
        ],
    )
    .await;
    let (alice, bob, carol) = (&room[0], &room[1], &room[2]);

    alice.emit(
        "send-message",
        message("room", "alice", Some("ghost"), "for-ghost"),
    );
    expect_event_error(alice, "send-message", "UNKNOWN_RECIPIENT").await;
    bob.expect_silence(QUIET).await;
    carol.expect_silence(Duration::ZERO).await;
    alice.expect_no_event("new-message", Duration::ZERO).await;

    // A later member called "ghost" does not get it from history either.
    let ghost = server.connect(Transport::WebSocket).await;
    let joined = join_ok(&ghost, join_payload("room:k", "ghost", false)).await;
    assert!(
        !joined.history.to_string().contains("for-ghost"),
        "{}",
        joined.history
    );
}

#[tokio::test]
async fn a_socket_bound_to_one_session_cannot_send_into_another() {
    let server = TestServer::start().await;
    let alice = server
        .open_session(Transport::WebSocket, "one", "k1", "group", "alice")
        .await;
    let bob = server
        .open_session(Transport::Polling, "two", "k2", "group", "bob")
        .await;
    let carol = server
        .join_member(Transport::WebSocket, "two", "k2", "carol")
        .await;
    take_join_announcement(&bob, "carol").await;

    alice.emit("send-message", message("two", "alice", None, "intrusion"));
    expect_event_error(&alice, "send-message", "NOT_IN_SESSION").await;
    bob.expect_silence(QUIET).await;
    carol.expect_silence(Duration::ZERO).await;
    assert_eq!(server.session("two").await.unwrap()["messages"], 0);
}

#[tokio::test]
async fn a_member_cannot_send_as_someone_else() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[("alice", Transport::WebSocket), ("bob", Transport::Polling)],
    )
    .await;
    let (alice, bob) = (&room[0], &room[1]);

    alice.emit("send-message", message("room", "bob", None, "forged"));
    let error = alice.recv("event-error").await;
    assert_eq!(error["event"], "send-message");
    assert!(
        error["error"] == "NOT_ALLOWED" || error["error"] == "NOT_IN_SESSION",
        "{error}"
    );
    bob.expect_silence(QUIET).await;
    alice.expect_no_event("message-sent", Duration::ZERO).await;
    assert_eq!(server.session("room").await.unwrap()["messages"], 0);
}

#[tokio::test]
async fn password_joiner_sends_with_the_full_suffixed_session_id() {
    let server = TestServer::start().await;
    server.reserve("vault", "k:c2VzYW1l", "password").await;
    let alice = server.connect(Transport::WebSocket).await;
    let mut payload = join_payload("vault", "alice", true);
    payload["authKey"] = json!("k:c2VzYW1l");
    join_ok(&alice, payload).await;
    let bob = server.connect(Transport::Polling).await;
    let long_id = "vault:password:c2VzYW1l";
    join_ok(&bob, join_payload(long_id, "bob", false)).await;

    bob.emit("send-message", message(long_id, "bob", Some("alice"), "hi"));
    assert_eq!(alice.recv("new-message").await["encrypted"], "hi");
    bob.emit(
        "typing",
        json!({"sessionId": long_id, "userId": "bob", "displayName": "Bob"}),
    );
    assert_eq!(alice.recv("user-typing").await["userId"], "bob");
    bob.emit("get-public-keys", json!({"sessionId": long_id, "userId": "bob"}));
    assert_eq!(key_owners(&bob.recv("public-keys-updated").await), ["alice"]);
    bob.expect_no_event("event-error", QUIET).await;
}

// ------------------------------------------------------ clientMessageId

#[tokio::test]
async fn repeated_client_message_id_is_relayed_every_time_but_stored_and_confirmed_once() {
    let server = TestServer::start().await;
    let alice = server
        .open_session(Transport::WebSocket, "duo", "k", "private", "alice")
        .await;
    let bob = server.join_member(Transport::Polling, "duo", "k", "bob").await;
    take_join_announcement(&alice, "bob").await;

    // The stock client in private mode: one copy per peer, same id.
    let mut copy = message("duo", "alice", Some("bob"), "once");
    copy["clientMessageId"] = json!("same-id");
    alice.emit("send-message", copy.clone());
    alice.emit("send-message", copy);
    let relayed = bob.recv_many("new-message", 2, TIMEOUT).await;
    assert!(relayed.iter().all(|m| m["id"] == "same-id"));
    assert_eq!(alice.recv("message-sent").await["id"], "same-id");
    alice.expect_no_event("message-sent", QUIET).await;
    assert_eq!(server.session("duo").await.unwrap()["messages"], 1);

    // Bob joins again from his socket (the stock client's double join).
    let joined = join_ok(&bob, join_payload("duo:k", "bob", false)).await;
    assert_eq!(encrypted_of(&joined.history), ["once"]);
}

#[tokio::test]
async fn an_over_long_client_message_id_is_never_used_as_the_id() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[("alice", Transport::WebSocket), ("bob", Transport::WebSocket)],
    )
    .await;
    let (alice, bob) = (&room[0], &room[1]);
    let long_id = "x".repeat(129);
    let mut payload = message("room", "alice", None, "long-id");
    payload["clientMessageId"] = json!(long_id);
    alice.emit("send-message", payload);
    // Either refused as invalid, or accepted under a fresh id.
    tokio::time::sleep(QUIET).await;
    let names = alice.pending_names();
    if names.iter().any(|n| n == "event-error") {
        expect_event_error(alice, "send-message", "INVALID_PAYLOAD").await;
        bob.expect_no_event("new-message", Duration::ZERO).await;
    } else {
        let received = bob.recv("new-message").await;
        assert_ne!(received["id"], json!(long_id));
    }

    let mut ok = message("room", "alice", None, "max-id");
    ok["clientMessageId"] = json!("y".repeat(128));
    alice.emit("send-message", ok);
    assert_eq!(bob.recv("new-message").await["id"], json!("y".repeat(128)));
}

// ---------------------------------------------------- plaintext handling

async fn plaintext_room(mode: OriginalContent) -> (TestServer, Client, Client) {
    let server = TestServer::start_with(|c| c.original_content = mode).await;
    let alice = server
        .open_session(Transport::WebSocket, "room", "k", "group", "alice")
        .await;
    let bob = server.join_member(Transport::Polling, "room", "k", "bob").await;
    take_join_announcement(&alice, "bob").await;
    let mut payload = message("room", "alice", None, "CIPHER");
    payload["originalContent"] = json!("PLAINTEXT-SECRET");
    payload["clientMessageId"] = json!("m1");
    alice.emit("send-message", payload);
    (server, alice, bob)
}

/// The whole history `user` gets on joining: a member joins again from its
/// own socket (`member`, as the stock client's double join does; a live
/// member's seat is not taken by another socket), a newcomer from a new one.
async fn history_of(server: &TestServer, user: &str, member: Option<&Client>) -> Value {
    let fresh;
    let client = match member {
        Some(client) => client,
        None => {
            fresh = server.connect(Transport::WebSocket).await;
            &fresh
        }
    };
    let first = join_ok(client, join_payload("room:k", user, false)).await.history;
    whole_history(client, first).await
}

#[tokio::test]
async fn echo_mode_returns_plaintext_only_in_the_authors_message_sent() {
    let (server, alice, bob) = plaintext_room(OriginalContent::Echo).await;
    assert_eq!(
        alice.recv("message-sent").await["originalContent"],
        "PLAINTEXT-SECRET"
    );
    let relayed = bob.recv("new-message").await;
    assert!(
        relayed.get("originalContent").is_none(),
        "plaintext relayed: {relayed}"
    );

    let authors_history = history_of(&server, "alice", Some(&alice)).await;
    let others_history = history_of(&server, "carol", None).await;
    for history in [&authors_history, &others_history] {
        assert_eq!(encrypted_of(history), ["CIPHER"]);
        assert!(
            !history.to_string().contains("PLAINTEXT-SECRET"),
            "stored plaintext: {history}"
        );
    }
    assert!(!server.get("/sessions").await.body.contains("PLAINTEXT-SECRET"));
}

#[tokio::test]
async fn author_mode_keeps_plaintext_for_the_authors_history_only() {
    let (server, alice, bob) = plaintext_room(OriginalContent::Author).await;
    assert_eq!(
        alice.recv("message-sent").await["originalContent"],
        "PLAINTEXT-SECRET"
    );
    let relayed = bob.recv("new-message").await;
    assert!(
        relayed.get("originalContent").is_none(),
        "plaintext relayed: {relayed}"
    );

    let authors_history = history_of(&server, "alice", Some(&alice)).await;
    assert_eq!(authors_history[0]["originalContent"], "PLAINTEXT-SECRET");
    for (viewer, member) in [("bob", Some(&bob)), ("carol", None)] {
        let history = history_of(&server, viewer, member).await;
        assert_eq!(encrypted_of(&history), ["CIPHER"]);
        assert!(
            !history.to_string().contains("PLAINTEXT-SECRET"),
            "{viewer} sees plaintext: {history}"
        );
    }
}

#[tokio::test]
async fn drop_mode_never_echoes_or_stores_plaintext() {
    let (server, alice, bob) = plaintext_room(OriginalContent::Drop).await;
    let sent = alice.recv("message-sent").await;
    assert!(
        sent.get("originalContent").is_none(),
        "echoed in drop mode: {sent}"
    );
    let relayed = bob.recv("new-message").await;
    assert!(relayed.get("originalContent").is_none(), "{relayed}");
    for (viewer, member) in [("alice", Some(&alice)), ("carol", None)] {
        let history = history_of(&server, viewer, member).await;
        assert!(!history.to_string().contains("PLAINTEXT-SECRET"), "{history}");
    }
}

// ---------------------------------------------------------------- history

#[tokio::test]
async fn late_joiner_sees_only_messages_addressed_to_them() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[
            ("alice", Transport::WebSocket),
            ("bob", Transport::Polling),
            ("carol", Transport::WebSocket),
        ],
    )
    .await;
    let (alice, bob, carol) = (&room[0], &room[1], &room[2]);

    alice.emit(
        "send-message",
        message("room", "alice", None, "m1 alice to everyone"),
    );
    alice.emit(
        "send-message",
        message("room", "alice", Some("bob"), "m2 alice to bob"),
    );
    alice.emit(
        "send-message",
        message("room", "alice", Some("carol"), "m3 alice to carol"),
    );
    alice.emit(
        "send-message",
        message("room", "alice", Some("all"), "m4 alice to all"),
    );
    alice.recv_many("message-sent", 4, TIMEOUT).await;
    bob.emit(
        "send-message",
        message("room", "bob", Some("carol"), "m5 bob to carol"),
    );
    bob.recv("message-sent").await;
    carol.emit(
        "send-message",
        message("room", "carol", None, "m6 carol to everyone"),
    );
    carol.recv("message-sent").await;

    let dave = history_of(&server, "dave", None).await;
    assert_eq!(
        encrypted_of(&dave),
        ["m1 alice to everyone", "m4 alice to all", "m6 carol to everyone"]
    );

    let bob_again = history_of(&server, "bob", Some(bob)).await;
    assert_eq!(
        encrypted_of(&bob_again),
        [
            "m1 alice to everyone",
            "m2 alice to bob",
            "m4 alice to all",
            "m5 bob to carol",
            "m6 carol to everyone"
        ]
    );
    let alice_again = history_of(&server, "alice", Some(alice)).await;
    assert_eq!(
        encrypted_of(&alice_again),
        [
            "m1 alice to everyone",
            "m2 alice to bob",
            "m3 alice to carol",
            "m4 alice to all",
            "m6 carol to everyone"
        ]
    );
    // History entries have the message shape.
    let first = &dave[0];
    assert_eq!(first["from"], "alice");
    assert!(
        first["id"].is_string() && first["timestamp"].is_number(),
        "{first}"
    );
    assert_eq!(first["type"], "text");
}

#[tokio::test]
async fn history_keeps_only_the_newest_messages_within_the_count_bound() {
    let server = TestServer::start_with(|c| c.max_history_messages = 3).await;
    let room = group(
        &server,
        &[("alice", Transport::WebSocket), ("bob", Transport::WebSocket)],
    )
    .await;
    for i in 1..=5 {
        room[0].emit("send-message", message("room", "alice", None, &format!("m{i}")));
    }
    room[1].recv_many("new-message", 5, TIMEOUT).await;
    assert_eq!(
        encrypted_of(&history_of(&server, "carol", None).await),
        ["m3", "m4", "m5"]
    );
    assert_eq!(server.session("room").await.unwrap()["messages"], 3);
}

#[tokio::test]
async fn history_keeps_only_the_newest_messages_within_the_byte_bound() {
    let server = TestServer::start_with(|c| c.max_history_bytes = 4096).await;
    let room = group(
        &server,
        &[("alice", Transport::WebSocket), ("bob", Transport::WebSocket)],
    )
    .await;
    let sent: Vec<String> = (0..10).map(|i| format!("{i}:{}", "z".repeat(1000))).collect();
    for text in &sent {
        room[0].emit("send-message", message("room", "alice", None, text));
    }
    room[1].recv_many("new-message", 10, TIMEOUT).await;
    let kept = encrypted_of(&history_of(&server, "carol", None).await);
    assert!(
        !kept.is_empty() && kept.len() < 10,
        "{} messages kept",
        kept.len()
    );
    assert_eq!(
        kept[..],
        sent[sent.len() - kept.len()..],
        "not the newest, in order"
    );
    let bytes: usize = kept.iter().map(String::len).sum();
    assert!(bytes <= 4096, "{bytes} bytes of ciphertext kept");
}

// ------------------------------------------------------------------ order

async fn assert_order_holds(sender_transport: Transport, receiver_transports: &[Transport]) {
    const COUNT: usize = 500;
    // Order is under test, not the per-socket send rate limit, which a
    // burst of 500 would exceed by design.
    let server = TestServer::start_with(|c| c.send_rate_per_socket = 0).await;
    let mut users = vec![("sender", sender_transport)];
    let names: Vec<String> = (0..receiver_transports.len()).map(|i| format!("r{i}")).collect();
    for (name, &t) in names.iter().zip(receiver_transports) {
        users.push((name.as_str(), t));
    }
    let room = group(&server, &users).await;
    let sender = &room[0];
    for i in 0..COUNT {
        sender.emit("send-message", message("room", "sender", None, &i.to_string()));
    }
    let expected: Vec<String> = (0..COUNT).map(|i| i.to_string()).collect();
    let wait = Duration::from_secs(30);
    let confirmed = sender.recv_many("message-sent", COUNT, wait).await;
    assert_eq!(
        encrypted_of(&Value::Array(confirmed)),
        expected,
        "message-sent out of order"
    );
    for receiver in &room[1..] {
        let got = receiver.recv_many("new-message", COUNT, wait).await;
        assert_eq!(
            encrypted_of(&Value::Array(got)),
            expected,
            "new-message out of order over {:?}",
            receiver.transport()
        );
    }
    let history = encrypted_of(&history_of(&server, "late", None).await);
    assert!(!history.is_empty());
    assert_eq!(
        history[..],
        expected[COUNT - history.len()..],
        "history out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_back_to_back_messages_arrive_in_order_over_websocket() {
    assert_order_holds(Transport::WebSocket, &[Transport::WebSocket, Transport::Polling]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_back_to_back_messages_arrive_in_order_over_polling() {
    assert_order_holds(Transport::Polling, &[Transport::Polling, Transport::WebSocket]).await;
}

// ------------------------------------------------------- file-downloaded

#[tokio::test]
async fn file_downloaded_notifies_only_the_sender_of_the_file() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[
            ("alice", Transport::WebSocket),
            ("bob", Transport::Polling),
            ("carol", Transport::WebSocket),
        ],
    )
    .await;
    let (alice, bob, carol) = (&room[0], &room[1], &room[2]);

    bob.emit(
        "file-downloaded",
        json!({"sessionId": "room:k", "downloadedBy": "bob", "senderId": "alice", "fileName": "cat.png", "timestamp": 1234}),
    );
    assert_eq!(
        alice.recv("download-notification").await,
        json!({"downloadedBy": "bob", "fileName": "cat.png", "timestamp": 1234})
    );
    carol.expect_silence(QUIET).await;
    bob.expect_silence(Duration::ZERO).await;

    // A timestamp that is not a number is replaced by server time.
    bob.emit(
        "file-downloaded",
        json!({"sessionId": "room", "downloadedBy": "bob", "senderId": "alice", "fileName": "cat.png", "timestamp": "yesterday"}),
    );
    let notification = alice.recv("download-notification").await;
    let timestamp = notification["timestamp"].as_i64().expect("server time");
    assert!((timestamp - now_ms()).abs() < 60_000, "{notification}");
}

// ------------------------------------------------------------------ typing

#[tokio::test]
async fn typing_and_stopped_typing_reach_the_other_members() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[
            ("alice", Transport::WebSocket),
            ("bob", Transport::Polling),
            ("carol", Transport::WebSocket),
        ],
    )
    .await;
    let (alice, bob, carol) = (&room[0], &room[1], &room[2]);

    bob.emit(
        "typing",
        json!({"sessionId": "room", "userId": "bob", "displayName": display_name("bob")}),
    );
    for peer in [alice, carol] {
        assert_eq!(
            peer.recv("user-typing").await,
            json!({"userId": "bob", "displayName": display_name("bob")})
        );
    }
    bob.emit(
        "stopped-typing",
        json!({"sessionId": "room", "userId": "bob", "displayName": display_name("bob")}),
    );
    for peer in [alice, carol] {
        assert_eq!(
            peer.recv("user-stopped-typing").await,
            json!({"userId": "bob", "displayName": display_name("bob")})
        );
    }
    bob.expect_silence(QUIET).await;
}

#[tokio::test]
async fn typing_from_a_non_member_is_dropped_silently() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[("alice", Transport::WebSocket), ("bob", Transport::Polling)],
    )
    .await;
    let stranger = server.connect(Transport::WebSocket).await;
    stranger.emit(
        "typing",
        json!({"sessionId": "room", "userId": "stranger", "displayName": "S"}),
    );
    stranger.emit(
        "stopped-typing",
        json!({"sessionId": "room", "userId": "stranger", "displayName": "S"}),
    );
    // A member pretending to be another member is dropped too.
    room[1].emit(
        "typing",
        json!({"sessionId": "room", "userId": "alice", "displayName": "A"}),
    );
    room[0].expect_no_event("user-typing", QUIET).await;
    room[0]
        .expect_no_event("user-stopped-typing", Duration::ZERO)
        .await;
    stranger.expect_silence(Duration::ZERO).await;
}

#[tokio::test]
async fn file_downloaded_from_a_non_member_is_refused_and_leaks_nothing() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[("alice", Transport::WebSocket), ("bob", Transport::Polling)],
    )
    .await;
    let stranger = server.connect(Transport::WebSocket).await;
    stranger.emit(
        "file-downloaded",
        json!({"sessionId": "room", "downloadedBy": "stranger", "senderId": "alice", "fileName": "x", "timestamp": 1}),
    );
    expect_event_error(&stranger, "file-downloaded", "NOT_IN_SESSION").await;
    room[0].expect_silence(QUIET).await;
    room[1].expect_silence(Duration::ZERO).await;
}

// ------------------------------------------------------------ no nulls

fn null_paths(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Null => found.push(path.to_string()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                null_paths(item, &format!("{path}[{i}]"), found);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                null_paths(item, &format!("{path}.{key}"), found);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn fields_without_a_value_are_left_out_never_null() {
    let server = TestServer::start().await;
    let room = group(
        &server,
        &[("alice", Transport::WebSocket), ("bob", Transport::Polling)],
    )
    .await;
    let (alice, bob) = (&room[0], &room[1]);
    // Minimal payloads: no to, type, clientMessageId, originalContent,
    // timestamp or displayName.
    alice.emit(
        "send-message",
        json!({"sessionId": "room", "from": "alice", "encrypted": "c"}),
    );
    bob.recv("new-message").await;
    alice.recv("message-sent").await;
    bob.emit(
        "file-downloaded",
        json!({"sessionId": "room", "downloadedBy": "bob", "senderId": "alice", "fileName": "f"}),
    );
    alice.recv("download-notification").await;
    bob.emit("typing", json!({"sessionId": "room", "userId": "bob"}));
    alice.recv("user-typing").await;
    // A joiner without a public key and a reload with publicKey null.
    let carol = server.connect(Transport::WebSocket).await;
    let mut payload = join_payload("room:k", "carol", false);
    payload["publicKey"] = Value::Null;
    payload.as_object_mut().unwrap().remove("displayName");
    join_ok(&carol, payload).await;
    alice.recv("user-joined").await;
    carol.emit("leave-session", json!({"sessionId": "room", "userId": "carol"}));
    alice.recv("user-left").await;

    let mut found = Vec::new();
    for (who, client) in [("alice", alice), ("bob", bob), ("carol", &carol)] {
        for event in client.all_events() {
            null_paths(&event.data, &format!("{who}:{}", event.name), &mut found);
        }
    }
    assert!(found.is_empty(), "null fields: {found:?}");
}
