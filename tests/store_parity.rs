//! The two store backends are one interface: random sequences of store
//! operations, applied through [`Store`] to the embedded backend and to the
//! Redis backend (a real `redis-server` started here), must give the same
//! answer at every step — the same refusals, the same join kinds, history,
//! keys and routes. The in-memory store is checked against a model by
//! `store_properties.rs`; this test carries that check over to Redis, whose
//! logic lives in Lua scripts.
//!
//! Needs `redis-server` 7 or newer on the PATH (`scripts/test.sh` installs
//! Debian's package when it is missing).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use e2e_chat_server::domain::raw::{raw, raw_string};
use e2e_chat_server::domain::{ChatMode, ConnId, Message, PublicKeyEntry, SessionId, UserId, WrappedKeys};
use e2e_chat_server::store::redis::{connect, RedisSettings};
use e2e_chat_server::store::{JoinKind, JoinRequest, Joined, Limits, NewMessage, Route, Store};
use proptest::prelude::*;
use serde_json::{json, Value};

const SESSIONS: [&str; 3] = ["s0", "s1", "s2"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const CONNS: [&str; 5] = ["c0", "c1", "c2", "c3", "c4"];
/// Auth keys; in password mode the part after the first `:` is the password.
const KEYS: [&str; 4] = ["k0", "k1", "k0:pw0", "k0:pw1"];
const PASSWORDS: [&str; 3] = ["pw0", "pw1", ""];
const MODES: [ChatMode; 3] = [ChatMode::Group, ChatMode::Private, ChatMode::Password];
const NAMES: [&str; 3] = ["Alice", "Bob/🙂 \"q\"", ""];
const MESSAGE_IDS: [&str; 3] = ["m0", "m1", "m2"];

fn limits() -> Limits {
    Limits {
        max_sessions: 2,
        max_group_members: 3,
        max_history_messages: 4,
        max_history_bytes: 4_000,
        max_total_history_bytes: 1 << 30,
        idle_timeout: Duration::from_secs(600),
        member_timeout: Duration::from_secs(600),
        // Small: a history of more than a message or two comes in several
        // pages, as a large one would.
        history_page_bytes: 1_200,
        auth_failures_per_session_per_min: 2,
        password_kdf: e2e_chat_server::domain::secret::KdfCost::CHEAPEST,
    }
}

/// A `redis-server` on a free port. A watchdog shell stops it when this
/// test process ends (a static is never dropped).
struct RedisServer {
    port: u16,
}

// The watchdog is left running on purpose: it ends with this process.
#[allow(clippy::zombie_processes)]
fn redis_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let watchdog = format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no >/dev/null & r=$!; \
             while kill -0 {test} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.5; done; kill $r 2>/dev/null",
            test = std::process::id()
        );
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot run sh");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return RedisServer { port };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "redis-server did not start on port {port}: this test needs Redis 7 or newer \
             (apt-get install redis-server; scripts/test.sh does)"
        );
    })
}

/// The runtime every case runs on (one, so that the server outlives the cases).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// As [`limits`], with a budget for all history smaller than one session's
/// bound: `MAX_TOTAL_HISTORY_BYTES` decides what is dropped.
fn tight_budget() -> Limits {
    Limits {
        max_total_history_bytes: 2_400,
        ..limits()
    }
}

async fn both_backends() -> (Store, Store) {
    both_backends_with(limits()).await
}

