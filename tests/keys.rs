//! docs/PROTOCOL.md section 5: public keys (`get-public-keys`,
//! `save-public-key`) and the group key (`set-session-key`,
//! `session-key-available`, `session-metadata`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn key_of<'a>(keys: &'a Value, user: &str) -> &'a Value {
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["userId"] == user)
        .unwrap_or_else(|| panic!("no key of {user} in {keys}"))
}

/// A room "room" (key "k") in `mode` with alice (creator), bob and, for
/// group rooms, carol; setup events taken.
async fn room(server: &TestServer, mode: &str) -> Vec<Client> {
    let mut users = vec![("alice", Transport::WebSocket), ("bob", Transport::Polling)];
    if mode == "group" {
        users.push(("carol", Transport::WebSocket));
    }
    server.open_room("room", "k", mode, &users).await
}

// --------------------------------------------------------- get-public-keys

#[tokio::test]
async fn get_public_keys_before_joining_answers_an_empty_list_and_creates_nothing() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        server.reserve("reserved", "k", "group").await;
        let client = server.connect(transport).await;
        for session_id in ["unknown", "reserved", "reserved:k"] {
            client.emit(
                "get-public-keys",
                json!({"sessionId": session_id, "userId": "me"}),
            );
            assert_eq!(client.recv("public-keys-updated").await, json!([]));
        }
        client.expect_no_event("event-error", QUIET).await;
        assert_eq!(server.session_ids().await, ["reserved"]);
    }
}

#[tokio::test]
async fn get_public_keys_from_a_member_lists_every_key_but_the_requesters() {
    let server = TestServer::start().await;
    let clients = room(&server, "group").await;
    let (alice, bob, carol) = (&clients[0], &clients[1], &clients[2]);

    alice.emit(
        "get-public-keys",
        json!({"sessionId": "room:k", "userId": "alice"}),
    );
    let keys = alice.recv("public-keys-updated").await;
    assert_eq!(key_owners(&keys), ["bob", "carol"]);
    let bobs = key_of(&keys, "bob");
    assert_eq!(bobs["publicKey"], public_key("bob"));
    assert_eq!(bobs["displayName"], display_name("bob"));
    assert!(!bobs["joinedAt"].is_null(), "{bobs}");

    // Only the requester hears the answer.
    bob.expect_silence(QUIET).await;
    carol.expect_silence(Duration::ZERO).await;
}

// --------------------------------------------------------- save-public-key

#[tokio::test]
async fn save_public_key_stores_the_key_and_tells_the_whole_room() {
    let server = TestServer::start().await;
    let clients = room(&server, "group").await;
    let bob = &clients[1];

    bob.emit(
        "save-public-key",
        json!({"sessionId": "room", "userId": "bob", "publicKey": "bobs-new-key", "displayName": "Bob"}),
    );
    for client in &clients {
        let keys = client.recv("public-keys-updated").await;
        assert_eq!(key_owners(&keys), ["alice", "bob", "carol"]);
        assert_eq!(key_of(&keys, "bob")["publicKey"], "bobs-new-key");
    }

    let dave = server.connect(Transport::WebSocket).await;
    let joined = join_ok(&dave, join_payload("room:k", "dave", false)).await;
    assert_eq!(key_of(&joined.keys, "bob")["publicKey"], "bobs-new-key");
}

#[tokio::test]
async fn save_public_key_for_another_user_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let clients = room(&server, "group").await;
    let (alice, bob, carol) = (&clients[0], &clients[1], &clients[2]);

    bob.emit(
        "save-public-key",
        json!({"sessionId": "room", "userId": "alice", "publicKey": "forged", "displayName": "Alice"}),
    );
    let error = bob.recv("event-error").await;
    assert_eq!(error["event"], "save-public-key");
    assert!(
        error["error"] == "NOT_ALLOWED" || error["error"] == "NOT_IN_SESSION",
        "{error}"
    );
    alice.expect_silence(QUIET).await;
    carol.expect_silence(Duration::ZERO).await;

    alice.emit("get-public-keys", json!({"sessionId": "room", "userId": "alice"}));
    carol.emit("get-public-keys", json!({"sessionId": "room", "userId": "carol"}));
    let keys = carol.recv("public-keys-updated").await;
    assert_eq!(key_of(&keys, "alice")["publicKey"], public_key("alice"));
}

#[tokio::test]
async fn save_public_key_from_a_non_member_is_refused_and_leaks_nothing() {
    let server = TestServer::start().await;
    let clients = room(&server, "private").await;
    let stranger = server.connect(Transport::Polling).await;
    stranger.emit(
        "save-public-key",
        json!({"sessionId": "room", "userId": "stranger", "publicKey": "pk", "displayName": "S"}),
    );
    expect_event_error(&stranger, "save-public-key", "NOT_IN_SESSION").await;
    stranger.expect_no_event("public-keys-updated", QUIET).await;
    for client in &clients {
        client.expect_silence(Duration::ZERO).await;
    }
    assert_eq!(server.session("room").await.unwrap()["publicKeys"], 2);
}

// --------------------------------------------------------- set-session-key

