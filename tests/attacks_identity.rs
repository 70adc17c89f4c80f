//! Attacks on identity inside a session (issue "Identity inside a session"),
//! each on both stores (an in-process server, on its own `redis-server` for
//! the Redis one): a member that claims another live member's id, password
//! guessing from one address (with a bystander at 127.0.0.2), a member that
//! reuses another's message id, and events that tried to skip the rate
//! limits. The cross-node join race is in tests/cluster/flows.test.mjs.
//!
//! Needs `redis-server` 7 or newer on the PATH (scripts/test.sh installs it).

mod attack_support;
#[path = "attack_support/fairshare.rs"]
mod fairshare;
#[path = "attack_support/memory.rs"]
mod memory;

use std::time::Duration;

use attack_support::*;
use e2e_chat_server::{Config, RunningServer};
use fairshare::{SioClient, BYSTANDER};
use memory::{Backend, RedisProcess, BACKENDS};
use serde_json::{json, Value};

/// A server on `backend` with the settings `adjust` makes; the Redis
/// process (if any) lives as long as the pair.
async fn server_on(
    backend: Backend,
    adjust: impl FnOnce(&mut Config),
) -> (RunningServer, Option<RedisProcess>) {
    let redis = match backend {
        Backend::Memory => None,
        Backend::Redis => Some(RedisProcess::start().await),
    };
    let url = redis.as_ref().map(|r| r.url.clone());
    let server = start(|c| {
        c.redis_url = url;
        adjust(c);
    })
    .await;
    (server, redis)
}

/// A heartbeat of 300 ms: a live client is heard from that often.
fn quick_heartbeat(c: &mut Config) {
    c.ping_interval = Duration::from_millis(300);
    c.ping_timeout = Duration::from_secs(5);
}

/// The public keys `ws` gets from `get-public-keys`, by owner.
async fn keys_seen_by(ws: &Ws, session: &str, user: &str) -> Vec<(String, Value)> {
    ws.emit("get-public-keys", json!({"sessionId": session, "userId": user}));
    let keys = ws.expect("public-keys-updated").await;
    keys.as_array()
        .expect("an array")
        .iter()
        .map(|k| (k["userId"].as_str().unwrap().to_string(), k["publicKey"].clone()))
        .collect()
}

#[tokio::test]
async fn a_member_cannot_take_over_a_live_member() {
    let _serial = serial().await;
    for backend in BACKENDS {
        let (server, _redis) = server_on(backend, quick_heartbeat).await;
        let addr = server.addr();
        let clients = room(addr, "grp", &["alice", "bob"]).await;
        let (alice, bob) = (&clients[0], &clients[1]);

        // Mallory, a second socket, claims Alice's id, creator rights and a key of hers.
        let mallory = Ws::connect(addr).await;
        let mut claim = join_payload("grp", "key", "alice", true);
        claim["publicKey"] = json!("MALLORY-KEY");
        mallory.emit("join-session", claim);
        let error = expect_session_error(&mallory, "ALREADY_CONNECTED").await;
        assert_eq!(
            error["message"], "This user is already connected to this session from another tab or device.",
            "{backend:?}"
        );
        assert_eq!(
            mallory.count("messages-history"),
            0,
            "{backend:?}: Mallory got history"
        );

        // Nothing changed for anyone.
        assert_eq!(
            bob.count("public-keys-updated"),
            0,
            "{backend:?}: Bob was sent new keys"
        );
        assert_eq!(
            keys_seen_by(bob, "grp", "bob").await,
            vec![("alice".to_string(), json!("pk-alice"))],
            "{backend:?}: Bob's key list"
        );
        bob.emit("send-message", message("grp", "bob", Some("alice"), "for-alice"));
        recv_message(alice, "for-alice", WAIT)
            .await
            .unwrap_or_else(|| panic!("{backend:?}: Alice stopped receiving"));
        mallory.emit(
            "set-session-key",
            json!({"sessionId": "grp", "encryptedKeys": {"bob": "evil"}}),
        );
        expect_event_error(&mallory, "set-session-key", "NOT_IN_SESSION").await;
        alice.emit(
            "set-session-key",
            json!({"sessionId": "grp", "encryptedKeys": {"bob": "good"}}),
        );
        let key = bob.expect("session-key-available").await;
        assert_eq!(key["encryptedKeys"]["bob"], "good", "{backend:?}");
        assert!(
            recv_message(&mallory, "for-alice", Duration::from_millis(200))
                .await
                .is_none(),
            "{backend:?}: Mallory heard Alice's message"
        );
        stop(server).await;
    }
}

