//! docs/PROTOCOL.md sections 4–5: leaving, disconnecting, reconnecting,
//! cleanup of idle and expired sessions, graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A group room "room" (key "k"): alice (creator, WebSocket), bob (on
/// `bob_transport`), carol (polling); setup events taken.
async fn trio(server: &TestServer, bob_transport: Transport) -> (Client, Client, Client) {
    let users = [
        ("alice", Transport::WebSocket),
        ("bob", bob_transport),
        ("carol", Transport::Polling),
    ];
    let mut room = server.open_room("room", "k", "group", &users).await;
    let carol = room.pop().unwrap();
    let bob = room.pop().unwrap();
    let alice = room.pop().unwrap();
    (alice, bob, carol)
}

fn assert_user_left(event: &Value, user: &str) {
    assert_eq!(event["userId"], user, "{event}");
    assert_eq!(event["displayName"], display_name(user), "{event}");
    assert!(event["timestamp"].is_number(), "{event}");
}

async fn entry(server: &TestServer, session_id: &str) -> Value {
    server
        .session(session_id)
        .await
        .unwrap_or_else(|| panic!("session {session_id} is gone"))
}

/// Polls the debug listing until `session_id` is gone; false on timeout.
async fn wait_until_evicted(server: &TestServer, session_id: &str, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if server.session(session_id).await.is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// ---------------------------------------------------------- leave-session

#[tokio::test]
async fn leave_session_removes_the_member_and_its_key_and_tells_the_others() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob, carol) = trio(&server, transport).await;

        bob.emit("leave-session", json!({"sessionId": "room:k", "userId": "bob"}));
        for peer in [&alice, &carol] {
            assert_user_left(&peer.recv("user-left").await, "bob");
        }
        // The room, the leaver included, hears the remaining keys.
        for client in [&alice, &bob, &carol] {
            assert_eq!(
                key_owners(&client.recv("public-keys-updated").await),
                ["alice", "carol"]
            );
        }
        bob.expect_no_event("user-left", QUIET).await;
        let listing = entry(&server, "room").await;
        assert_eq!(
            (listing["members"].as_u64(), listing["publicKeys"].as_u64()),
            (Some(2), Some(2))
        );

        // The leaver is unbound: nothing it sends reaches the room, and
        // its later disconnect announces nothing a second time.
        bob.emit("send-message", message("room", "bob", None, "after-leaving"));
        expect_event_error(&bob, "send-message", "NOT_IN_SESSION").await;
        alice.emit("send-message", message("room", "alice", None, "after-bob-left"));
        alice.recv("message-sent").await;
        bob.expect_no_event("new-message", QUIET).await;
        bob.close().await;
        alice.expect_no_event("user-left", QUIET).await;
        carol.expect_no_event("user-left", Duration::ZERO).await;
        assert_eq!(entry(&server, "room").await["members"], 2);
    }
}

#[tokio::test]
async fn leave_session_for_another_user_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let (alice, bob, carol) = trio(&server, Transport::WebSocket).await;
    bob.emit("leave-session", json!({"sessionId": "room", "userId": "alice"}));
    let error = bob.recv("event-error").await;
    assert_eq!(error["event"], "leave-session");
    assert!(
        error["error"] == "NOT_ALLOWED" || error["error"] == "NOT_IN_SESSION",
        "{error}"
    );
    alice.expect_silence(QUIET).await;
    carol.expect_silence(Duration::ZERO).await;
    assert_eq!(entry(&server, "room").await["members"], 3);
}

// ------------------------------------------------------------- disconnect

#[tokio::test]
async fn disconnect_of_a_member_is_a_leave() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob, carol) = trio(&server, transport).await;
        bob.close().await;
        for peer in [&alice, &carol] {
            assert_user_left(&peer.recv("user-left").await, "bob");
            assert_eq!(
                key_owners(&peer.recv("public-keys-updated").await),
                ["alice", "carol"]
            );
        }
        assert_eq!(entry(&server, "room").await["members"], 2);
    }
}

#[tokio::test]
async fn dropped_websocket_connection_is_a_leave() {
    let server = TestServer::start().await;
    let (alice, bob, _carol) = trio(&server, Transport::WebSocket).await;
    drop(bob); // no close frame: the TCP connection just goes away
    assert_user_left(&alice.recv("user-left").await, "bob");
}

#[tokio::test]
async fn old_socket_disconnect_after_a_reconnect_changes_nothing() {
    for transport in TRANSPORTS {
        let server = TestServer::start_with(quick_heartbeat).await;
        let (alice, bob_old, carol) = trio(&server, transport).await;

        // Bob's connection died unnoticed; he reconnects from a new socket.
        bob_old.go_silent();
        let bob_new = server.connect(transport).await;
        let mut payload = join_payload("room:k", "bob", false);
        payload["publicKey"] = Value::Null;
        join_ok(&bob_new, payload).await;
        alice.recv("public-keys-updated").await;
        carol.recv("public-keys-updated").await;

        bob_old.close().await;
        alice.expect_no_event("user-left", QUIET).await;
        carol.expect_no_event("user-left", Duration::ZERO).await;
        let listing = entry(&server, "room").await;
        assert_eq!(
            (listing["members"].as_u64(), listing["publicKeys"].as_u64()),
            (Some(3), Some(3))
        );

        alice.emit(
            "send-message",
            message("room", "alice", Some("bob"), "still-here"),
        );
        assert_eq!(bob_new.recv("new-message").await["encrypted"], "still-here");
    }
}

