//! docs/PROTOCOL.md sections 3–5: `join-session`, step by step, with every
//! refusal and what it must not leak.

mod common;

use common::*;
use serde_json::{json, Value};

const JOIN_STEPS: [&str; 3] = ["messages-history", "session-metadata", "public-keys-updated"];

fn key_record<'a>(keys: &'a Value, user: &str) -> &'a Value {
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["userId"] == user)
        .unwrap_or_else(|| panic!("no key of {user} in {keys}"))
}

/// Members in the debug listing (0 when the session does not exist).
async fn members(server: &TestServer, session_id: &str) -> u64 {
    match server.session(session_id).await {
        Some(entry) => entry["members"].as_u64().unwrap(),
        None => panic!("session {session_id} does not exist"),
    }
}

// ------------------------------------------------------------ success paths

#[tokio::test]
async fn creator_joins_a_reserved_session_and_gets_history_metadata_and_keys() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        server.reserve("room", "key", "group").await;
        let creator = server.connect(transport).await;
        creator.emit("join-session", join_payload("room:key", "alice", true));

        // Steps 8, 9, 10 in that order.
        let history = creator.recv("messages-history").await;
        let metadata = creator.recv("session-metadata").await;
        let keys = creator.recv("public-keys-updated").await;
        let names: Vec<String> = creator.all_events().into_iter().map(|e| e.name).collect();
        assert_eq!(names, JOIN_STEPS, "over {transport:?}");

        assert_eq!(history, json!([]));
        assert_eq!(
            metadata,
            json!({"chatMode": "group"}),
            "no encryptedSessionKey field before one is set"
        );
        let record = key_record(&keys, "alice");
        assert_eq!(keys.as_array().unwrap().len(), 1);
        assert_eq!(record["publicKey"], public_key("alice"));
        assert_eq!(record["displayName"], display_name("alice"));
        assert!(
            record["joinedAt"].is_number() || record["joinedAt"].is_string(),
            "{record}"
        );
        creator.expect_no_event("user-joined", QUIET).await;
        assert_eq!(members(&server, "room").await, 1);
    }
}

#[tokio::test]
async fn creator_of_an_unknown_id_creates_it_with_the_offered_key() {
    let server = TestServer::start().await;
    let creator = server.connect(Transport::WebSocket).await;
    join_ok(&creator, join_payload("fresh:secret", "alice", true)).await;
    assert_eq!(server.session_ids().await, ["fresh"]);

    let wrong = server.connect(Transport::Polling).await;
    join_refused(
        &wrong,
        join_payload("fresh:guess", "mallory", false),
        "INVALID_KEY",
    )
    .await;
    let _bob = server
        .join_member(Transport::Polling, "fresh", "secret", "bob")
        .await;
    assert_eq!(members(&server, "fresh").await, 2);
}

#[tokio::test]
async fn creator_with_an_explicit_auth_key_creates_the_session() {
    let server = TestServer::start().await;
    let creator = server.connect(Transport::WebSocket).await;
    let mut payload = join_payload("explicit", "alice", true);
    payload["authKey"] = json!("the-key");
    join_ok(&creator, payload).await;
    let _bob = server
        .join_member(Transport::WebSocket, "explicit", "the-key", "bob")
        .await;
}

#[tokio::test]
async fn joiner_of_an_active_session_is_announced_to_the_others_only() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let alice = server
            .open_session(transport, "room", "key", "group", "alice")
            .await;
        let bob = server.connect(transport).await;
        let joined = join_ok(&bob, join_payload("room:key", "bob", false)).await;

        assert_eq!(joined.history, json!([]));
        assert_eq!(joined.metadata, json!({"chatMode": "group"}));
        assert_eq!(key_owners(&joined.keys), ["alice", "bob"]);

        let announced = alice.recv("user-joined").await;
        assert_eq!(announced["userId"], "bob");
        assert_eq!(announced["displayName"], display_name("bob"));
        assert!(announced["timestamp"].is_number(), "{announced}");
        let keys = alice.recv("public-keys-updated").await;
        assert_eq!(key_owners(&keys), ["alice", "bob"]);
        assert_eq!(key_record(&keys, "bob")["publicKey"], public_key("bob"));

        bob.expect_no_event("user-joined", QUIET).await;
        alice.expect_no_event("user-joined", QUIET).await;
        assert_eq!(members(&server, "room").await, 2);
    }
}