#[tokio::test]
async fn a_silent_members_seat_goes_to_its_reconnect() {
    let _serial = serial().await;
    for backend in BACKENDS {
        let (server, _redis) = server_on(backend, quick_heartbeat).await;
        let addr = server.addr();
        let clients = room(addr, "grp", &["alice", "bob"]).await;
        let (alice, bob) = (&clients[0], &clients[1]);
        // Alice's connection dies unnoticed: nothing of hers reaches the server.
        alice.stop_reading();
        // (its reader takes one more ping, and answers it, before it stops)
        tokio::time::sleep(Duration::from_millis(600)).await;
        let again = Ws::connect(addr).await;
        let mut rejoin = join_payload("grp", "key", "alice", true);
        rejoin["publicKey"] = Value::Null;
        again.emit("join-session", rejoin);
        let history = again
            .recv("messages-history", Duration::from_secs(6))
            .await
            .unwrap_or_else(|| panic!("{backend:?}: the reconnect was not admitted: {:?}", again.raw()));
        assert_eq!(history, json!([]), "{backend:?}");
        // A rejoin: nothing announced but the room's keys, Alice's stored key kept.
        bob.expect("public-keys-updated").await;
        assert_eq!(
            bob.count("user-joined") + bob.count("user-left"),
            0,
            "{backend:?}"
        );
        assert_eq!(
            keys_seen_by(bob, "grp", "bob").await,
            vec![("alice".to_string(), json!("pk-alice"))],
            "{backend:?}"
        );
        bob.emit(
            "send-message",
            message("grp", "bob", Some("alice"), "to-new-alice"),
        );
        recv_message(&again, "to-new-alice", WAIT)
            .await
            .unwrap_or_else(|| panic!("{backend:?}: the new socket does not receive"));
        stop(server).await;
    }
}

/// A password room `pw` (password `secret`) whose creator joined.
async fn password_room(addr: std::net::SocketAddr) -> Ws {
    let (status, body) = reserve(addr, "pw", "k:c2VjcmV0", "password").await;
    assert_eq!(status, 200, "{body}");
    let alice = Ws::connect(addr).await;
    alice.emit(
        "join-session",
        json!({"sessionId": "pw", "authKey": "k:c2VjcmV0", "userId": "alice", "isCreator": true, "publicKey": "pk-alice"}),
    );
    alice.expect("messages-history").await;
    alice
}

/// A join of `pw` with the password `guess` (base64 as the stock client sends it).
fn password_join(user: &str, guess_b64: &str) -> Value {
    json!({"sessionId": format!("pw:password:{guess_b64}"), "userId": user, "publicKey": format!("pk-{user}")})
}

/// A socket from 127.0.0.1 that sent `n` wrong passwords for `pw`, each
/// refused `INVALID_PASSWORD`.
async fn wrong_guesses(addr: std::net::SocketAddr, n: usize) -> Ws {
    let guesser = Ws::connect(addr).await;
    for i in 0..n {
        guesser.emit("join-session", password_join("mallory", &format!("Z3Vlc3M{i}")));
        expect_session_error(&guesser, "INVALID_PASSWORD").await;
    }
    guesser
}

#[tokio::test]
async fn password_guessing_from_one_address_is_slowed_and_others_still_get_in() {
    let _serial = serial().await;
    for backend in BACKENDS {
        let (server, _redis) = server_on(backend, |c| {
            c.auth_failures_per_ip_per_min = 5;
            c.auth_failures_per_session_per_min = 0;
        })
        .await;
        let addr = server.addr();
        let _alice = password_room(addr).await;
        let guesser = wrong_guesses(addr, 5).await;
        // Spent: even the right password waits, with a hint of how long.
        guesser.emit("join-session", password_join("mallory", "c2VjcmV0"));
        let limited = expect_session_error(&guesser, "RATE_LIMITED").await;
        let wait = limited["retryAfterMs"].as_u64().expect("retryAfterMs");
        assert!((1..=60_000).contains(&wait), "{backend:?}: {limited}");
        // Another address is not slowed.
        let bystander = SioClient::connect_from(BYSTANDER, addr).await;
        bystander.emit("join-session", password_join("bob", "c2VjcmV0"));
        assert!(
            bystander
                .event("messages-history", WAIT, |_| true)
                .await
                .is_some(),
            "{backend:?}: the bystander with the right password was not let in"
        );
        stop(server).await;
    }
}