async fn both_backends_with(limits: Limits) -> (Store, Store) {
    let settings = RedisSettings {
        url: format!("redis://127.0.0.1:{}", redis_server().port),
        tls_ca_file: None,
        prefix: format!("parity{}", uuid::Uuid::new_v4().simple()),
        node_id: "n1".into(),
        node_timeout: Duration::from_secs(15),
        store_timeout: Duration::from_secs(5),
        cleanup_interval: Duration::from_secs(60),
    };
    let (redis, _driver) = connect(&settings, limits.clone())
        .await
        .expect("connect to the test redis-server");
    (Store::memory(limits), Store::Redis(redis))
}

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        s: usize,
        key: usize,
        mode: usize,
    },
    Join {
        s: usize,
        u: usize,
        c: usize,
        creator: bool,
        key: Option<usize>,
        password: Option<usize>,
        mode: usize,
        pk: bool,
        name: Option<usize>,
    },
    Send {
        s: usize,
        u: usize,
        c: usize,
        to: Option<usize>,
        id: Option<usize>,
        original: bool,
    },
    SaveKey {
        s: usize,
        u: usize,
        c: usize,
        name: Option<usize>,
    },
    SetSessionKey {
        s: usize,
        u: usize,
        c: usize,
    },
    GetKeys {
        s: usize,
        u: usize,
        c: usize,
    },
    Typing {
        s: usize,
        u: usize,
        c: usize,
    },
    Download {
        s: usize,
        u: usize,
        c: usize,
        sender: usize,
    },
    Leave {
        s: usize,
        u: usize,
        c: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let suc = (0..SESSIONS.len(), 0..USERS.len(), 0..CONNS.len());
    prop_oneof![
        1 => (0..SESSIONS.len(), 0..KEYS.len(), 0..MODES.len()).prop_map(|(s, key, mode)| Op::Reserve { s, key, mode }),
        4 => (suc.clone(), any::<bool>(), proptest::option::of(0..KEYS.len()), proptest::option::of(0..PASSWORDS.len()), 0..MODES.len(), any::<bool>(), proptest::option::of(0..NAMES.len()))
            .prop_map(|((s, u, c), creator, key, password, mode, pk, name)| Op::Join { s, u, c, creator, key, password, mode, pk, name }),
        4 => (suc.clone(), proptest::option::of(0..USERS.len() + 1), proptest::option::of(0..MESSAGE_IDS.len()), any::<bool>())
            .prop_map(|((s, u, c), to, id, original)| Op::Send { s, u, c, to, id, original }),
        1 => (suc.clone(), proptest::option::of(0..NAMES.len())).prop_map(|((s, u, c), name)| Op::SaveKey { s, u, c, name }),
        1 => suc.clone().prop_map(|(s, u, c)| Op::SetSessionKey { s, u, c }),
        1 => suc.clone().prop_map(|(s, u, c)| Op::GetKeys { s, u, c }),
        1 => suc.clone().prop_map(|(s, u, c)| Op::Typing { s, u, c }),
        1 => (suc.clone(), 0..USERS.len()).prop_map(|((s, u, c), sender)| Op::Download { s, u, c, sender }),
        2 => suc.prop_map(|(s, u, c)| Op::Leave { s, u, c }),
    ]
}

/// Two live group sessions (`s0`: u0 on c0 and u2 on c2; `s1`: u1 on c1
/// and u2 on c3), then mostly messages from their members, joins that read
/// the history back, and now and then any operation: enough history for
/// `MAX_TOTAL_HISTORY_BYTES` to decide what is dropped.
fn busy_sessions() -> impl Strategy<Value = Vec<Op>> {
    let setup = busy_sessions_setup();
    let members = prop_oneof![Just((0, 0, 0)), Just((0, 2, 2)), Just((1, 1, 1)), Just((1, 2, 3))];
    let busy = prop_oneof![
        6 => (members.clone(), proptest::option::of(0..MESSAGE_IDS.len()), any::<bool>())
            .prop_map(|((s, u, c), id, original)| Op::Send { s, u, c, to: None, id, original }),
        2 => members.prop_map(|(s, u, c)| Op::Join { s, u, c, creator: false, key: Some(0), password: None, mode: 0, pk: false, name: None }),
        1 => op(),
    ];
    proptest::collection::vec(busy, 1..40).prop_map(move |ops| setup.iter().cloned().chain(ops).collect())
}

