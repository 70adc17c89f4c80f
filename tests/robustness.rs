//! docs/PROTOCOL.md sections 1, 5 and 7: payloads of the wrong shape, garbage
//! on the wire and oversized messages never crash anything and never
//! affect other sessions.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

/// The events a bound member may send, with a valid payload for each.
fn valid_payloads() -> Vec<(&'static str, Value)> {
    vec![
        (
            "send-message",
            json!({"sessionId": "room", "from": "alice", "encrypted": "x"}),
        ),
        ("get-public-keys", json!({"sessionId": "room", "userId": "alice"})),
        (
            "save-public-key",
            json!({"sessionId": "room", "userId": "alice", "publicKey": "pk", "displayName": "A"}),
        ),
        (
            "set-session-key",
            json!({"sessionId": "room", "encryptedKeys": {"bob": "w"}}),
        ),
        (
            "file-downloaded",
            json!({"sessionId": "room", "downloadedBy": "alice", "senderId": "bob", "fileName": "f", "timestamp": 1}),
        ),
        (
            "typing",
            json!({"sessionId": "room", "userId": "alice", "displayName": "A"}),
        ),
        (
            "stopped-typing",
            json!({"sessionId": "room", "userId": "alice", "displayName": "A"}),
        ),
        ("leave-session", json!({"sessionId": "room", "userId": "alice"})),
    ]
}

/// Payloads of the wrong shape for `event`, derived from its valid one.
fn wrong_shapes(event: &str, valid: &Value) -> Vec<Value> {
    let mut shapes = vec![
        Value::Null,
        json!(42),
        json!("room"),
        json!([]),
        json!([valid.clone()]),
        json!({}),
    ];
    let mut without_session = valid.clone();
    without_session.as_object_mut().unwrap().remove("sessionId");
    shapes.push(without_session);
    for bad in [json!(7), json!(null), json!(["room"]), json!({"id": "room"})] {
        let mut payload = valid.clone();
        payload["sessionId"] = bad;
        shapes.push(payload);
    }
    let user_field = match event {
        "send-message" => Some("from"),
        "set-session-key" | "file-downloaded" => None,
        _ => Some("userId"),
    };
    // A missing `from`/`userId` is read as the bound user (the contract
    // only requires that a present one matches); one of the wrong JSON type
    // is a wrong shape.
    if let Some(field) = user_field {
        for bad in [json!(1), json!(["alice"]), json!({"id": "alice"})] {
            let mut payload = valid.clone();
            payload[field] = bad;
            shapes.push(payload);
        }
    }
    match event {
        "set-session-key" => {
            for bad in [json!("w"), json!(["w"]), json!({"bob": 5}), json!(null)] {
                let mut payload = valid.clone();
                payload["encryptedKeys"] = bad;
                shapes.push(payload);
            }
        }
        "send-message" => {
            for (field, bad) in [
                ("to", json!(5)),
                ("to", json!(["bob"])),
                ("clientMessageId", json!({"a": 1})),
            ] {
                let mut payload = valid.clone();
                payload[field] = bad;
                shapes.push(payload);
            }
        }
        "file-downloaded" => {
            let mut payload = valid.clone();
            payload["senderId"] = json!(3);
            shapes.push(payload);
        }
        _ => {}
    }
    shapes
}

/// alice (creator) and bob in group "room" over `transport`, setup taken.
async fn pair(server: &TestServer, transport: Transport) -> (Client, Client) {
    let alice = server
        .open_session(transport, "room", "k", "group", "alice")
        .await;
    let bob = server.join_member(transport, "room", "k", "bob").await;
    take_join_announcement(&alice, "bob").await;
    (alice, bob)
}

/// A separate healthy session still works and `/health` is 200.
async fn assert_server_healthy(server: &TestServer) {
    let health = server.get("/health").await;
    assert_eq!(health.status, 200);
    let session_id = format!("healthy-{}", server.sessions().await.len());
    let carol = server
        .open_session(Transport::WebSocket, &session_id, "k", "group", "carol")
        .await;
    let dave = server
        .join_member(Transport::Polling, &session_id, "k", "dave")
        .await;
    carol.emit("send-message", message(&session_id, "carol", None, "still-alive"));
    assert_eq!(dave.recv("new-message").await["encrypted"], "still-alive");
}