#[tokio::test]
async fn set_session_key_from_the_creator_reaches_the_whole_room_and_later_joiners() {
    let server = TestServer::start().await;
    let clients = room(&server, "group").await;
    let alice = &clients[0];
    let wrapped = json!({"alice": "wrapped-for-alice", "bob": "wrapped-for-bob", "dave": "wrapped-for-dave"});

    alice.emit(
        "set-session-key",
        json!({"sessionId": "room:k", "encryptedKeys": wrapped}),
    );
    for client in &clients {
        assert_eq!(
            client.recv("session-key-available").await,
            json!({"encryptedKeys": wrapped})
        );
    }
    alice.expect_no_event("event-error", QUIET).await;

    let dave = server.connect(Transport::Polling).await;
    let joined = join_ok(&dave, join_payload("room:k", "dave", false)).await;
    assert_eq!(
        joined.metadata,
        json!({"chatMode": "group", "encryptedSessionKey": "wrapped-for-dave"})
    );
    // Someone the key was not wrapped for gets metadata without the field.
    let erin = server.connect(Transport::WebSocket).await;
    let joined = join_ok(&erin, join_payload("room:k", "erin", false)).await;
    assert_eq!(joined.metadata, json!({"chatMode": "group"}));
}

#[tokio::test]
async fn set_session_key_replaces_the_previous_keys() {
    let server = TestServer::start().await;
    let clients = room(&server, "group").await;
    let alice = &clients[0];
    alice.emit(
        "set-session-key",
        json!({"sessionId": "room", "encryptedKeys": {"dave": "old", "erin": "old-e"}}),
    );
    alice.emit(
        "set-session-key",
        json!({"sessionId": "room", "encryptedKeys": {"dave": "new"}}),
    );
    for client in &clients {
        client.recv_many("session-key-available", 2, TIMEOUT).await;
    }
    let dave = server.connect(Transport::WebSocket).await;
    assert_eq!(
        join_ok(&dave, join_payload("room:k", "dave", false))
            .await
            .metadata["encryptedSessionKey"],
        "new"
    );
    let erin = server.connect(Transport::WebSocket).await;
    let metadata = join_ok(&erin, join_payload("room:k", "erin", false))
        .await
        .metadata;
    assert!(metadata.get("encryptedSessionKey").is_none(), "{metadata}");
}

#[tokio::test]
async fn set_session_key_from_a_non_creator_is_refused_and_leaks_nothing() {
    let server = TestServer::start().await;
    let clients = room(&server, "group").await;
    let (alice, bob, carol) = (&clients[0], &clients[1], &clients[2]);
    alice.emit(
        "set-session-key",
        json!({"sessionId": "room", "encryptedKeys": {"dave": "genuine"}}),
    );
    for client in &clients {
        client.recv("session-key-available").await;
    }

    bob.emit(
        "set-session-key",
        json!({"sessionId": "room", "encryptedKeys": {"dave": "hijacked"}}),
    );
    expect_event_error(bob, "set-session-key", "NOT_ALLOWED").await;
    for client in [alice, bob, carol] {
        client.expect_no_event("session-key-available", QUIET).await;
    }
    let dave = server.connect(Transport::WebSocket).await;
    let metadata = join_ok(&dave, join_payload("room:k", "dave", false))
        .await
        .metadata;
    assert_eq!(metadata["encryptedSessionKey"], "genuine");
}

#[tokio::test]
async fn set_session_key_in_a_private_room_is_refused_even_from_the_creator() {
    for mode in ["private", "password"] {
        let server = TestServer::start_with(quick_heartbeat).await;
        let clients = room(&server, mode).await;
        let (alice, bob) = (&clients[0], &clients[1]);
        alice.emit(
            "set-session-key",
            json!({"sessionId": "room", "encryptedKeys": {"bob": "w"}}),
        );
        expect_event_error(alice, "set-session-key", "NOT_ALLOWED").await;
        alice.expect_no_event("session-key-available", QUIET).await;
        bob.expect_silence(Duration::ZERO).await;

        // Bob reconnects (his old connection died unnoticed): still no
        // group key for him.
        bob.go_silent();
        let bob_again = server.connect(Transport::WebSocket).await;
        let metadata = join_ok(&bob_again, join_payload("room:k", "bob", false))
            .await
            .metadata;
        assert_eq!(metadata, json!({"chatMode": mode}));
    }
}

#[tokio::test]
async fn set_session_key_from_a_non_member_is_refused() {
    let server = TestServer::start().await;
    let clients = room(&server, "group").await;
    let stranger = server.connect(Transport::Polling).await;
    stranger.emit(
        "set-session-key",
        json!({"sessionId": "room", "encryptedKeys": {"stranger": "w"}}),
    );
    expect_event_error(&stranger, "set-session-key", "NOT_IN_SESSION").await;
    for client in &clients {
        client.expect_no_event("session-key-available", QUIET).await;
    }
}

#[tokio::test]
async fn rejoining_creator_keeps_the_right_to_set_the_group_key() {
    let server = TestServer::start_with(quick_heartbeat).await;
    let clients = room(&server, "group").await;
    // The creator reconnects: a new socket, publicKey null, isCreator true;
    // the old connection died unnoticed.
    clients[0].go_silent();
    let alice_again = server.connect(Transport::Polling).await;
    let mut payload = join_payload("room:k", "alice", true);
    payload["publicKey"] = Value::Null;
    join_ok(&alice_again, payload).await;
    alice_again.emit(
        "set-session-key",
        json!({"sessionId": "room", "encryptedKeys": {"bob": "w2"}}),
    );
    assert_eq!(
        clients[1].recv("session-key-available").await,
        json!({"encryptedKeys": {"bob": "w2"}})
    );
}