/// The two sessions of [`busy_sessions`], reserved and joined.
fn busy_sessions_setup() -> Vec<Op> {
    let mut setup = Vec::new();
    for (s, creator, creator_conn, conn) in [(0, 0, 0, 2), (1, 1, 1, 3)] {
        setup.push(Op::Reserve { s, key: 0, mode: 0 });
        for (u, c, is_creator) in [(creator, creator_conn, true), (2, conn, false)] {
            setup.push(Op::Join {
                s,
                u,
                c,
                creator: is_creator,
                key: Some(0),
                password: None,
                mode: 0,
                pk: true,
                name: None,
            });
        }
    }
    setup
}

fn sid(i: usize) -> SessionId {
    SessionId::parse(SESSIONS[i]).unwrap()
}

fn uid(i: usize) -> UserId {
    UserId::parse(USERS[i]).unwrap()
}

fn name(i: Option<usize>) -> Option<Arc<str>> {
    i.map(|i| NAMES[i]).filter(|n| !n.is_empty()).map(Into::into)
}

/// A message as both backends must give it back; ids the store generated
/// are random, so only their presence is compared.
fn message(m: &Message) -> Value {
    let id = if MESSAGE_IDS.contains(&&*m.id) {
        m.id.to_string()
    } else {
        "<generated>".into()
    };
    json!({
        "id": id, "from": m.from, "to": m.to, "encrypted": m.encrypted, "timestamp": m.timestamp,
        "type": m.kind, "senderDisplayName": m.sender_display_name, "originalContent": m.original_content,
    })
}

fn keys(keys: &[PublicKeyEntry]) -> Value {
    serde_json::to_value(keys).unwrap()
}

/// A join's answer, with the rest of the history read page by page as the
/// replay does.
async fn joined(store: &Store, j: &Joined, session: &SessionId, user: &UserId, conn: &ConnId) -> Value {
    let kind = match &j.kind {
        JoinKind::New => "new".to_owned(),
        JoinKind::Repeat => "repeat".to_owned(),
        JoinKind::Rejoined { previous } => format!("rejoined from {previous}"),
    };
    let mut pages = vec![j.history.iter().map(|m| message(m)).collect::<Vec<_>>()];
    let mut cursor = j.more_history.clone();
    while let Some(at) = cursor {
        let page = store.history_page(session, user, conn, &at).await.unwrap();
        pages.push(page.messages.iter().map(|m| message(m)).collect());
        cursor = page.next;
    }
    json!({
        "kind": kind, "mode": j.mode, "displayName": j.display_name, "history": pages, "created": j.created,
        "wrapped": j.encrypted_session_key, "keys": keys(&j.public_keys), "timestamp": j.timestamp,
    })
}

fn route(r: &Route) -> Value {
    match r {
        Route::Others => json!("others"),
        Route::Conn(c) => json!(c.as_str()),
    }
}