#[tokio::test]
async fn explicit_auth_key_wins_over_the_session_id_suffix() {
    let server = TestServer::start().await;
    let _alice = server
        .open_session(Transport::WebSocket, "room", "right", "group", "alice")
        .await;

    let bob = server.connect(Transport::WebSocket).await;
    let mut payload = join_payload("room:wrong", "bob", false);
    payload["authKey"] = json!("right");
    join_ok(&bob, payload).await;

    let carol = server.connect(Transport::WebSocket).await;
    let mut payload = join_payload("room:right", "carol", false);
    payload["authKey"] = json!("wrong");
    join_refused(&carol, payload, "INVALID_KEY").await;
}

#[tokio::test]
async fn password_room_joiner_proves_only_the_password() {
    let server = TestServer::start().await;
    // The reserved key is "<key>:<base64 password>"; "c2VzYW1l" is "sesame".
    server.reserve("vault", "k3y:c2VzYW1l", "password").await;
    let alice = server.connect(Transport::WebSocket).await;
    let mut payload = join_payload("vault", "alice", true);
    payload["authKey"] = json!("k3y:c2VzYW1l");
    let joined = join_ok(&alice, payload).await;
    assert_eq!(joined.metadata["chatMode"], "password");

    let bob = server.connect(Transport::Polling).await;
    join_ok(&bob, join_payload("vault:password:c2VzYW1l", "bob", false)).await;
    assert_eq!(alice.recv("user-joined").await["userId"], "bob");
}

// --------------------------------------------------------------- refusals

#[tokio::test]
async fn joiner_of_an_unknown_session_gets_session_not_found_and_nothing_is_created() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let bob = server.connect(transport).await;
        let error = join_refused(
            &bob,
            join_payload("nowhere:key", "bob", false),
            "SESSION_NOT_FOUND",
        )
        .await;
        assert_eq!(
            error["message"],
            "Session not found. Please check the session link."
        );
        let error = join_refused(&bob, join_payload("nowhere", "bob", false), "SESSION_NOT_FOUND").await;
        assert_eq!(error["error"], "SESSION_NOT_FOUND");
        assert!(server.sessions().await.is_empty());
        assert_eq!(server.health().await["activeSessions"], 0);
    }
}

#[tokio::test]
async fn creator_without_a_key_gets_invalid_key_and_nothing_is_created() {
    let server = TestServer::start().await;
    let alice = server.connect(Transport::WebSocket).await;
    join_refused(&alice, join_payload("keyless", "alice", true), "INVALID_KEY").await;
    let mut payload = join_payload("keyless:", "alice", true);
    payload["authKey"] = json!("");
    join_refused(&alice, payload, "INVALID_KEY").await;
    assert!(server.sessions().await.is_empty());
}

#[tokio::test]
async fn creator_with_a_different_key_gets_invalid_key_and_the_session_stays_reserved() {
    let server = TestServer::start().await;
    server.reserve("room", "right", "group").await;
    let mallory = server.connect(Transport::WebSocket).await;
    let error = join_refused(
        &mallory,
        join_payload("room:wrong", "mallory", true),
        "INVALID_KEY",
    )
    .await;
    assert_eq!(error["message"], "Session key mismatch. This should not happen.");
    assert_eq!(members(&server, "room").await, 0);

    // Still reserved: a joiner with the right key is told to wait.
    let bob = server.connect(Transport::Polling).await;
    join_refused(
        &bob,
        join_payload("room:right", "bob", false),
        "SESSION_NOT_ACTIVE",
    )
    .await;
}

#[tokio::test]
async fn creator_with_a_different_key_leaks_nothing_to_an_active_room() {
    let server = TestServer::start().await;
    let alice = server
        .open_session(Transport::WebSocket, "room", "right", "group", "alice")
        .await;
    let mallory = server.connect(Transport::Polling).await;
    join_refused(
        &mallory,
        join_payload("room:wrong", "mallory", true),
        "INVALID_KEY",
    )
    .await;
    alice.expect_silence(QUIET).await;
    assert_eq!(members(&server, "room").await, 1);
    assert_eq!(server.session("room").await.unwrap()["publicKeys"], 1);
}

