//! The robustness suite of issue 3: the real server, attacked.
//!
//! Every case asserts the refusal in the contract's shape (`event-error`,
//! `session-error`, an HTTP JSON error, or the connection closed) and then
//! that a healthy pair of clients in another session still exchanges a
//! message within 1 s, a fresh client can still join, and `GET /health` is
//! 200 (`Pair::assert_healthy`). The cases run one at a time (`serial()`):
//! several measure time, and on a 2-core machine they would measure each other.
//! Most run the server in-process; the RSS and SIGTERM cases run the binary.

mod attack_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use attack_support::*;
use e2e_chat_server::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

const MIB: usize = 1 << 20;

/// Limits that would refuse the test clients themselves (all from 127.0.0.1).
fn lenient(c: &mut Config) {
    c.handshake_rate_per_ip = 0;
    c.max_sockets_per_ip = 0;
}

/// `[[[[…1…]]]]`, `depth` levels deep.
fn deep_array(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// `{"a":{"a":…1…}}`, `depth` levels deep.
fn deep_object(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

// ---------------------------------------------------------------------------
// Garbage on the wire

/// What the server must do with a garbage packet.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The connection is closed (Engine.IO or Socket.IO packet parse error).
    Closed,
    /// A Socket.IO CONNECT_ERROR for that namespace; the main one keeps working.
    ConnectError,
    /// `event-error` with this code for this event name; the socket stays.
    EventError(&'static str, &'static str),
    /// Dropped without an answer; the socket stays.
    Dropped,
}

#[tokio::test]
async fn garbage_packets_on_the_websocket_are_refused_and_harm_nobody() {
    let _serial = serial().await;
    let server = start(lenient).await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    let placeholder = |n: usize| json!({"_placeholder": true, "num": n}).to_string();
    let long_name = "e".repeat(MIB);
    let cases: Vec<(&str, String, Option<Vec<u8>>, Refusal)> = vec![
        ("not Engine.IO", "hello".into(), None, Refusal::Closed),
        ("empty frame", String::new(), None, Refusal::Closed),
        ("unknown Engine.IO type", "9".into(), None, Refusal::Closed),
        ("Engine.IO upgrade after open", "5".into(), None, Refusal::Closed),
        ("Engine.IO noop over WebSocket", "6".into(), None, Refusal::Closed),
        ("truncated event", "42[".into(), None, Refusal::Closed),
        ("4 + invalid JSON", "4{\"a\":".into(), None, Refusal::Closed),
        ("4 + nothing", "4".into(), None, Refusal::Closed),
        ("4 + NUL", "4\u{0}".into(), None, Refusal::Closed),
        ("unterminated array", "42[\"x\"".into(), None, Refusal::Closed),
        ("empty event array", "42[]".into(), None, Refusal::Closed),
        ("event is an object", "42{}".into(), None, Refusal::Closed),
        ("event is a string", "42\"x\"".into(), None, Refusal::Closed),
        ("event name is a number", "42[1,2]".into(), None, Refusal::Closed),
        (
            "event name is 10 000 nested arrays",
            format!("42[{}]", deep_array(10_000)),
            None,
            Refusal::Closed,
        ),
        (
            "bad ack id (letters)",
            "42abc[\"x\"]".into(),
            None,
            Refusal::Closed,
        ),
        (
            "bad ack id (negative)",
            "42-1[\"x\"]".into(),
            None,
            Refusal::Closed,
        ),
        (
            "ack id beyond i64",
            "4299999999999999999999999[\"x\"]".into(),
            None,
            Refusal::EventError("x", "UNKNOWN_EVENT"),
        ),
        ("ack without id", "43[\"x\"]".into(), None, Refusal::Closed),
        ("unknown Socket.IO type", "47".into(), None, Refusal::Closed),
        ("binary ack without id", "46[]".into(), None, Refusal::Closed),
        (
            "binary event, one attachment sent",
            format!("451-[\"x\",{}]", placeholder(0)),
            Some(vec![1, 2, 3]),
            Refusal::Closed,
        ),
        (
            "binary event, attachment missing, then text",
            format!("452-[\"x\",{},{}]", placeholder(0), placeholder(1)),
            Some(vec![1]),
            Refusal::Closed,
        ),
        (
            "binary event claiming 999 999 999 attachments",
            "4999999999-[\"x\"]".into(),
            None,
            Refusal::Closed,
        ),
        (
            "binary event claiming more attachments than usize",
            "45999999999999999999999-[\"x\"]".into(),
            None,
            Refusal::Closed,
        ),
        (
            "binary event without count",
            "45-[\"x\"]".into(),
            None,
            Refusal::Closed,
        ),
        (
            "a binary frame out of nowhere",
            String::new(),
            Some(vec![0xde, 0xad]),
            Refusal::Closed,
        ),
        (
            "connect to an unknown namespace",
            "40/nope,".into(),
            None,
            Refusal::ConnectError,
        ),
        (
            "event to an unknown namespace",
            "42/nope,[\"x\",{}]".into(),
            None,
            Refusal::Dropped,
        ),
        (
            "disconnect from an unknown namespace",
            "41/nope,".into(),
            None,
            Refusal::Dropped,
        ),
        (
            "second connect to the main namespace",
            "40".into(),
            None,
            Refusal::Dropped,
        ),
        (
            "unknown event with 10 000 nested arrays",
            format!("42[\"nope\",{}]", deep_array(10_000)),
            None,
            Refusal::EventError("nope", "UNKNOWN_EVENT"),
        ),
        (
            "1 MiB event name",
            format!("42[\"{long_name}\",{{}}]"),
            None,
            Refusal::EventError(
                "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
                "UNKNOWN_EVENT",
            ),
        ),
    ];
    for (i, (what, packet, binary, refusal)) in cases.into_iter().enumerate() {
        let ws = Ws::connect(addr).await;
        if binary.is_none() || !packet.is_empty() {
            ws.send_text(packet);
        }
        if let Some(bytes) = binary {
            ws.send_binary(bytes);
        }
        match refusal {
            Refusal::Closed => {
                // Any later packet must not be served either.
                ws.emit("get-public-keys", json!({"sessionId": "calm"}));
                assert!(
                    ws.wait_closed(WAIT).await.is_some(),
                    "{what}: the connection was not closed; raw {:?}",
                    ws.raw_tail(4)
                );
                assert_eq!(
                    ws.pending_names(),
                    Vec::<String>::new(),
                    "{what}: answered before closing"
                );
            }
            Refusal::ConnectError => {
                let answers = ws.probe(&i.to_string()).await.expect("probe answered");
                assert!(answers.is_empty(), "{what}: {answers:?}");
                let errors = ws.connect_errors();
                assert_eq!(errors.len(), 1, "{what}: {:?}", ws.raw_tail(4));
                let (ns, body) = errors[0].split_once(',').unwrap();
                assert_eq!(ns, "44/nope", "{what}");
                let body: Value = serde_json::from_str(body).unwrap();
                assert!(body["message"].is_string(), "{what}: {body}");
            }
            Refusal::EventError(event, code) => {
                let answers = ws.probe(&i.to_string()).await.unwrap_or_else(|| {
                    panic!(
                        "{what}: probe not answered, closed={} raw {:?}",
                        ws.is_closed(),
                        ws.raw_tail(4)
                    )
                });
                assert_eq!(answers.len(), 1, "{what}: {answers:?}");
                assert_eq!(answers[0].name, "event-error", "{what}");
                assert_eq!(answers[0].data["event"], event, "{what}: {}", answers[0].data);
                assert_eq!(answers[0].data["error"], code, "{what}: {}", answers[0].data);
                assert!(answers[0].data["message"].is_string());
            }
            Refusal::Dropped => {
                let answers = ws.probe(&i.to_string()).await.unwrap_or_else(|| {
                    panic!(
                        "{what}: probe not answered, closed={} raw {:?}",
                        ws.is_closed(),
                        ws.raw_tail(4)
                    )
                });
                assert!(answers.is_empty(), "{what}: {answers:?}");
                assert!(ws.connect_errors().is_empty(), "{what}");
            }
        }
        if !matches!(refusal, Refusal::Closed) {
            assert!(!ws.is_closed(), "{what}: closed");
        }
        pair.assert_healthy().await;
    }
    let rows = sessions(addr).await;
    assert_eq!(rows.len(), 1, "garbage created sessions: {rows:?}");
    stop(server).await;
}

#[tokio::test]
async fn wrong_engine_versions_and_unknown_sids_get_http_json_errors() {
    let _serial = serial().await;
    let server = start(lenient).await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    let json_400 = |what: &str, answer: (u16, String), code: &str| {
        assert_eq!(answer.0, 400, "{what}: {answer:?}");
        let body: Value =
            serde_json::from_str(&answer.1).unwrap_or_else(|_| panic!("{what}: not JSON {answer:?}"));
        assert_eq!(body["code"].as_str(), Some(code), "{what}: {body}");
        assert!(body["message"].is_string(), "{what}: {body}");
    };
    for (what, query, code) in [
        ("EIO=3 polling", "EIO=3&transport=polling", "5"),
        ("EIO=3 websocket", "EIO=3&transport=websocket", "5"),
        ("EIO=5", "EIO=5&transport=polling", "5"),
        ("no EIO", "transport=polling", "5"),
        ("unknown transport", "EIO=4&transport=carrier-pigeon", "0"),
        ("unknown sid, polling", "EIO=4&transport=polling&sid=nope", "1"),
        (
            "unknown well-formed sid, polling",
            "EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA",
            "1",
        ),
        (
            "unknown sid, websocket",
            "EIO=4&transport=websocket&sid=nope",
            "1",
        ),
    ] {
        json_400(
            what,
            http_get(addr, &format!("/socket.io/?{query}")).await.unwrap(),
            code,
        );
        pair.assert_healthy().await;
    }
    // A POST to an unknown session is refused the same way.
    let answer = http_request(
        addr,
        "POST",
        "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA",
        &[("Content-Type", "text/plain;charset=UTF-8")],
        b"42[\"send-message\",{}]",
    )
    .await
    .unwrap();
    json_400("POST to an unknown sid", answer, "1");
    // WebSocket upgrades: EIO=3 is refused before the upgrade; an upgrade
    // naming an unknown session never gets an Engine.IO session.
    let err = Ws::open_query(addr, "EIO=3&transport=websocket")
        .await
        .err()
        .expect("EIO=3 upgrade accepted");
    assert!(err.contains("400"), "{err}");
    for query in [
        "EIO=4&transport=websocket&sid=nope",
        "EIO=4&transport=websocket&sid=AAAAAAAAAAAAAAAA",
    ] {
        let refused = Ws::open_query(addr, query).await;
        assert!(refused.is_err(), "{query}: an Engine.IO session was opened");
        pair.assert_healthy().await;
    }
    assert_eq!(sessions(addr).await.len(), 1);
    stop(server).await;
}

// ---------------------------------------------------------------------------
// Malformed payloads for every event

/// What the attacker must get back (before its next packet is answered).
#[derive(Debug, Clone)]
enum Answer {
    EventError(&'static str),
    SessionError(&'static str),
    /// `public-keys-updated []`: the contract's answer to an unbound `get-public-keys`.
    NoKeys,
    /// `message-sent`: accepted.
    Sent,
    /// Accepted, nothing goes back to the sender.
    Nothing,
}

/// A row: event, raw JSON payload (`None`: no argument at all), expected answer.
type Row = (&'static str, Option<String>, Answer);

fn with(base: &Value, field: &str, value: Value) -> Value {
    let mut v = base.clone();
    v[field] = value;
    v
}

fn without(base: &Value, field: &str) -> Value {
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove(field);
    v
}

/// `base` with `field` set to raw JSON text (for nesting too deep for `Value`).
fn with_raw(base: &Value, field: &str, raw: &str) -> String {
    with(base, field, json!("@RAW@"))
        .to_string()
        .replace("\"@RAW@\"", raw)
}

fn malformed_rows() -> Vec<Row> {
    use Answer::*;
    let big = "x".repeat(MIB + 1);
    let deep_a = deep_array(10_000);
    let deep_o = deep_object(10_000);
    let s = "atk";
    let valid: Vec<(&'static str, Value)> = vec![
        (
            "join-session",
            json!({"sessionId": "atk:key", "userId": "mallory", "displayName": "M", "publicKey": "pk", "isCreator": true}),
        ),
        (
            "send-message",
            json!({"sessionId": s, "from": "mallory", "encrypted": "c", "type": "text"}),
        ),
        ("get-public-keys", json!({"sessionId": s, "userId": "mallory"})),
        (
            "save-public-key",
            json!({"sessionId": s, "userId": "mallory", "publicKey": "pk", "displayName": "M"}),
        ),
        (
            "set-session-key",
            json!({"sessionId": s, "encryptedKeys": {"peer": "w"}}),
        ),
        (
            "file-downloaded",
            json!({"sessionId": s, "downloadedBy": "mallory", "senderId": "peer", "fileName": "f", "timestamp": 1}),
        ),
        (
            "typing",
            json!({"sessionId": s, "userId": "mallory", "displayName": "M"}),
        ),
        (
            "stopped-typing",
            json!({"sessionId": s, "userId": "mallory", "displayName": "M"}),
        ),
        ("leave-session", json!({"sessionId": s, "userId": "mallory"})),
    ];
    let mut rows: Vec<Row> = Vec::new();
    for (event, v) in &valid {
        let event: &'static str = event;
        let join = event == "join-session";
        let wrong = if join {
            SessionError("INVALID_PAYLOAD")
        } else {
            EventError("INVALID_PAYLOAD")
        };
        // Payloads that are not an object, or whose sessionId has the wrong type.
        for raw in [
            "null".to_string(),
            "42".into(),
            "\"atk\"".into(),
            "true".into(),
            "[]".into(),
            json!([v]).to_string(),
            deep_a.clone(),
            with(v, "sessionId", json!(7)).to_string(),
            with(v, "sessionId", json!(["atk"])).to_string(),
            with(v, "sessionId", json!({"id": "atk"})).to_string(),
            with_raw(v, "sessionId", &deep_a),
            with_raw(v, "sessionId", &deep_o),
        ] {
            rows.push((event, Some(raw), wrong.clone()));
        }
        rows.push((event, None, wrong.clone()));
        // Missing sessionId (an empty object, or the field left out).
        let missing = match event {
            "get-public-keys" => NoKeys,
            _ => wrong.clone(),
        };
        rows.push((event, Some("{}".into()), missing.clone()));
        // 10 000 nested objects under an unknown key: ignored, so sessionId is missing.
        rows.push((event, Some(deep_o.clone()), missing.clone()));
        rows.push((event, Some(without(v, "sessionId").to_string()), missing.clone()));
        rows.push((
            event,
            Some(with(v, "sessionId", Value::Null).to_string()),
            missing,
        ));
        // A 1 MiB session id, and a session this socket did not join.
        let (huge, other) = match event {
            "join-session" => (SessionError("INVALID_PAYLOAD"), SessionError("INVALID_KEY")),
            "get-public-keys" => (NoKeys, NoKeys),
            "typing" | "stopped-typing" => (Nothing, Nothing),
            _ => (EventError("NOT_IN_SESSION"), EventError("NOT_IN_SESSION")),
        };
        rows.push((event, Some(with(v, "sessionId", json!(big)).to_string()), huge));
        let other_id = if join { "calm:wrong-key" } else { "calm" };
        rows.push((
            event,
            Some(with(v, "sessionId", json!(other_id)).to_string()),
            other,
        ));
    }
    let v = |event: &str| valid.iter().find(|(e, _)| *e == event).unwrap().1.clone();
    let join = v("join-session");
    for (payload, answer) in [
        (
            with(&join, "userId", json!(7)).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "userId", json!("")).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "userId", json!(big)).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            without(&join, "userId").to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "displayName", json!(big)).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "displayName", json!(["M"])).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "publicKey", json!(big)).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with_raw(&join, "publicKey", &deep_a),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with_raw(&join, "publicKey", &deep_o),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "authKey", json!(big)).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "authKey", json!(7)).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "sessionId", json!(format!("atk:{big}"))).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "chatMode", json!("anarchy")).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
        (
            with(&join, "chatMode", json!(7)).to_string(),
            SessionError("INVALID_PAYLOAD"),
        ),
    ] {
        rows.push(("join-session", Some(payload), answer));
    }
    let send = v("send-message");
    for (payload, answer) in [
        (
            with(&send, "from", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&send, "from", json!("peer")).to_string(),
            EventError("NOT_ALLOWED"),
        ),
        (
            with(&send, "from", json!(big)).to_string(),
            EventError("NOT_ALLOWED"),
        ),
        (
            without(&send, "encrypted").to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&send, "encrypted", Value::Null).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with_raw(&send, "encrypted", &deep_a),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with_raw(&send, "encrypted", &deep_o),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&send, "to", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&send, "to", json!(["peer"])).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&send, "to", json!(big)).to_string(),
            EventError("UNKNOWN_RECIPIENT"),
        ),
        (
            with(&send, "type", json!(big)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&send, "type", json!({"t": 1})).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&send, "clientMessageId", json!(big)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&send, "clientMessageId", json!("")).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&send, "clientMessageId", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with_raw(&send, "originalContent", &deep_a),
            EventError("INVALID_PAYLOAD"),
        ),
        // Large but legal: a 1 MiB ciphertext is a normal (file) message.
        (with(&send, "encrypted", json!(big)).to_string(), Sent),
    ] {
        rows.push(("send-message", Some(payload), answer));
    }
    let keys = v("get-public-keys");
    for (payload, answer) in [
        (
            with(&keys, "userId", json!("peer")).to_string(),
            EventError("NOT_ALLOWED"),
        ),
        (
            with(&keys, "userId", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&keys, "userId", json!(big)).to_string(),
            EventError("NOT_ALLOWED"),
        ),
    ] {
        rows.push(("get-public-keys", Some(payload), answer));
    }
    let save = v("save-public-key");
    for (payload, answer) in [
        (
            with(&save, "publicKey", json!(big)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with_raw(&save, "publicKey", &deep_a),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with_raw(&save, "publicKey", &deep_o),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            without(&save, "publicKey").to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&save, "publicKey", Value::Null).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&save, "publicKey", json!("")).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&save, "displayName", json!(big)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&save, "displayName", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&save, "userId", json!("peer")).to_string(),
            EventError("NOT_ALLOWED"),
        ),
        (
            with(&save, "userId", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
    ] {
        rows.push(("save-public-key", Some(payload), answer));
    }
    let set = v("set-session-key");
    for (payload, answer) in [
        (
            without(&set, "encryptedKeys").to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&set, "encryptedKeys", json!([])).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&set, "encryptedKeys", json!("w")).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&set, "encryptedKeys", json!({"peer": 7})).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&set, "encryptedKeys", json!({"peer": {"k": "w"}})).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&set, "encryptedKeys", json!({"peer": big})).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with_raw(&set, "encryptedKeys", &deep_o),
            EventError("INVALID_PAYLOAD"),
        ),
    ] {
        rows.push(("set-session-key", Some(payload), answer));
    }
    let file = v("file-downloaded");
    for (payload, answer) in [
        (
            without(&file, "senderId").to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&file, "senderId", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&file, "senderId", json!(big)).to_string(),
            EventError("UNKNOWN_RECIPIENT"),
        ),
        (
            with(&file, "senderId", json!("nobody")).to_string(),
            EventError("UNKNOWN_RECIPIENT"),
        ),
        (
            with(&file, "fileName", json!(big)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&file, "fileName", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        // downloadedBy is display text relayed to the sender (PROTOCOL.md), not an id.
        (
            with(&file, "downloadedBy", json!("Peer's name")).to_string(),
            Nothing,
        ),
        (
            with(&file, "downloadedBy", json!(big)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&file, "downloadedBy", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with_raw(&file, "timestamp", &deep_a),
            EventError("INVALID_PAYLOAD"),
        ),
        // A non-numeric timestamp is replaced by server time: accepted.
        (with(&file, "timestamp", json!("yesterday")).to_string(), Nothing),
    ] {
        rows.push(("file-downloaded", Some(payload), answer));
    }
    for event in ["typing", "stopped-typing"] {
        let t = v(event);
        for (payload, answer) in [
            (
                with(&t, "userId", json!("peer")).to_string(),
                EventError("NOT_ALLOWED"),
            ),
            (
                with(&t, "userId", json!(7)).to_string(),
                EventError("INVALID_PAYLOAD"),
            ),
            (
                with(&t, "displayName", json!(7)).to_string(),
                EventError("INVALID_PAYLOAD"),
            ),
            // Accepted; the oversized name is not relayed (checked on the peer).
            (with(&t, "displayName", json!(big)).to_string(), Nothing),
        ] {
            rows.push((event, Some(payload), answer));
        }
    }
    let leave = v("leave-session");
    for (payload, answer) in [
        (
            with(&leave, "userId", json!("peer")).to_string(),
            EventError("NOT_ALLOWED"),
        ),
        (
            with(&leave, "userId", json!(7)).to_string(),
            EventError("INVALID_PAYLOAD"),
        ),
        (
            with(&leave, "userId", json!(big)).to_string(),
            EventError("NOT_ALLOWED"),
        ),
    ] {
        rows.push(("leave-session", Some(payload), answer));
    }
    rows
}

#[tokio::test]
async fn every_event_with_a_malformed_payload_gets_the_contract_error() {
    let _serial = serial().await;
    let server = start(|c| {
        lenient(c);
        // Hundreds of refused events from one socket: rate limits would answer first.
        c.send_rate_per_socket = 0;
        c.join_rate_per_min = 0;
        c.typing_rate_per_min = 0;
        c.key_rate_per_min = 0;
    })
    .await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    let mut atk = room(addr, "atk", &["mallory", "peer"]).await;
    let peer = atk.pop().unwrap();
    let mallory = atk.pop().unwrap();
    let rows = malformed_rows();
    let count = rows.len();
    for (i, (event, payload, expected)) in rows.into_iter().enumerate() {
        let packet = match &payload {
            Some(p) => format!("42[\"{event}\",{p}]"),
            None => format!("42[\"{event}\"]"),
        };
        let shown: String = payload.as_deref().unwrap_or("<none>").chars().take(80).collect();
        mallory.send_text(packet);
        let answers = mallory.probe(&i.to_string()).await.unwrap_or_else(|| {
            panic!(
                "row {i} {event} {shown}: no answer to the next packet; closed={} raw {:?}",
                mallory.is_closed(),
                mallory.raw_tail(3)
            )
        });
        let names: Vec<&str> = answers.iter().map(|a| a.name.as_str()).collect();
        let ok = match (&expected, answers.as_slice()) {
            (Answer::EventError(code), [a]) => {
                a.name == "event-error"
                    && a.data["event"] == event
                    && a.data["error"] == *code
                    && a.data["message"].is_string()
            }
            (Answer::SessionError(code), [a]) => {
                a.name == "session-error" && a.data["error"] == *code && a.data["message"].is_string()
            }
            (Answer::NoKeys, [a]) => a.name == "public-keys-updated" && a.data == json!([]),
            (Answer::Sent, [a]) => a.name == "message-sent",
            (Answer::Nothing, []) => true,
            _ => false,
        };
        let shown_answers: Vec<String> = answers
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a.name,
                    a.data.to_string().chars().take(200).collect::<String>()
                )
            })
            .collect();
        assert!(
            ok,
            "row {i} {event} {shown}: expected {expected:?}, got {names:?} {shown_answers:?}"
        );
        pair.assert_healthy().await;
    }
    // The attacker is still bound and its session works; the peer saw only
    // what was accepted, and never a 1 MiB display name.
    mallory.emit("send-message", message("atk", "mallory", None, "still-here"));
    recv_message(&peer, "still-here", PROMPT)
        .await
        .expect("the attacker's session stopped working");
    while let Some(t) = peer.recv("user-typing", Duration::ZERO).await {
        assert!(
            t["displayName"].as_str().is_none_or(|n| n.len() <= 128),
            "a huge name was relayed"
        );
    }
    let rows = sessions(addr).await;
    let ids: Vec<&str> = rows.iter().map(|r| r["sessionId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["calm", "atk"], "malformed payloads created sessions");
    eprintln!("malformed payloads: {count} rows, each refused as the contract says");
    stop(server).await;
}

// ---------------------------------------------------------------------------
// Oversized messages

#[tokio::test]
async fn oversized_websocket_messages_close_the_connection_without_being_buffered() {
    let _serial = serial().await;
    let server = start(|c| {
        lenient(c);
        c.max_payload_bytes = MIB as u64;
    })
    .await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;

    // A member may send just under the limit.
    let mut big = room(addr, "big", &["sender", "receiver"]).await;
    let receiver = big.pop().unwrap();
    let sender = big.pop().unwrap();
    let under = "u".repeat(MIB - 1024);
    sender.emit("send-message", message("big", "sender", None, &under));
    recv_message(&receiver, &under, WAIT)
        .await
        .expect("a message under the limit was not relayed");
    pair.assert_healthy().await;

    // One WebSocket message over the limit (2 MiB) from a bound member.
    let over = "o".repeat(2 * MIB);
    sender.emit("send-message", message("big", "sender", None, &over));
    assert!(
        sender.wait_closed(WAIT).await.is_some(),
        "a 2 MiB message did not close the connection"
    );
    assert!(recv_message(&receiver, &over, Duration::from_millis(300))
        .await
        .is_none());
    receiver
        .recv_where("user-left", WAIT, |d| d["userId"] == "sender")
        .await
        .expect("the sender's departure was not announced");
    pair.assert_healthy().await;

    // A frame header announcing 64 MiB, followed by 64 KiB and then nothing:
    // the server must refuse it from the header, not wait for the rest.
    let mut raw = RawWs::connect(addr).await;
    let mut frame = RawWs::header(true, 0x1, 64 * MIB as u64);
    frame.extend_from_slice(&vec![b'a'; 64 * 1024]);
    let started = Instant::now();
    let _ = raw.stream.write_all(&frame).await;
    assert!(
        raw.closed_within(Duration::from_secs(3)).await,
        "a frame announcing 64 MiB was not refused before its payload arrived"
    );
    eprintln!("64 MiB frame header refused after {:?}", started.elapsed());
    pair.assert_healthy().await;

    // A message in fragments that are each under the limit but over it together.
    let mut raw = RawWs::connect(addr).await;
    let chunk = vec![b'f'; MIB / 2];
    let mut refused_early = false;
    for i in 0..6 {
        let opcode = if i == 0 { 0x1 } else { 0x0 };
        if raw.write_frame(false, opcode, &chunk).await.is_err() {
            refused_early = true;
            break;
        }
    }
    assert!(
        refused_early || raw.closed_within(Duration::from_secs(3)).await,
        "a fragmented 3 MiB message was not refused"
    );
    pair.assert_healthy().await;

    // A single frame just over the limit, sent whole.
    let mut raw = RawWs::connect(addr).await;
    let _ = raw.write_frame(true, 0x1, &vec![b'4'; MIB + 1]).await;
    assert!(
        raw.closed_within(Duration::from_secs(3)).await,
        "a frame of limit + 1 bytes was accepted"
    );
    pair.assert_healthy().await;
    stop(server).await;
}

#[tokio::test]
async fn oversized_polling_bodies_are_refused_and_close_only_that_session() {
    let _serial = serial().await;
    let server = start(|c| {
        lenient(c);
        c.max_payload_bytes = MIB as u64;
    })
    .await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;

    // A body over the limit, sent whole.
    let polling = Polling::open(addr).await;
    let mut body = b"42[\"send-message\",{\"encrypted\":\"".to_vec();
    body.extend(std::iter::repeat_n(b'p', 2 * MIB));
    body.extend_from_slice(b"\"}]");
    let (status, text) = polling.post(&body).await;
    assert_eq!(status, 413, "2 MiB polling body: {text}");
    let (status, text) = polling.get().await;
    assert_eq!(status, 400, "the session survived an oversized body: {text}");
    let err: Value = serde_json::from_str(&text).expect("JSON error");
    assert_eq!(err["code"], "1", "{err}");
    pair.assert_healthy().await;

    // A body announcing 64 MiB of which only 2 MiB are sent: refused once
    // past the limit, without waiting for (or buffering) the rest.
    let polling = Polling::open(addr).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n4",
        polling.path(),
        64 * MIB
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let _ = stream.write_all(&vec![b'p'; 2 * MIB]).await;
    let mut answer = vec![0u8; 1024];
    let n = timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("a body announcing 64 MiB was not refused within 3 s of passing the limit")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    eprintln!(
        "64 MiB polling body refused {:?} after the first 2 MiB",
        started.elapsed()
    );
    pair.assert_healthy().await;
    stop(server).await;
}

// ---------------------------------------------------------------------------
// Floods and slow consumers

/// A steady flood of 5 000 `send-message` per second (the stock client's
/// pasted list is a couple of hundred at once): refused with
/// `RATE_LIMITED` and a retry hint, then cut off, while the flooder's own
/// peers and another session keep their usual latency.
#[tokio::test]
async fn a_send_message_flood_is_refused_then_cut_off_while_peers_stay_fast() {
    flood_at(100).await;
}

/// The same at 2 000 per second: still 66 times the sustained limit, and
/// persistent, so it must be cut off too.
#[tokio::test]
async fn a_slower_but_persistent_flood_is_cut_off_too() {
    flood_at(40).await;
}

/// Floods with `per_tick` messages every 20 ms for up to 5 s.
async fn flood_at(per_tick: usize) {
    let _serial = serial().await;
    // The documented per-socket send limits (30/s, burst 300) are kept.
    let server = start(lenient).await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    let mut flood = room(addr, "flood", &["mallory", "p1", "p2"]).await;
    let p2 = flood.pop().unwrap();
    let p1 = flood.pop().unwrap();
    let mallory = Arc::new(flood.pop().unwrap());

    let sent = Arc::new(AtomicUsize::new(0));
    let flood_for = Duration::from_secs(5);
    let flooder = {
        let (mallory, sent) = (mallory.clone(), sent.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let started = Instant::now();
            while started.elapsed() < flood_for && !mallory.is_closed() {
                tick.tick().await;
                for _ in 0..per_tick {
                    let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
                    mallory.emit(
                        "send-message",
                        message("flood", "mallory", None, &format!("flood-{n}")),
                    );
                }
            }
        })
    };
    let started = Instant::now();
    let mut latencies_calm = Vec::new();
    let mut latencies_flood = Vec::new();
    while !flooder.is_finished() {
        // Peers in another session, and in the flooder's own session.
        latencies_calm.push(pair.exchange().await);
        let text = format!("p1-{}", latencies_flood.len());
        let t0 = Instant::now();
        p1.emit("send-message", message("flood", "p1", Some("p2"), &text));
        let got = recv_message(&p2, &text, PROMPT)
            .await
            .unwrap_or_else(|| panic!("p1 -> p2 took over {PROMPT:?} during the flood"));
        latencies_flood.push(got.at - t0);
        sleep(Duration::from_millis(20)).await;
    }
    let flood_time = started.elapsed();
    let sent = sent.load(Ordering::Relaxed);
    let limited = mallory
        .recv_where("event-error", Duration::ZERO, |d| d["error"] == "RATE_LIMITED")
        .await
        .expect("the flooder never got RATE_LIMITED");
    assert_eq!(limited.data["event"], "send-message", "{}", limited.data);
    assert!(limited.data["message"].is_string());
    assert!(
        limited.data["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0),
        "{}",
        limited.data
    );
    let refusals = 1 + mallory.count("event-error");
    // The flood was not relayed: p2 got at most the burst plus the refill.
    sleep(Duration::from_millis(300)).await;
    let relayed = p2.count("new-message");
    let allowed = 300 + 30 * (flood_time.as_secs() as usize + 2);
    let worst_calm = latencies_calm.iter().max().copied().unwrap_or_default();
    let worst_flood = latencies_flood.iter().max().copied().unwrap_or_default();
    eprintln!(
        "flood: {sent} sent over {flood_time:?} ({:.0}/s), {relayed} relayed, {refusals} RATE_LIMITED answers read, \
         cut off: {}; calm pair p50 {:?} max {worst_calm:?}; same-session peers p50 {:?} max {worst_flood:?}",
        sent as f64 / flood_time.as_secs_f64(),
        mallory.is_closed(),
        percentile(&latencies_calm, 50),
        percentile(&latencies_flood, 50),
    );
    assert!(
        relayed <= allowed,
        "{relayed} flood messages relayed, limit allows {allowed}"
    );
    assert!(worst_calm < PROMPT && worst_flood < PROMPT);
    // Persistent flooding disconnects the socket.
    assert!(
        mallory.wait_closed(Duration::from_secs(1)).await.is_some(),
        "the flooder was still connected after {sent} messages in {flood_time:?}"
    );
    assert!(
        flood_time < flood_for,
        "the flooder was cut off only when it stopped by itself"
    );
    p1.recv_where("user-left", WAIT, |d| d["userId"] == "mallory")
        .await
        .expect("the flooder's departure was not announced");
    // The peers of the flooder's session go on.
    p2.emit("send-message", message("flood", "p2", None, "after"));
    recv_message(&p1, "after", PROMPT)
        .await
        .expect("the flooded session stopped working");
    pair.assert_healthy().await;
    stop(server).await;
}

/// A flooder that does not read its answers: its `RATE_LIMITED` refusals
/// pile up in its own outgoing buffer, and it must be cut off all the same.
#[tokio::test]
async fn a_flooder_that_never_reads_is_still_cut_off() {
    let _serial = serial().await;
    let server = start(lenient).await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    let mut flood = room(addr, "flood", &["p1"]).await;
    let p1 = flood.pop().unwrap();
    let mallory = Ws::connect_with_small_window(addr, 4096).await;
    join(&mallory, "flood", "key", "mallory", false).await;
    p1.recv_where("user-joined", WAIT, |d| d["userId"] == "mallory")
        .await
        .expect("joined");
    mallory.stop_reading();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut cut_off = None;
    while started.elapsed() < Duration::from_secs(10) {
        for _ in 0..200 {
            sent += 1;
            mallory.emit(
                "send-message",
                message("flood", "mallory", None, &format!("flood-{sent}")),
            );
        }
        if p1
            .recv_where("user-left", Duration::ZERO, |d| d["userId"] == "mallory")
            .await
            .is_some()
        {
            cut_off = Some(started.elapsed());
            break;
        }
        pair.exchange().await;
        sleep(Duration::from_millis(20)).await;
    }
    let cut_off = cut_off.unwrap_or_else(|| {
        panic!(
            "a flooder that does not read was not cut off after {sent} messages in {:?}",
            started.elapsed()
        )
    });
    eprintln!("non-reading flooder cut off after {cut_off:?} and {sent} messages");
    pair.assert_healthy().await;
    stop(server).await;
}

#[tokio::test]
async fn a_slow_reader_in_a_busy_session_is_cut_off_and_slows_nobody() {
    slow_reader_is_cut_off(SlowReader::WebSocket).await;
}

#[tokio::test]
async fn a_slow_reader_that_upgraded_from_polling_is_cut_off_on_its_websocket() {
    slow_reader_is_cut_off(SlowReader::UpgradedFromPolling).await;
}

/// How the slow reader connects.
enum SlowReader {
    WebSocket,
    /// Long-polling first, then a WebSocket upgrade (the stock client's
    /// default): its session lives on a second connection.
    UpgradedFromPolling,
}

async fn slow_reader_is_cut_off(how: SlowReader) {
    let _serial = serial().await;
    // No ping before the end of the test: the heartbeat must not be what
    // ends the slow reader.
    let ping_interval = Duration::from_secs(120);
    let server = start(|c| {
        lenient(c);
        c.send_rate_per_socket = 0;
        c.ping_interval = ping_interval;
    })
    .await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    let mut busy = room(addr, "busy", &["a", "b"]).await;
    let b = busy.pop().unwrap();
    let a = busy.pop().unwrap();
    // The slow reader: a 4 KiB TCP receive window, and it stops reading.
    let slow = match how {
        SlowReader::WebSocket => Ws::connect_with_small_window(addr, 4096).await,
        SlowReader::UpgradedFromPolling => Ws::upgraded_with_small_window(addr, 4096).await,
    };
    join(&slow, "busy", "key", "slow", false).await;
    for m in [&a, &b] {
        m.recv_where("user-joined", WAIT, |d| d["userId"] == "slow")
            .await
            .expect("slow joined");
    }
    slow.stop_reading();

    // `a` talks a lot: 8 KiB messages, 100 at a time; `b` must get every one
    // of them promptly and in order while the slow reader's buffers fill up.
    let filler = "z".repeat(8 * 1024);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut latencies = Vec::new();
    let mut calm = Vec::new();
    let mut cut_off = None;
    let mut marks = std::collections::HashSet::new();
    // 3000 messages (24 MiB) fill every buffer between the server and the
    // slow reader; after that `a` goes on at 10 messages a second.
    let give_up = Duration::from_secs(45);
    while started.elapsed() < give_up {
        let batch = if sent < 3000 { 100 } else { 1 };
        for _ in 0..batch {
            sent += 1;
            a.emit(
                "send-message",
                message("busy", "a", None, &format!("{sent}:{filler}")),
            );
        }
        sent += 1;
        marks.insert(sent);
        let mark = format!("{sent}:mark");
        let t0 = Instant::now();
        a.emit("send-message", message("busy", "a", None, &mark));
        let got = recv_message(&b, &mark, PROMPT)
            .await
            .unwrap_or_else(|| panic!("b waited over {PROMPT:?} for message {sent} while a reader was slow"));
        latencies.push(got.at - t0);
        calm.push(pair.exchange().await);
        a.clear();
        if b.recv_where("user-left", Duration::ZERO, |d| d["userId"] == "slow")
            .await
            .is_some()
        {
            cut_off = Some((started.elapsed(), sent));
            break;
        }
        if batch == 1 {
            sleep(Duration::from_millis(100)).await;
        }
    }
    let (after, at_message) = cut_off.unwrap_or_else(|| {
        panic!("the slow reader was not disconnected within {give_up:?} ({sent} messages of 8 KiB sent)")
    });
    // Nobody silently missed anything: b got every message, in order (the
    // marks were already taken out of its queue).
    let mut expected = 1usize;
    while let Some(m) = b.recv("new-message", Duration::ZERO).await {
        while marks.contains(&expected) {
            expected += 1;
        }
        let n: usize = m["encrypted"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n, expected, "b's messages out of order or missing");
        expected += 1;
    }
    while marks.contains(&expected) {
        expected += 1;
    }
    assert_eq!(expected, sent + 1, "b did not get all {sent} messages");
    let busy_row = sessions(addr)
        .await
        .into_iter()
        .find(|r| r["sessionId"] == "busy")
        .expect("busy session");
    assert_eq!(busy_row["members"], 2, "{busy_row}");
    eprintln!(
        "slow reader cut off after {after:?} and {at_message} messages of 8 KiB; \
         b's latency p50 {:?} max {:?}; calm pair max {:?}",
        percentile(&latencies, 50),
        latencies.iter().max().unwrap(),
        calm.iter().max().unwrap(),
    );
    pair.assert_healthy().await;
    // Its connection is really gone: reading again, it finds the end of
    // what was buffered and then the connection closed.
    slow.resume_reading();
    assert!(
        slow.wait_closed(Duration::from_secs(10)).await.is_some(),
        "the slow reader was announced gone but its connection stayed open"
    );
    stop(server).await;
}

// ---------------------------------------------------------------------------
// Slowloris

#[tokio::test]
async fn two_hundred_slowloris_connections_are_dropped_while_health_answers_promptly() {
    let _serial = serial().await;
    let header_timeout = Duration::from_secs(2);
    let server = start(|c| {
        lenient(c);
        c.header_read_timeout = header_timeout;
    })
    .await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    let started = Instant::now();
    let give_up = Duration::from_secs(10);
    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("slowloris connect");
            let (mut rd, mut wr) = stream.split();
            let _ = wr.write_all(b"GET /health HTTP/1.1\r\nHost: slow\r\n").await;
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut k = 0;
            loop {
                tokio::select! {
                    read = rd.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return (i, Some(started.elapsed()), answer),
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                    },
                    _ = tick.tick() => {
                        k += 1;
                        if started.elapsed() > give_up {
                            return (i, None, answer);
                        }
                        // One more header line, a byte at a time, never the blank line.
                        if wr.write_all(format!("X-Slow-{k}: {i}\r\n").as_bytes()).await.is_err() {
                            return (i, Some(started.elapsed()), answer);
                        }
                    }
                }
            }
        }));
    }
    // Meanwhile /health and the pair answer promptly.
    let mut health = Vec::new();
    let mut calm = Vec::new();
    while started.elapsed() < header_timeout + Duration::from_secs(2) {
        health.push(assert_health(addr).await.1);
        calm.push(pair.exchange().await);
        sleep(Duration::from_millis(100)).await;
    }
    let mut dropped = Vec::new();
    for t in tasks {
        let (i, closed, answer) = t.await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains(" 200 "), "slowloris {i} was served: {answer}");
        let closed =
            closed.unwrap_or_else(|| panic!("slowloris connection {i} still open after {give_up:?}"));
        dropped.push(closed);
    }
    let last = dropped.iter().max().unwrap();
    assert!(
        *last < header_timeout + Duration::from_secs(3),
        "slowloris connections lasted up to {last:?} with a {header_timeout:?} header timeout"
    );
    eprintln!(
        "slowloris: 200 connections dropped between {:?} and {last:?}; /health max {:?} p50 {:?}; pair max {:?}",
        dropped.iter().min().unwrap(),
        health.iter().max().unwrap(),
        percentile(&health, 50),
        calm.iter().max().unwrap(),
    );
    pair.assert_healthy().await;
    stop(server).await;
}