/// One operation's answer, in a form both backends must agree on.
async fn apply(store: &Store, op: &Op, now: u64) -> Value {
    let conn = |c: usize| ConnId::new(CONNS[c]);
    let err = |code: &str| json!({ "error": code });
    match op.clone() {
        Op::Reserve { s, key, mode } => match store.reserve(sid(s), KEYS[key], MODES[mode]).await {
            Ok(()) => json!("reserved"),
            Err(e) => err(&format!("{e:?}")),
        },
        Op::Join {
            s,
            u,
            c,
            creator,
            key,
            password,
            mode,
            pk,
            name: n,
        } => {
            let req = JoinRequest {
                session: sid(s),
                user: uid(u),
                display_name: name(n),
                public_key: pk.then(|| raw_string(&format!("pk-{}-{now}", USERS[u]))),
                is_creator: creator,
                offered_key: key.map(|k| KEYS[k].to_owned()),
                offered_password: password.map(|p| PASSWORDS[p].to_owned()),
                mode: MODES[mode],
                may_create: true,
                replacing: None,
            };
            match store.join(req, &conn(c), now).await {
                Ok(j) => joined(store, &j, &sid(s), &uid(u), &conn(c)).await,
                Err(e) => err(&format!("{} {e}", e.code())),
            }
        }
        Op::Send {
            s,
            u,
            c,
            to,
            id,
            original,
        } => {
            let out = NewMessage {
                to: to.map(|t| USERS.get(t).copied().unwrap_or("all").into()),
                encrypted: raw(
                    &json!({ "c": format!("ciphertext {now} {}", "x".repeat(now as usize % 700)) })
                        .to_string(),
                ),
                original_content: original.then(|| raw_string("plain")),
                kind: None,
                client_message_id: id.map(|i| MESSAGE_IDS[i].into()),
            };
            match store
                .send_message(&sid(s), &uid(u), &conn(c), out, now, original)
                .await
            {
                Ok(sent) => {
                    json!({ "message": message(&sent.message), "new": sent.is_new, "route": route(&sent.route) })
                }
                Err(e) => err(&format!("{} {e}", e.code())),
            }
        }
        Op::SaveKey { s, u, c, name: n } => {
            match store
                .save_public_key(
                    &sid(s),
                    &uid(u),
                    &conn(c),
                    raw_string(&format!("saved-{now}")),
                    name(n),
                )
                .await
            {
                Ok(k) => keys(&k),
                Err(e) => err(&format!("{} {e}", e.code())),
            }
        }
        Op::SetSessionKey { s, u, c } => {
            let wrapped = json!({ USERS[u]: format!("wrapped-{now}") }).to_string();
            let wrapped = WrappedKeys::parse(raw(&wrapped)).unwrap();
            match store.set_session_key(&sid(s), &uid(u), &conn(c), wrapped).await {
                Ok(w) => json!(w),
                Err(e) => err(&format!("{} {e}", e.code())),
            }
        }
        Op::GetKeys { s, u, c } => match store.public_keys_for(&sid(s), &uid(u), &conn(c)).await {
            Ok(k) => keys(&k),
            Err(e) => err(e.code()),
        },
        Op::Typing { s, u, c } => match store.typing(&sid(s), &uid(u), &conn(c)).await {
            Ok(n) => json!({ "typing": n }),
            Err(e) => err(e.code()),
        },
        Op::Download { s, u, c, sender } => {
            match store
                .download_target(&sid(s), &uid(u), &conn(c), USERS[sender])
                .await
            {
                Ok(target) => json!({ "target": target.as_str() }),
                Err(e) => err(e.code()),
            }
        }
        // A leave or disconnect: `None` is the backends' NOT_IN_SESSION.
        Op::Leave { s, u, c } => match store.depart(&sid(s), &uid(u), &conn(c)).await {
            Ok(Some(left)) => json!({ "left": left.display_name, "keys": keys(&left.public_keys) }),
            Ok(None) => err("NOT_IN_SESSION"),
            Err(_) => err("STORE_UNAVAILABLE"),
        },
    }
}

async fn run(ops: Vec<Op>, limits: Limits) -> Result<(), TestCaseError> {
    let (memory, redis) = both_backends_with(limits).await;
    for (step, op) in ops.iter().enumerate() {
        let now = 1_700_000_000_000 + step as u64;
        let expected = apply(&memory, op, now).await;
        let got = apply(&redis, op, now).await;
        prop_assert_eq!(
            &got,
            &expected,
            "step {} {:?}: Redis differs from memory",
            step,
            op
        );
    }
    let (m, r) = (
        memory.session_count().await.unwrap(),
        redis.session_count().await.unwrap(),
    );
    prop_assert_eq!(r, m, "session counts differ");
    let (m, r) = (
        memory.stats().await.unwrap().history_bytes,
        redis.stats().await.unwrap().history_bytes,
    );
    prop_assert_eq!(r, m, "history bytes of all sessions differ");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn redis_backend_answers_every_operation_as_the_embedded_one(ops in proptest::collection::vec(op(), 1..60)) {
        runtime().block_on(run(ops, limits()))?;
    }

    #[test]
    fn redis_backend_keeps_the_global_history_budget_as_the_embedded_one(ops in busy_sessions()) {
        runtime().block_on(run(ops, tight_budget()))?;
    }
}