#[tokio::test]
async fn joiner_of_a_reserved_session_gets_session_not_active() {
    let server = TestServer::start().await;
    server.reserve("early", "key", "private").await;
    let bob = server.connect(Transport::Polling).await;
    let error = join_refused(
        &bob,
        join_payload("early:key", "bob", false),
        "SESSION_NOT_ACTIVE",
    )
    .await;
    assert_eq!(
        error["message"],
        "Room not active yet. Please wait for the creator to join first."
    );
    assert_eq!(members(&server, "early").await, 0);
    assert_eq!(server.session("early").await.unwrap()["publicKeys"], 0);

    // Once the creator is in, the same join succeeds.
    let alice = server.connect(Transport::WebSocket).await;
    join_ok(&alice, join_payload("early:key", "alice", true)).await;
    join_ok(&bob, join_payload("early:key", "bob", false)).await;
    assert_eq!(alice.recv("user-joined").await["userId"], "bob");
}

#[tokio::test]
async fn joiner_with_a_wrong_key_gets_invalid_key_and_members_hear_nothing() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let alice = server
            .open_session(Transport::WebSocket, "room", "right", "group", "alice")
            .await;
        let mallory = server.connect(transport).await;
        let error = join_refused(
            &mallory,
            join_payload("room:wrong", "mallory", false),
            "INVALID_KEY",
        )
        .await;
        assert_eq!(
            error["message"],
            "Invalid authentication key. Please check your link and try again."
        );
        join_refused(&mallory, join_payload("room", "mallory", false), "INVALID_KEY").await;
        join_refused(
            &mallory,
            join_payload("room:righ", "mallory", false),
            "INVALID_KEY",
        )
        .await;
        join_refused(
            &mallory,
            join_payload("room:right-and-more", "mallory", false),
            "INVALID_KEY",
        )
        .await;

        alice.expect_silence(QUIET).await;
        assert_eq!(members(&server, "room").await, 1);
        assert_eq!(server.session("room").await.unwrap()["publicKeys"], 1);

        // The refused socket is not bound: its messages go nowhere.
        mallory.emit("send-message", message("room", "mallory", None, "sneak"));
        expect_event_error(&mallory, "send-message", "NOT_IN_SESSION").await;
        alice.expect_no_event("new-message", QUIET).await;
    }
}

#[tokio::test]
async fn password_joiner_with_a_wrong_password_gets_invalid_password() {
    let server = TestServer::start().await;
    server.reserve("vault", "k3y:c2VzYW1l", "password").await;
    let alice = server.connect(Transport::WebSocket).await;
    let mut payload = join_payload("vault", "alice", true);
    payload["authKey"] = json!("k3y:c2VzYW1l");
    join_ok(&alice, payload).await;

    let mallory = server.connect(Transport::Polling).await;
    // "d3Jvbmc=" is "wrong".
    let error = join_refused(
        &mallory,
        join_payload("vault:password:d3Jvbmc=", "mallory", false),
        "INVALID_PASSWORD",
    )
    .await;
    assert_eq!(
        error["message"],
        "Incorrect password. Please check and try again."
    );
    alice.expect_silence(QUIET).await;
    assert_eq!(members(&server, "vault").await, 1);
}

#[tokio::test]
async fn private_and_password_rooms_take_two_and_the_third_gets_session_full() {
    for mode in ["private", "password"] {
        let server = TestServer::start().await;
        let key = "k:c2VzYW1l";
        server.reserve("duo", key, mode).await;
        let alice = server.connect(Transport::WebSocket).await;
        let mut payload = join_payload("duo", "alice", true);
        payload["authKey"] = json!(key);
        join_ok(&alice, payload).await;
        let bob = server.connect(Transport::Polling).await;
        let mut payload = join_payload("duo", "bob", false);
        payload["authKey"] = json!(key);
        join_ok(&bob, payload).await;
        take_join_announcement(&alice, "bob").await;

        let carol = server.connect(Transport::WebSocket).await;
        let mut payload = join_payload("duo", "carol", false);
        payload["authKey"] = json!(key);
        let error = join_refused(&carol, payload, "SESSION_FULL").await;
        assert_eq!(error["message"], "This room is full. Only 2 members allowed.");
        alice.expect_silence(QUIET).await;
        bob.expect_silence(std::time::Duration::ZERO).await;
        assert_eq!(members(&server, "duo").await, 2, "{mode}");
        assert_eq!(server.session("duo").await.unwrap()["publicKeys"], 2, "{mode}");
    }
}