/// The other half of slowloris: connections that send nothing, or stop in
/// the middle of the HTTP/2 preface, must be dropped after the header
/// timeout as well; otherwise `MAX_CONNECTIONS` of them lock everyone out.
#[tokio::test]
async fn silent_and_half_preface_connections_are_dropped_and_cannot_lock_everyone_out() {
    let _serial = serial().await;
    let header_timeout = Duration::from_secs(2);
    let server = start(|c| {
        lenient(c);
        c.header_read_timeout = header_timeout;
        c.max_connections = 40;
    })
    .await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    // 2 connections are the pair's; 38 more fill MAX_CONNECTIONS.
    let mut idle = Vec::new();
    for i in 0..38 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            // 16 of the 24 bytes of the HTTP/2 preface.
            s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        idle.push(s);
    }
    let started = Instant::now();
    // Within the header timeout (plus slack) they are all dropped...
    for (i, s) in idle.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let left = (header_timeout + Duration::from_secs(3)).saturating_sub(started.elapsed());
        let closed = timeout(left, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let kind = if i % 2 == 1 { "half-preface" } else { "silent" };
        assert!(
            closed.is_ok(),
            "a {kind} connection was still open {:?} after it connected (header timeout {header_timeout:?})",
            started.elapsed()
        );
    }
    // ...so the server takes new connections again.
    let (_, took) = assert_health(addr).await;
    eprintln!(
        "silent connections dropped within {:?}; /health then took {took:?}",
        started.elapsed()
    );
    pair.assert_healthy().await;
    stop(server).await;
}