/// Many joins at once for the last seat of a private session: exactly one
/// wins, whatever the interleaving (each join is one script in Redis).
#[test]
fn concurrent_joins_for_the_last_seat_admit_exactly_one() {
    runtime().block_on(async {
        let (_, store) = both_backends().await;
        store.reserve(sid(0), "k0", ChatMode::Private).await.unwrap();
        let creator = JoinRequest {
            session: sid(0),
            user: uid(0),
            display_name: None,
            public_key: None,
            is_creator: true,
            offered_key: Some("k0".into()),
            offered_password: None,
            mode: ChatMode::Private,
            may_create: true,
            replacing: None,
        };
        store.join(creator, &ConnId::new("creator"), 1).await.unwrap();
        let joins = (0..40).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let req = JoinRequest {
                    session: sid(0),
                    user: UserId::parse(&format!("joiner{i}")).unwrap(),
                    display_name: None,
                    public_key: None,
                    is_creator: false,
                    offered_key: Some("k0".into()),
                    offered_password: None,
                    mode: ChatMode::Private,
                    may_create: false,
                    replacing: None,
                };
                store
                    .join(req, &ConnId::new(format!("j{i}")), 2)
                    .await
                    .map_err(|e| e.code())
            })
        });
        let results = futures_util::future::join_all(joins).await;
        let admitted = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        let full = results
            .iter()
            .filter(|r| matches!(r, Ok(Err("SESSION_FULL"))))
            .count();
        assert_eq!((admitted, full), (1, 39), "{results:?}");
    });
}