#[tokio::test]
async fn session_survives_its_last_member_leaving_and_can_be_rejoined_with_the_same_link() {
    let server = TestServer::start().await;
    let alice = server
        .open_session(Transport::WebSocket, "room", "k", "group", "alice")
        .await;
    let bob = server.join_member(Transport::Polling, "room", "k", "bob").await;
    alice.emit("send-message", message("room", "alice", None, "before-reload"));
    bob.recv("new-message").await;

    alice.close().await;
    bob.emit("leave-session", json!({"sessionId": "room", "userId": "bob"}));
    bob.recv("public-keys-updated").await;
    bob.close().await;
    let listing = entry(&server, "room").await;
    assert_eq!(listing["members"], 0);
    assert_eq!(listing["messages"], 1);

    // A reload of either link works: the joiner's, then the creator's.
    let bob_again = server.connect(Transport::WebSocket).await;
    let joined = join_ok(&bob_again, join_payload("room:k", "bob", false)).await;
    assert_eq!(joined.history[0]["encrypted"], "before-reload");
    let alice_again = server.connect(Transport::Polling).await;
    join_ok(&alice_again, join_payload("room:k", "alice", true)).await;
    assert_eq!(bob_again.recv("user-joined").await["userId"], "alice");
    assert_eq!(entry(&server, "room").await["members"], 2);
}

// ---------------------------------------------------------------- cleanup

#[tokio::test]
async fn idle_session_without_members_is_evicted_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.session_idle_timeout = Duration::from_millis(800);
        c.session_member_timeout = Duration::from_secs(60);
        c.cleanup_interval = Duration::from_millis(100);
    })
    .await;
    server.reserve("reserved", "k", "group").await;
    let alice = server
        .open_session(Transport::WebSocket, "left", "k", "group", "alice")
        .await;
    alice.close().await;
    let _carol = server
        .open_session(Transport::Polling, "occupied", "k", "group", "carol")
        .await;

    assert!(wait_until_evicted(&server, "reserved", Duration::from_secs(4)).await);
    assert!(wait_until_evicted(&server, "left", Duration::from_secs(4)).await);
    // A session with a connected member is not idle-evicted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.session("occupied").await.is_some());
    assert_eq!(server.health().await["activeSessions"], 1);

    let bob = server.connect(Transport::WebSocket).await;
    join_refused(&bob, join_payload("left:k", "bob", false), "SESSION_NOT_FOUND").await;
    // The id is free again.
    server.reserve("reserved", "other", "private").await;
}

#[tokio::test]
async fn session_with_members_expires_after_the_member_timeout_with_session_expired() {
    let server = TestServer::start_with(|c| {
        c.session_idle_timeout = Duration::from_millis(500);
        c.session_member_timeout = Duration::from_millis(2500);
        c.cleanup_interval = Duration::from_millis(100);
    })
    .await;
    let alice = server
        .open_session(Transport::WebSocket, "room", "k", "group", "alice")
        .await;
    let bob = server.join_member(Transport::Polling, "room", "k", "bob").await;
    let _other = server
        .open_session(Transport::WebSocket, "busy", "k", "group", "zed")
        .await;
    take_join_announcement(&alice, "bob").await;

    // Keep "busy" active while "room" goes quiet.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        _other.emit(
            "typing",
            json!({"sessionId": "busy", "userId": "zed", "displayName": "Z"}),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        server.session("room").await.is_some(),
        "members' session evicted after the idle timeout"
    );

    for member in [&alice, &bob] {
        let error = member.recv_event("session-error", Duration::from_secs(4)).await;
        assert_eq!(error["error"], "SESSION_EXPIRED", "{error}");
    }
    assert!(wait_until_evicted(&server, "room", Duration::from_secs(2)).await);
    // Removed members are unbound.
    alice.emit("send-message", message("room", "alice", None, "too-late"));
    expect_event_error(&alice, "send-message", "NOT_IN_SESSION").await;
    bob.expect_no_event("new-message", QUIET).await;
}

// --------------------------------------------------------------- shutdown