#[tokio::test]
async fn every_event_with_a_wrong_payload_gets_invalid_payload_and_leaks_nothing() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob) = pair(&server, transport).await;
        // Every mismatch is collected so one run shows them all.
        let mut mismatches = Vec::new();
        for (event, valid) in valid_payloads() {
            let mut cases: Vec<(String, String)> = wrong_shapes(event, &valid)
                .into_iter()
                .map(|payload| (format!("42{}", json!([event, payload])), payload.to_string()))
                .collect();
            cases.push((format!("42{}", json!([event])), "no payload".to_string()));
            for (packet, shown) in cases {
                alice.send_raw(&packet);
                match alice.try_recv_event("event-error", Duration::from_secs(1)).await {
                    Some(error)
                        if error["event"] == event
                            && error["error"] == "INVALID_PAYLOAD"
                            && error["message"].is_string() => {}
                    // get-public-keys answers a request that names no
                    // session it is bound to with an empty list, not an
                    // error (docs/PROTOCOL.md, get-public-keys).
                    None if event == "get-public-keys"
                        && alice.try_recv_event("public-keys-updated", Duration::ZERO).await
                            == Some(json!([])) => {}
                    other => mismatches.push(format!(
                        "{event} with {shown}: got {other:?}, pending {:?}",
                        alice.pending_names()
                    )),
                }
            }
        }
        assert!(
            mismatches.is_empty(),
            "over {transport:?}, wrong payloads not answered with INVALID_PAYLOAD:\n{}",
            mismatches.join("\n")
        );
        bob.expect_silence(QUIET).await;
        alice.expect_silence(Duration::ZERO).await;
        let listing = server.session("room").await.unwrap();
        assert_eq!(
            (listing["members"].as_u64(), listing["messages"].as_u64()),
            (Some(2), Some(0))
        );

        // Alice's socket still works.
        alice.emit("send-message", message("room", "alice", None, "after-garbage"));
        assert_eq!(bob.recv("new-message").await["encrypted"], "after-garbage");
        assert_server_healthy(&server).await;
    }
}

#[tokio::test]
async fn join_with_a_wrong_payload_gets_session_error_invalid_payload_and_creates_nothing() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob) = pair(&server, transport).await;
        let stranger = server.connect(transport).await;
        let valid = join_payload("room:k", "mallory", false);
        let mut shapes = vec![
            Value::Null,
            json!(1),
            json!("room:k"),
            json!([]),
            json!([valid.clone()]),
            json!({}),
        ];
        for field in ["sessionId", "userId"] {
            let mut missing = valid.clone();
            missing.as_object_mut().unwrap().remove(field);
            shapes.push(missing);
            for bad in [
                json!(5),
                json!(null),
                json!(["x"]),
                json!({"a": "b"}),
                json!(true),
            ] {
                let mut payload = valid.clone();
                payload[field] = bad;
                shapes.push(payload);
            }
        }
        // The same for a would-be creator of a new session.
        let mut creator = join_payload("newroom:k", "mallory", true);
        creator["userId"] = json!(9);
        shapes.push(creator);

        for payload in shapes {
            stranger.emit("join-session", payload.clone());
            let error = stranger.recv("session-error").await;
            assert_eq!(error["error"], "INVALID_PAYLOAD", "join with {payload}: {error}");
        }
        stranger.send_raw(r#"42["join-session"]"#);
        assert_eq!(stranger.recv("session-error").await["error"], "INVALID_PAYLOAD");

        stranger.expect_silence(QUIET).await;
        alice.expect_silence(Duration::ZERO).await;
        bob.expect_silence(Duration::ZERO).await;
        assert_eq!(server.session_ids().await, ["room"]);
        assert_eq!(server.session("room").await.unwrap()["members"], 2);

        // The stranger's socket can still join properly.
        join_ok(&stranger, join_payload("room:k", "mallory", false)).await;
    }
}

