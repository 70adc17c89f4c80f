//! Shared set-up of the fuzz targets: a small store with two sessions and a
//! few members, and the checks every target runs after each call.

use std::time::Duration;

use e2e_chat_server::domain::{ChatMode, ConnId, SessionId, UserId};
use e2e_chat_server::store::{JoinRequest, Limits, MemoryStore as Store};

/// Small bounds, so that the fuzzer reaches them quickly.
pub use e2e_chat_server::store::password::new_password;

pub fn limits() -> Limits {
    Limits {
        max_sessions: 4,
        max_group_members: 3,
        max_history_messages: 6,
        max_history_bytes: 4 * 1024,
        max_total_history_bytes: 8 * 1024,
        idle_timeout: Duration::from_secs(10),
        member_timeout: Duration::from_secs(60),
        history_page_bytes: 2 * 1024,
        auth_failures_per_session_per_min: 0,
        password_kdf: e2e_chat_server::domain::secret::KdfCost::CHEAPEST,
    }
}

pub fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("valid session id")
}

pub fn uid(s: &str) -> UserId {
    UserId::parse(s).expect("valid user id")
}

pub fn conn(s: &str) -> ConnId {
    ConnId::new(s)
}

/// A store holding `room` (group, creator `alice` on `c-alice`, member `bob`
/// on `c-bob`) and `pair` (password mode, key `k:pw`, creator `alice` on
/// `c-alice2`).
pub fn seeded() -> Store {
    let store = Store::new(limits());
    let join = |session: &str, user: &str, c: &str, creator: bool, key: &str, mode: ChatMode| {
        let req = JoinRequest {
            session: sid(session),
            user: uid(user),
            display_name: Some(format!("{user} name").into()),
            public_key: Some(e2e_chat_server::domain::raw::raw_string(&format!("pk-{user}"))),
            is_creator: creator,
            offered_key: Some(key.into()),
            offered_password: None,
            mode,
            may_create: true,
            replacing: None,
        };
        let auth = store.auth_for(&req);
        store.join(req, &auth, &conn(c), 1).expect("seed join");
    };
    join("room", "alice", "c-alice", true, "key", ChatMode::Group);
    join("room", "bob", "c-bob", false, "key", ChatMode::Group);
    store
        .reserve(
            sid("pair"),
            "k:pw",
            ChatMode::Password,
            new_password(ChatMode::Password, "k:pw", limits().password_kdf),
        )
        .expect("seed reserve");
    join("pair", "alice", "c-alice2", true, "k:pw", ChatMode::Password);
    check(&store);
    store
}

/// Panics (a fuzz finding) when an invariant of the store is broken.
pub fn check(store: &Store) {
    if let Err(e) = store.check_invariants() {
        panic!("store invariant broken: {e}");
    }
    for row in store.summaries() {
        let json = serde_json::to_value(&row).expect("summary serializes");
        let members = json["members"].as_u64().unwrap();
        assert!(members <= 3, "members over every capacity: {json}");
    }
}

/// The session part of a wire `sessionId`, as every handler normalises it.
pub fn session_of(raw: &str) -> Option<SessionId> {
    SessionId::parse(e2e_chat_server::domain::ids::SessionRef::split(raw).id)
}

/// The socket a fuzz input speaks from: which of the seeded members it is
/// bound as, chosen by the first byte so that bound and unbound sockets are both tried.
pub fn speaker(selector: u8) -> (UserId, ConnId) {
    match selector % 4 {
        0 => (uid("alice"), conn("c-alice")),
        1 => (uid("bob"), conn("c-bob")),
        2 => (uid("alice"), conn("c-alice2")),
        _ => (uid("mallory"), conn("c-mallory")),
    }
}