#[tokio::test]
async fn a_sessions_failure_budget_stops_guessing_from_every_address() {
    let _serial = serial().await;
    for backend in BACKENDS {
        let (server, _redis) = server_on(backend, |c| {
            c.auth_failures_per_ip_per_min = 0;
            c.auth_failures_per_session_per_min = 3;
        })
        .await;
        let addr = server.addr();
        let _alice = password_room(addr).await;
        let _guesser = wrong_guesses(addr, 3).await;
        // From another address, the session's budget is spent too: its
        // password is not checked for the rest of the minute.
        let other = SioClient::connect_from(BYSTANDER, addr).await;
        other.emit("join-session", password_join("eve", "Z3Vlc3M5"));
        let limited = other
            .event("session-error", WAIT, |_| true)
            .await
            .expect("a session-error");
        assert_eq!(limited["error"], "RATE_LIMITED", "{backend:?}: {limited}");
        assert!(limited["retryAfterMs"].as_u64().is_some(), "{limited}");
        stop(server).await;
    }
}

#[tokio::test]
async fn a_member_cannot_block_anothers_message_by_reusing_its_id() {
    let _serial = serial().await;
    for backend in BACKENDS {
        let (server, _redis) = server_on(backend, |_| {}).await;
        let addr = server.addr();
        let clients = room(addr, "grp", &["alice", "bob"]).await;
        let (alice, bob) = (&clients[0], &clients[1]);
        let mut first = message("grp", "bob", None, "bobs-claim");
        first["clientMessageId"] = json!("shared-id");
        bob.emit("send-message", first);
        bob.expect("message-sent").await;
        recv_message(alice, "bobs-claim", WAIT)
            .await
            .expect("Bob's message");
        let mut real = message("grp", "alice", None, "alices-message");
        real["clientMessageId"] = json!("shared-id");
        alice.emit("send-message", real);
        let sent = alice.expect("message-sent").await;
        assert_eq!(sent["encrypted"], "alices-message", "{backend:?}");
        recv_message(bob, "alices-message", WAIT)
            .await
            .unwrap_or_else(|| panic!("{backend:?}: Alice's message was blocked"));
        // Both are in the history a late joiner gets.
        let carol = Ws::connect(addr).await;
        carol.emit("join-session", join_payload("grp", "key", "carol", false));
        let history = carol.expect("messages-history").await;
        let texts: Vec<&str> = history
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["encrypted"].as_str())
            .collect();
        assert_eq!(texts, ["bobs-claim", "alices-message"], "{backend:?}");
        stop(server).await;
    }
}

/// The codes of the next `n` `event-error`s `ws` gets.
async fn error_codes(ws: &Ws, n: usize) -> Vec<String> {
    let mut codes = Vec::new();
    for _ in 0..n {
        let e = ws.recv("event-error", WAIT).await.expect("an event-error");
        codes.push(e["error"].as_str().unwrap_or_default().to_string());
    }
    codes
}

#[tokio::test]
async fn unknown_invalid_and_leave_events_count_in_the_rate_limits_and_the_flood_cut_off() {
    let _serial = serial().await;
    let (server, _redis) = server_on(Backend::Memory, |c| {
        c.key_rate_per_min = 5;
        c.join_rate_per_min = 3;
        c.send_rate_per_socket = 1;
        c.send_burst_per_socket = 2;
    })
    .await;
    let addr = server.addr();
    // Unknown events: the key events' limit.
    let ws = Ws::connect(addr).await;
    for _ in 0..6 {
        ws.emit("no-such-event", json!({}));
    }
    let codes = error_codes(&ws, 6).await;
    assert_eq!(codes[..5], ["UNKNOWN_EVENT"; 5], "{codes:?}");
    assert_eq!(codes[5], "RATE_LIMITED", "{codes:?}");
    // Invalid send-message payloads: the send limit.
    let ws = Ws::connect(addr).await;
    for _ in 0..3 {
        ws.emit("send-message", json!({"sessionId": 7}));
    }
    let codes = error_codes(&ws, 3).await;
    assert_eq!(
        codes,
        ["INVALID_PAYLOAD", "INVALID_PAYLOAD", "RATE_LIMITED"],
        "{codes:?}"
    );
    // leave-session: the join limit.
    let ws = Ws::connect(addr).await;
    // (a burst of 5 at most: the smallest a per-minute limit allows)
    for _ in 0..6 {
        ws.emit("leave-session", json!({"sessionId": "grp", "userId": "x"}));
    }
    let codes = error_codes(&ws, 6).await;
    assert_eq!(codes[..5], ["NOT_IN_SESSION"; 5], "{codes:?}");
    assert_eq!(codes[5], "RATE_LIMITED", "{codes:?}");
    // A flood of unknown events is cut off like any other.
    let flooder = Ws::connect(addr).await;
    for _ in 0..400 {
        flooder.emit("no-such-event", json!({}));
    }
    assert!(
        flooder.wait_closed(WAIT).await.is_some(),
        "the flood of unknown events was not cut off"
    );
    Pair::open(addr, "calm").await.assert_healthy().await;
    stop(server).await;
}