#[tokio::test]
async fn a_member_of_a_full_private_room_can_rejoin_from_a_new_socket() {
    let server = TestServer::start_with(quick_heartbeat).await;
    let room = server
        .open_room(
            "duo",
            "k",
            "private",
            &[("alice", Transport::WebSocket), ("bob", Transport::WebSocket)],
        )
        .await;
    let alice = &room[0];
    // Bob's old connection died unnoticed: it answers nothing any more.
    room[1].go_silent();
    let bob_new = server.connect(Transport::Polling).await;
    join_ok(&bob_new, join_payload("duo:k", "bob", false)).await;
    alice.expect_no_event("user-joined", QUIET).await;
    assert_eq!(members(&server, "duo").await, 2);
}

#[tokio::test]
async fn group_room_takes_many_members_up_to_the_configured_bound() {
    let server = TestServer::start_with(|c| c.max_group_members = 4).await;
    let mut room = server
        .open_room(
            "big",
            "k",
            "group",
            &[
                ("alice", Transport::WebSocket),
                ("bob", Transport::WebSocket),
                ("carol", Transport::Polling),
                ("dave", Transport::WebSocket),
            ],
        )
        .await;
    assert_eq!(members(&server, "big").await, 4);
    let others = room.split_off(1);
    let alice = &room[0];

    let eve = server.connect(Transport::WebSocket).await;
    eve.emit("join-session", join_payload("big:k", "eve", false));
    let error = eve.recv("session-error").await;
    assert!(
        error["error"].is_string() && error["message"].is_string(),
        "{error}"
    );
    eve.expect_no_event("messages-history", QUIET).await;
    alice.expect_silence(std::time::Duration::ZERO).await;
    for other in &others {
        other.expect_silence(std::time::Duration::ZERO).await;
    }
    assert_eq!(members(&server, "big").await, 4);
}

// ------------------------------------------------------------- rejoining

#[tokio::test]
async fn rejoin_from_a_new_socket_keeps_joined_at_and_the_stored_key_and_announces_nothing() {
    for transport in TRANSPORTS {
        let server = TestServer::start_with(quick_heartbeat).await;
        let alice = server
            .open_session(Transport::WebSocket, "room", "k", "group", "alice")
            .await;
        let bob_old = server.connect(transport).await;
        let first = join_ok(&bob_old, join_payload("room:k", "bob", false)).await;
        let joined_at = key_record(&first.keys, "bob")["joinedAt"].clone();
        take_join_announcement(&alice, "bob").await;

        // A reconnect rejoins with publicKey null (the old connection died
        // unnoticed, so it answers nothing); the stored key stays.
        bob_old.go_silent();
        let bob_new = server.connect(transport).await;
        let mut payload = join_payload("room:k", "bob", false);
        payload["publicKey"] = Value::Null;
        let again = join_ok(&bob_new, payload).await;
        let record = key_record(&again.keys, "bob");
        assert_eq!(record["publicKey"], public_key("bob"));
        assert_eq!(record["joinedAt"], joined_at, "joinedAt changed on rejoin");

        alice.expect_no_event("user-joined", QUIET).await;
        assert_eq!(members(&server, "room").await, 2);

        // The member's current socket is the new one.
        alice.emit("send-message", message("room", "alice", Some("bob"), "to-bob"));
        assert_eq!(bob_new.recv("new-message").await["encrypted"], "to-bob");
        bob_old.expect_no_event("new-message", QUIET).await;
    }
}

#[tokio::test]
async fn double_join_on_one_socket_changes_nothing_but_resends_history_metadata_and_keys() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let alice = server
            .open_session(Transport::WebSocket, "room", "k", "group", "alice")
            .await;
        let bob = server.connect(transport).await;
        // The stock client sends both without waiting in between.
        bob.emit("join-session", join_payload("room:k", "bob", false));
        bob.emit("join-session", join_payload("room:k", "bob", false));
        let mut joined_at = Vec::new();
        for _ in 0..2 {
            bob.recv("messages-history").await;
            bob.recv("session-metadata").await;
            let keys = bob.recv("public-keys-updated").await;
            joined_at.push(key_record(&keys, "bob")["joinedAt"].clone());
        }
        assert_eq!(joined_at[0], joined_at[1]);
        assert_eq!(alice.recv("user-joined").await["userId"], "bob");
        alice.expect_no_event("user-joined", QUIET).await;
        bob.expect_no_event("session-error", std::time::Duration::ZERO)
            .await;
        assert_eq!(members(&server, "room").await, 2);
    }
}