// ---------------------------------------------------------------------------
// The real binary: thousands of cycles, and SIGTERM

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_join_leave_reconnect_cycles_return_to_baseline_and_rss_plateaus() {
    let _serial = serial().await;
    const CYCLES: usize = 10_000;
    const WORKERS: usize = 8;
    let server = Spawned::start(
        "cycles",
        &[
            ("DEBUG", "true".into()),
            ("HANDSHAKE_RATE_PER_IP", "0".into()),
            ("MAX_SOCKETS_PER_IP", "0".into()),
            ("JOIN_RATE_PER_MIN", "0".into()),
            // Every cycle creates a session from this one address.
            ("RESERVE_RATE_PER_IP", "0".into()),
            ("MAX_SESSIONS_PER_IP", "0".into()),
            ("SESSION_IDLE_TIMEOUT_SECS", "2".into()),
            ("CLEANUP_INTERVAL_SECS", "1".into()),
            // Every join replays the history; keep that part of a cycle small.
            ("MAX_HISTORY_MESSAGES", "100".into()),
        ],
    )
    .await;
    let addr = server.addr;
    let pair = Pair::open(addr, "calm").await;
    let baseline = sessions(addr).await;
    assert_eq!(baseline.len(), 1);
    let (base_health, _) = assert_health(addr).await;
    let rss_start = server.rss_kib();

    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    let next = Arc::new(AtomicUsize::new(0));
    for w in 0..WORKERS {
        let (done, next) = (done.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let user = format!("w{w}");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CYCLES {
                    break;
                }
                match i % 4 {
                    // Join the long-lived session, talk, leave, close politely.
                    0 => {
                        let ws = Ws::connect(addr).await;
                        join(&ws, "calm", "key", &user, false).await;
                        ws.emit("send-message", message("calm", &user, None, &format!("c{i}")));
                        ws.emit("leave-session", json!({"sessionId": "calm", "userId": user}));
                        ws.probe("left").await.expect("leave handled");
                        ws.close();
                    }
                    // Create a session of one's own, talk, drop the TCP connection.
                    1 => {
                        let ws = Ws::connect(addr).await;
                        join(&ws, &format!("t{i}"), "key", &user, true).await;
                        ws.emit("send-message", message(&format!("t{i}"), &user, None, "hello"));
                        ws.recv("message-sent", WAIT).await.expect("message-sent");
                        ws.abort();
                    }
                    // Reload: the old socket drops as the same user joins
                    // from a new one (a live old socket keeps its seat).
                    2 => {
                        let old = Ws::connect(addr).await;
                        join(&old, "calm", "key", &user, false).await;
                        let new = Ws::connect(addr).await;
                        old.abort();
                        join(&new, "calm", "key", &user, false).await;
                        new.emit("typing", json!({"sessionId": "calm", "userId": user}));
                        new.emit("leave-session", json!({"sessionId": "calm", "userId": user}));
                        new.probe("left").await.expect("leave handled");
                        new.abort();
                    }
                    // Create, then a Socket.IO disconnect packet.
                    _ => {
                        let ws = Ws::connect(addr).await;
                        join(&ws, &format!("t{i}"), "key", &user, true).await;
                        // The namespace is left; the Engine.IO connection stays
                        // open until the client closes it.
                        ws.send_text("41");
                        ws.close();
                        ws.wait_closed(WAIT).await;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut rss_2000 = None;
    let mut samples = Vec::new();
    let mut next_check = Instant::now();
    while done.load(Ordering::Relaxed) < CYCLES {
        let n = done.load(Ordering::Relaxed);
        if rss_2000.is_none() && n >= 2000 {
            rss_2000 = Some(server.rss_kib());
        }
        if Instant::now() >= next_check {
            samples.push((n, server.rss_kib()));
            // The healthy pair stays healthy throughout (what the cycles
            // announced to it is dropped first).
            pair.a.clear();
            pair.b.clear();
            pair.exchange().await;
            next_check = Instant::now() + Duration::from_secs(5);
        }
        if let Some(i) = workers.iter().position(|w| w.is_finished()) {
            if done.load(Ordering::Relaxed) < CYCLES {
                let w = workers.swap_remove(i);
                if let Err(e) = w.await {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "cycles too slow: {n} in {:?}",
            started.elapsed()
        );
        sleep(Duration::from_millis(20)).await;
    }
    for w in workers {
        w.await.expect("a cycle worker failed");
    }
    let elapsed = started.elapsed();
    let rss_10000 = server.rss_kib();
    let rss_2000 = rss_2000.unwrap();

    // Counts return to baseline: departures handled, transient sessions evicted.
    let deadline = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let rows = sessions(addr).await;
        if rows.len() == 1 && rows[0]["members"] == baseline[0]["members"] {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "store did not return to baseline: {} sessions, first {:?}",
            rows.len(),
            rows.first()
        );
        sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rows[0]["sessionId"], "calm");
    assert_eq!(rows[0]["members"], baseline[0]["members"], "{}", rows[0]);
    assert_eq!(rows[0]["publicKeys"], baseline[0]["publicKeys"], "{}", rows[0]);
    assert!(rows[0]["messages"].as_u64().unwrap() <= 100, "{}", rows[0]);
    let (health, _) = assert_health(addr).await;
    assert_eq!(
        health["activeSessions"], base_health["activeSessions"],
        "{health}"
    );
    let rss_settled = server.rss_kib();
    eprintln!(
        "cycles: {CYCLES} in {elapsed:?}; VmRSS start {rss_start} KiB, after 2000 {rss_2000} KiB, \
         after {CYCLES} {rss_10000} KiB, settled {rss_settled} KiB; samples (cycles, KiB) {samples:?}"
    );
    // RSS plateaus: between cycle 2000 and 10 000 it may grow only modestly.
    let allowed = rss_2000 + rss_2000 / 4 + 8 * 1024;
    assert!(
        rss_10000 <= allowed,
        "VmRSS grew from {rss_2000} KiB (2000 cycles) to {rss_10000} KiB ({CYCLES} cycles), over {allowed} KiB"
    );
    pair.assert_healthy().await;
}

#[tokio::test]
async fn sigterm_with_live_sessions_tells_every_client_and_exits_zero_within_5s() {
    let _serial = serial().await;
    let mut server = Spawned::start(
        "sigterm",
        &[
            ("HANDSHAKE_RATE_PER_IP", "0".into()),
            ("MAX_SOCKETS_PER_IP", "0".into()),
        ],
    )
    .await;
    let addr = server.addr;
    let pair = Pair::open(addr, "calm").await;
    let live = room(addr, "live", &["a", "b", "c"]).await;
    live[0].emit("send-message", message("live", "a", None, "before-sigterm"));
    recv_message(&live[1], "before-sigterm", WAIT)
        .await
        .expect("live session works");
    // A client in the middle of a flood of its own.
    for n in 0..50 {
        live[2].emit("send-message", message("live", "c", None, &format!("late-{n}")));
    }
    let t0 = Instant::now();
    server.signal("TERM");
    let mut clients: Vec<&Ws> = live.iter().collect();
    clients.push(&pair.a);
    clients.push(&pair.b);
    for (i, c) in clients.iter().enumerate() {
        assert!(
            c.wait_disconnected(Duration::from_secs(5)).await,
            "client {i} was not disconnected"
        );
        assert!(
            c.told_disconnect(),
            "client {i}'s connection was dropped without a disconnect packet: {:?}",
            c.raw_tail(3)
        );
    }
    let told = t0.elapsed();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        sleep(Duration::from_millis(20)).await;
    };
    let exited = t0.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; log:\n{}",
        server.log_text()
    );
    eprintln!("SIGTERM: 5 clients told within {told:?}, exit 0 after {exited:?}");
    // It stopped listening.
    assert!(http_get(addr, "/health").await.is_err());
}

// ---------------------------------------------------------------------------
// A panic inside a handler

// Needs the fault-injection hook: `cargo test --features test-hooks` (scripts/test.sh).
#[cfg(feature = "test-hooks")]
#[tokio::test]
async fn a_panic_inside_a_handler_neither_stops_the_server_nor_poisons_the_store() {
    let _serial = serial().await;
    let server = start(|c| {
        lenient(c);
        c.test_panic_event = Some("__panic".into());
    })
    .await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    let mut victim = room(addr, "victim", &["alice", "bob"]).await;
    let bob = victim.pop().unwrap();
    let alice = victim.pop().unwrap();
    for round in 0..3 {
        // Inside the session's lock (alice is bound), and with no session.
        alice.emit("__panic", json!({"sessionId": "victim"}));
        let stranger = Ws::connect(addr).await;
        stranger.emit("__panic", json!({}));
        // The panicking event gets no answer; the next one is served.
        let answers = alice
            .probe(&format!("a{round}"))
            .await
            .expect("alice's socket stopped after a panic");
        assert!(answers.is_empty(), "{answers:?}");
        stranger
            .probe(&format!("s{round}"))
            .await
            .expect("the stranger's socket stopped after a panic");
        // The same session keeps working, both ways.
        let text = format!("after-panic-{round}");
        alice.emit("send-message", message("victim", "alice", None, &text));
        recv_message(&bob, &text, PROMPT)
            .await
            .expect("alice -> bob after a panic");
        alice
            .recv("message-sent", PROMPT)
            .await
            .expect("alice's message-sent");
        bob.emit("send-message", message("victim", "bob", Some("alice"), &text));
        recv_message(&alice, &text, PROMPT)
            .await
            .expect("bob -> alice after a panic");
        bob.recv("message-sent", PROMPT)
            .await
            .expect("bob's message-sent");
        pair.assert_healthy().await;
    }
    // Someone new can still join it, and its lock is not poisoned for the sweep or the listing.
    let carol = Ws::connect(addr).await;
    join(&carol, "victim", "key", "carol", false).await;
    alice
        .recv_where("user-joined", WAIT, |d| d["userId"] == "carol")
        .await
        .expect("carol's join announced");
    alice.emit("leave-session", json!({"sessionId": "victim", "userId": "alice"}));
    bob.recv_where("user-left", WAIT, |d| d["userId"] == "alice")
        .await
        .expect("alice's leave announced");
    let row = sessions(addr)
        .await
        .into_iter()
        .find(|r| r["sessionId"] == "victim")
        .unwrap();
    assert_eq!(row["members"], 2, "{row}");
    assert_eq!(row["messages"], 6, "{row}");
    pair.assert_healthy().await;
    stop(server).await;
}

// ---------------------------------------------------------------------------
// Per-IP floods over HTTP

#[tokio::test]
async fn handshake_and_reservation_floods_get_429_with_retry_after() {
    let _serial = serial().await;
    // Documented defaults: 300 handshakes and 30 reservations per minute per IP.
    let server = start(|_| {}).await;
    let addr = server.addr();
    let pair = Pair::open(addr, "calm").await;
    let mut refused = None;
    for n in 0..400 {
        let (status, head, body) = http_get_with_head(addr, "/socket.io/?EIO=4&transport=polling")
            .await
            .unwrap();
        if status == 429 {
            refused = Some((n, head, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let (n, head, body) = refused.expect("400 handshakes in a row were all accepted");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    let err: Value = serde_json::from_str(&body).expect("429 body is JSON");
    assert!(err["error"].is_string(), "{err}");
    eprintln!("handshakes: refused after {n}");
    // The pair keeps talking over the connections it has.
    pair.exchange().await;

    let mut refused = None;
    for n in 0..100 {
        let (status, body) = reserve(addr, &format!("flood-{n}"), "key", "group").await;
        if status == 429 {
            refused = Some((n, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let (n, body) = refused.expect("100 reservations in a row were all accepted");
    let err: Value = serde_json::from_str(&body).expect("429 body is JSON");
    assert!(err["error"].is_string(), "{err}");
    eprintln!("reservations: refused after {n}");
    pair.exchange().await;
    assert_health(addr).await;
    stop(server).await;
}