#[tokio::test]
async fn garbage_packets_never_take_the_server_down() {
    let garbage: Vec<String> = vec![
        "".into(),
        "9".into(),
        "x".into(),
        "4".into(),
        "42".into(),
        "42[".into(),
        "42{}".into(),
        "42[]".into(),
        "42[1,2]".into(),
        "42[null]".into(),
        "42[\"send-message\",".into(),
        "42[\"join-session\",{\"sessionId\":".into(),
        "42\"join-session\"".into(),
        "4garbage".into(),
        "49".into(),
        "43".into(),
        "431[]".into(),
        "44{}".into(),
        "45".into(),
        "451-[\"send-message\",{\"_placeholder\":true,\"num\":0}]".into(),
        "46".into(),
        "4/nope,".into(),
        "40/nope,".into(),
        "42/nope,[\"send-message\",{}]".into(),
        "0".into(),
        "0{}".into(),
        "5".into(),
        "2probe".into(),
        "3".into(),
        "6".into(),
        "\u{0}\u{1}\u{2}".into(),
        "42[\"\u{fffd}\u{0}\",{}]".into(),
        format!("42[\"typing\",{}]", "[".repeat(2000)),
        format!(
            "42[\"send-message\",{}{}]",
            "{\"a\":".repeat(200),
            "1".to_string() + &"}".repeat(200)
        ),
        "42[\"no-such-event\",{\"sessionId\":\"room\"}]".into(),
        "42[\"__proto__\",{}]".into(),
        "42[\"disconnect\",{}]".into(),
        "42[\"connect\",{}]".into(),
        "41".into(),
        "1".into(),
    ];
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob) = pair(&server, transport).await;
        for packet in &garbage {
            // Each packet on a fresh connection, so a close caused by one
            // cannot hide what the next does.
            let client = Client::connect(server.addr, transport).await;
            client.send_raw(packet);
            if transport == Transport::WebSocket {
                client.send_raw_binary("\u{5}\u{ff}garbage");
            }
            // And the same from a joined member, whose peer must hear
            // nothing of it (alice may be disconnected by some packets;
            // bob hearing that she left is fine).
            alice.send_raw(packet);
        }
        tokio::time::sleep(QUIET).await;
        bob.expect_no_event("new-message", Duration::ZERO).await;
        bob.expect_no_event("user-typing", Duration::ZERO).await;
        bob.expect_no_event("session-key-available", Duration::ZERO).await;
        bob.expect_no_event("download-notification", Duration::ZERO).await;
        assert_server_healthy(&server).await;
    }
}

#[tokio::test]
async fn a_message_over_the_payload_limit_is_refused_on_both_transports() {
    const LIMIT: u64 = 64 * 1024;
    for transport in TRANSPORTS {
        let server = TestServer::start_with(|c| c.max_payload_bytes = LIMIT).await;
        let (alice, bob) = pair(&server, transport).await;

        // Under the limit: delivered.
        alice.emit(
            "send-message",
            message("room", "alice", None, &"a".repeat(32 * 1024)),
        );
        assert_eq!(
            bob.recv("new-message").await["encrypted"].as_str().unwrap().len(),
            32 * 1024
        );

        // Over the limit: never delivered; the sender is refused (an
        // event-error or a closed connection).
        alice.emit(
            "send-message",
            message("room", "alice", None, &"b".repeat(100 * 1024)),
        );
        bob.expect_no_event("new-message", Duration::from_secs(1)).await;
        if !alice.is_disconnected() {
            expect_event_error(&alice, "send-message", "PAYLOAD_TOO_LARGE").await;
        }
        assert_eq!(
            server.session("room").await.unwrap()["messages"],
            1,
            "over {transport:?}"
        );
        assert_server_healthy(&server).await;
    }
}

/// Arbitrary JSON values, nested a few levels.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("room")),
        Just(json!("room:k")),
        Just(json!("alice")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("sessionId".to_string()),
                    Just("userId".to_string()),
                    Just("from".to_string()),
                    Just("to".to_string()),
                    Just("encrypted".to_string()),
                    Just("encryptedKeys".to_string()),
                    Just("publicKey".to_string()),
                    Just("isCreator".to_string()),
                    Just("authKey".to_string()),
                    Just("senderId".to_string()),
                    ".{0,10}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[tokio::test]
async fn random_payloads_for_every_event_never_crash_or_leak_into_other_sessions() {
    let mut runner = TestRunner::deterministic();
    let strategy = arbitrary_json();
    let mut events: Vec<&str> = valid_payloads().into_iter().map(|(e, _)| e).collect();
    events.push("join-session");

    let server = TestServer::start().await;
    let (alice, bob) = pair(&server, Transport::WebSocket).await;
    let other = server
        .open_session(Transport::Polling, "other", "k2", "group", "olga")
        .await;
    let other_peer = server
        .join_member(Transport::WebSocket, "other", "k2", "oscar")
        .await;
    take_join_announcement(&other, "oscar").await;
    let fuzzer = server.connect(Transport::WebSocket).await;
    for i in 0..400 {
        let payload = strategy.new_tree(&mut runner).unwrap().current();
        let event = events[i % events.len()];
        // Half from a member of "room", half from an unbound socket.
        let sender = if i % 2 == 0 { &alice } else { &fuzzer };
        sender.emit(event, payload);
    }
    tokio::time::sleep(QUIET).await;
    // Nothing reached the other session.
    other.expect_silence(Duration::ZERO).await;
    other_peer.expect_silence(Duration::ZERO).await;
    let ids = server.session_ids().await;
    assert!(
        ids.contains(&"other".to_string()) && ids.contains(&"room".to_string()),
        "{ids:?}"
    );
    drop(bob);
    assert_server_healthy(&server).await;
}