/// A history is read page by page after the join (`HISTORY_PAGE`), and
/// may be trimmed at its head meanwhile: a page whose previous entry is gone
/// starts at the head; pages hold up to the byte bound, at least one
/// message; only the member's current socket gets pages.
#[test]
fn history_pages_go_on_from_the_head_when_it_was_trimmed() {
    use e2e_chat_server::store::redis::scripts::{HISTORY_PAGE, PRELUDE};
    runtime().block_on(async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis_server().port)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let prefix = format!("page{}", uuid::Uuid::new_v4().simple());
        let key = |suffix: &str| format!("{prefix}:s:{{s}}{suffix}");
        for i in 0..6 {
            let () = redis::cmd("RPUSH")
                .arg(key(":h"))
                .arg(format!("m{i}"))
                .query_async(&mut conn)
                .await
                .unwrap();
            let () = redis::cmd("RPUSH")
                .arg(key(":hw"))
                .arg(format!("10|m{i}"))
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let () = redis::cmd("HSET")
            .arg(key(":m"))
            .arg("u")
            .arg(r#"{"c":"c1"}"#)
            .query_async(&mut conn)
            .await
            .unwrap();
        let script = redis::Script::new(&format!("{PRELUDE}{HISTORY_PAGE}"));
        let mut conn2 = conn.clone();
        let script_prefix = prefix.clone();
        let mut page =
            async move |socket: &str, after: &str, max_bytes: u64| -> (String, Vec<String>, String, String) {
                let answer: (String, Vec<String>, String, String) = script
                    .prepare_invoke()
                    .arg(&script_prefix)
                    .arg(0)
                    .arg(0)
                    .arg(0)
                    .arg(0)
                    .arg("s")
                    .arg("u")
                    .arg(socket)
                    .arg(after)
                    .arg(max_bytes)
                    .invoke_async(&mut conn2)
                    .await
                    .unwrap_or_else(|_| ("NOT_IN_SESSION".into(), Vec::new(), String::new(), String::new()));
                answer
            };
        let ok = |messages: &[&str], last: &str, more: &str| {
            (
                "ok".to_owned(),
                messages.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                last.to_owned(),
                more.to_owned(),
            )
        };
        assert_eq!(page("c1", "", 25).await, ok(&["m0", "m1"], "10|m1", "1"));
        assert_eq!(page("c1", "10|m1", 25).await, ok(&["m2", "m3"], "10|m3", "1"));
        assert_eq!(
            page("c1", "10|m3", 5).await,
            ok(&["m4"], "10|m4", "1"),
            "one message at least"
        );
        assert_eq!(page("c1", "10|m4", 100).await, ok(&["m5"], "10|m5", "0"));
        assert_eq!(
            page("c2", "", 100).await.0,
            "NOT_IN_SESSION",
            "not the member's socket"
        );
        // The head is trimmed past m3: the page after m1 starts at what is left.
        for suffix in [":h", ":hw"] {
            let () = redis::cmd("LTRIM")
                .arg(key(suffix))
                .arg(4)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        assert_eq!(page("c1", "10|m1", 100).await, ok(&["m4", "m5"], "10|m5", "0"));
        assert_eq!(page("c1", "10|m5", 100).await, ok(&[], "", "0"));
    });
}

/// Evicting a session takes its history out of the global budget.
#[test]
fn evicted_sessions_leave_the_global_history_budget() {
    runtime().block_on(async {
        let limits = Limits {
            idle_timeout: Duration::from_millis(1),
            member_timeout: Duration::from_millis(1),
            ..tight_budget()
        };
        let (_, store) = both_backends_with(limits).await;
        let setup = busy_sessions_setup();
        for (step, op) in setup.iter().enumerate() {
            apply(&store, op, 1_700_000_000_000 + step as u64).await;
        }
        for (step, (s, u, c)) in [(0, 0, 0), (1, 1, 1), (1, 2, 3)].into_iter().enumerate() {
            let op = Op::Send {
                s,
                u,
                c,
                to: None,
                id: None,
                original: false,
            };
            let sent = apply(&store, &op, 1_700_000_000_100 + step as u64).await;
            assert_eq!(sent["new"], true, "{sent}");
        }
        assert!(store.stats().await.unwrap().history_bytes > 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let swept = store.sweep().await.unwrap();
        assert!(swept.evicted > 0);
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.sessions, stats.history_bytes), (0, 0));
    });
}

/// docs/PROTOCOL.md "STORE_FULL": wrapped keys that could not fit in
/// `MAX_TOTAL_HISTORY_BYTES` even with every message evicted are refused,
/// on both stores, and the budget is left as it was for keys that fit.
#[test]
fn wrapped_keys_larger_than_the_whole_budget_are_refused_store_full() {
    runtime().block_on(async {
        let (memory, redis) = both_backends_with(tight_budget()).await;
        for store in [memory, redis] {
            for (step, op) in busy_sessions_setup().iter().enumerate() {
                apply(&store, op, 1_700_000_000_000 + step as u64).await;
            }
            let set = |value: String| {
                let wrapped = json!({ USERS[2]: value }).to_string();
                WrappedKeys::parse(raw(&wrapped)).unwrap()
            };
            let creator = ConnId::new(CONNS[0]);
            let too_large = set("w".repeat(3_000));
            let refused = store
                .set_session_key(&sid(0), &uid(0), &creator, too_large)
                .await
                .expect_err("3 000 bytes of wrapped keys in a budget of 2 400");
            assert_eq!(refused.code(), "STORE_FULL", "{refused}");
            let fits = set("w".repeat(100));
            store
                .set_session_key(&sid(0), &uid(0), &creator, fits)
                .await
                .expect("wrapped keys that fit are taken after a refusal");
        }
    });
}