#[tokio::test]
async fn graceful_shutdown_announces_departures_and_closes_every_socket() {
    let mut server = TestServer::start().await;
    let users = [
        ("alice", Transport::WebSocket),
        ("bob", Transport::Polling),
        ("carol", Transport::WebSocket),
    ];
    let room = server.open_room("room", "k", "group", &users).await;
    let (alice, bob, carol) = (&room[0], &room[1], &room[2]);
    let idle = server.connect(Transport::Polling).await; // connected, never joined

    let started = tokio::time::Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );

    for client in [alice, bob, carol, &idle] {
        assert!(
            client.wait_disconnected(Duration::from_secs(3)).await,
            "a {:?} socket is still open after shutdown",
            client.transport()
        );
    }
    // Members who were still connected heard the others leave.
    let mut heard = Vec::new();
    for client in [alice, bob, carol] {
        for event in client.all_events().into_iter().filter(|e| e.name == "user-left") {
            heard.push(event.data["userId"].as_str().unwrap().to_string());
        }
    }
    let seen: Vec<Vec<String>> = [alice, bob, carol]
        .iter()
        .map(|c| c.all_events().into_iter().map(|e| e.name).collect())
        .collect();
    assert!(
        !heard.is_empty(),
        "no user-left was announced on shutdown; events seen: {seen:?}"
    );
    heard.sort();
    heard.dedup();
    assert!(heard.len() >= 2, "only {heard:?} announced as left");

    // The listener is closed.
    let refused = tokio::time::timeout(TIMEOUT, server.http.get(server.url("/health")).send()).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "server still answers after shutdown"
    );
}

// ------------------------------------------- cleanup with the default times
//
// The defaults (30 min idle, 2 h with members, a sweep a minute) are tested
// by pausing Tokio's clock and jumping it forward; the server runs on the
// test's runtime, so its sweep and its notion of "idle" jump too.

/// Moves the paused-able clock forward by `by` and lets the server's timers
/// fire.
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
    // Let the sweep that just became due run.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn with_default_times_an_empty_session_lives_thirty_minutes() {
    let server = TestServer::start().await;
    server.reserve("reserved", "k", "group").await;
    let alice = server
        .open_session(Transport::WebSocket, "left", "k", "group", "alice")
        .await;
    alice.close().await;
    // The departure is handled before the clock jumps.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while entry(&server, "left").await["members"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's departure was not handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    jump(Duration::from_secs(28 * 60)).await;
    assert_eq!(
        server.session_ids().await,
        ["reserved", "left"],
        "evicted before 30 min"
    );

    jump(Duration::from_secs(3 * 60)).await;
    assert!(wait_until_evicted(&server, "reserved", Duration::from_secs(2)).await);
    assert!(wait_until_evicted(&server, "left", Duration::from_secs(2)).await);
}

#[tokio::test]
async fn with_default_times_a_session_with_members_lives_two_hours_then_expires() {
    let server = TestServer::start().await;
    let alice = server
        .open_session(Transport::WebSocket, "room", "k", "group", "alice")
        .await;

    jump(Duration::from_secs(60 * 60)).await;
    jump(Duration::from_secs(58 * 60)).await;
    assert!(server.session("room").await.is_some(), "evicted before 2 h");
    alice.expect_no_event("session-error", Duration::ZERO).await;

    jump(Duration::from_secs(3 * 60)).await;
    let error = alice.recv("session-error").await;
    assert_eq!(error["error"], "SESSION_EXPIRED", "{error}");
    assert!(wait_until_evicted(&server, "room", Duration::from_secs(2)).await);
}

#[tokio::test]
async fn with_default_times_activity_postpones_eviction_of_an_empty_session() {
    let server = TestServer::start().await;
    server.reserve("room", "k", "group").await;
    jump(Duration::from_secs(20 * 60)).await;

    // A join is activity; the creator then leaves again.
    let alice = server.connect(Transport::WebSocket).await;
    join_ok(&alice, join_payload("room:k", "alice", true)).await;
    alice.emit("leave-session", json!({"sessionId": "room", "userId": "alice"}));
    alice.recv("public-keys-updated").await;

    jump(Duration::from_secs(20 * 60)).await;
    assert!(
        server.session("room").await.is_some(),
        "evicted 20 min after activity"
    );
    jump(Duration::from_secs(11 * 60)).await;
    assert!(wait_until_evicted(&server, "room", Duration::from_secs(2)).await);
}

#[tokio::test]
async fn with_default_times_messages_postpone_expiry_of_a_session_with_members() {
    let server = TestServer::start().await;
    let room = server
        .open_room(
            "room",
            "k",
            "group",
            &[("alice", Transport::WebSocket), ("bob", Transport::WebSocket)],
        )
        .await;
    let (alice, bob) = (&room[0], &room[1]);

    jump(Duration::from_secs(90 * 60)).await;
    alice.emit("send-message", message("room", "alice", None, "still here"));
    bob.recv("new-message").await;

    jump(Duration::from_secs(60 * 60)).await;
    assert!(
        server.session("room").await.is_some(),
        "expired 1 h after a message"
    );
    alice.expect_no_event("session-error", Duration::ZERO).await;
    bob.expect_no_event("session-error", Duration::ZERO).await;

    jump(Duration::from_secs(61 * 60)).await;
    for member in [alice, bob] {
        assert_eq!(member.recv("session-error").await["error"], "SESSION_EXPIRED");
    }
}