#[tokio::test]
async fn every_join_sent_right_after_connecting_is_answered() {
    // socketioxide can drop events that arrive before the connect handler
    // has run (docs/PROTOCOL.md, "Facts about the stack", point 11); a join storm shows it.
    let server = TestServer::start().await;
    let _alice = server
        .open_session(Transport::WebSocket, "storm", "k", "group", "alice")
        .await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(addr, TRANSPORTS[i % 2]).await;
            join_ok(&client, join_payload("storm:k", &format!("user-{i}"), false)).await;
            client
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("a join in the storm was not answered"));
    }
    assert_eq!(members(&server, "storm").await, 61);
}

// ---------------------------------------------------- no auto-created rooms

#[tokio::test]
async fn events_for_unknown_sessions_create_nothing() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let stranger = server.connect(transport).await;
        let ghost = "ghost";
        stranger.emit("get-public-keys", json!({"sessionId": ghost, "userId": "u"}));
        assert_eq!(stranger.recv("public-keys-updated").await, json!([]));

        let refused = [
            (
                "send-message",
                json!({"sessionId": ghost, "from": "u", "encrypted": "x"}),
            ),
            (
                "save-public-key",
                json!({"sessionId": ghost, "userId": "u", "publicKey": "pk", "displayName": "U"}),
            ),
            (
                "set-session-key",
                json!({"sessionId": ghost, "encryptedKeys": {"u": "w"}}),
            ),
            (
                "file-downloaded",
                json!({"sessionId": ghost, "downloadedBy": "u", "senderId": "v", "fileName": "f", "timestamp": 1}),
            ),
            ("leave-session", json!({"sessionId": ghost, "userId": "u"})),
        ];
        for (event, payload) in refused {
            stranger.emit(event, payload);
            expect_event_error(&stranger, event, "NOT_IN_SESSION").await;
        }
        // Typing from a non-member is dropped silently.
        stranger.emit(
            "typing",
            json!({"sessionId": ghost, "userId": "u", "displayName": "U"}),
        );
        stranger.emit(
            "stopped-typing",
            json!({"sessionId": ghost, "userId": "u", "displayName": "U"}),
        );
        stranger.expect_silence(QUIET).await;

        assert!(server.sessions().await.is_empty(), "over {transport:?}");
        assert_eq!(server.health().await["activeSessions"], 0);

        // The id is still free for a real reservation.
        server.reserve(ghost, "k", "group").await;
    }
}

#[tokio::test]
async fn get_public_keys_from_an_unbound_socket_reveals_nothing_of_an_existing_session() {
    let server = TestServer::start().await;
    let alice = server
        .open_session(Transport::WebSocket, "room", "k", "group", "alice")
        .await;
    let stranger = server.connect(Transport::Polling).await;
    stranger.emit(
        "get-public-keys",
        json!({"sessionId": "room:k", "userId": "stranger"}),
    );
    assert_eq!(stranger.recv("public-keys-updated").await, json!([]));
    stranger.expect_no_event("event-error", QUIET).await;
    alice.expect_silence(std::time::Duration::ZERO).await;
    assert_eq!(members(&server, "room").await, 1);
}

// ------------------------------------------------------------ join storms

/// A storm of joins, each sent the moment its client is connected (as the
/// stock client does), on both transports: every one gets all its answers.
/// (socketioxide sends the connect answer before it marks the socket
/// connected and refuses emits until then; the worker waits for the mark.
/// The window is too narrow to hit reliably here, so this guards the storm
/// as a whole rather than that race alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_joins_sent_right_after_connecting_all_get_their_answers() {
    let server = TestServer::start().await;
    for round in 0..15 {
        let joins = (0..20).map(|i| {
            let server = &server;
            async move {
                let transport = if i % 2 == 0 {
                    Transport::WebSocket
                } else {
                    Transport::Polling
                };
                let session_id = format!("storm-{round}-{i}");
                let client = server.connect(transport).await;
                let joined =
                    join_ok(&client, join_payload(&format!("{session_id}:key"), "alice", true)).await;
                assert_eq!(joined.metadata["chatMode"], "group");
                client.close().await;
            }
        });
        futures_util::future::join_all(joins).await;
    }
}
