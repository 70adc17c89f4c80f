//! Property test of the session store (issue 3, "Fuzzing"): random
//! sequences of store operations, with `Store::check_invariants` after every
//! step and a reference model of membership, binding, keys, session
//! lifetime and the idle sweep (paused, advanced time) that every result is
//! compared with.
//!
//! The model follows docs/PROTOCOL.md sections 4 and 5 and, for what happens
//! around a store call, the socket worker: a socket holds one binding
//! (joining as someone else leaves the previous one) and a socket's
//! disconnect is a `disconnect` with that binding.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use e2e_chat_server::domain::raw::{raw, raw_string};
use e2e_chat_server::domain::secret::KdfCost;
use e2e_chat_server::domain::{ChatMode, ConnId, EventError, JoinError, SessionId, UserId, WrappedKeys};
use e2e_chat_server::store::password::new_password;
use e2e_chat_server::store::MemoryStore as Store;
use e2e_chat_server::store::{JoinKind, JoinRequest, Limits, NewMessage, Route};
use proptest::prelude::*;
use serde_json::json;

const SESSIONS: [&str; 4] = ["s0", "s1", "s2", "s3"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const CONNS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];
/// Auth keys; in password mode the part after the first `:` is the password.
const KEYS: [&str; 4] = ["k0", "k1", "k0:pw0", "k0:pw1"];
const PASSWORDS: [&str; 3] = ["pw0", "pw1", ""];
const MODES: [ChatMode; 3] = [ChatMode::Group, ChatMode::Private, ChatMode::Password];

const MAX_SESSIONS: usize = 3;
const MAX_GROUP: usize = 3;
const MAX_HISTORY: usize = 4;
const IDLE_SECS: u64 = 10;
const MEMBER_SECS: u64 = 30;

fn limits() -> Limits {
    Limits {
        max_sessions: MAX_SESSIONS,
        max_group_members: MAX_GROUP,
        max_history_messages: MAX_HISTORY,
        max_history_bytes: 2_000,
        max_total_history_bytes: 4_000,
        idle_timeout: Duration::from_secs(IDLE_SECS),
        member_timeout: Duration::from_secs(MEMBER_SECS),
        history_page_bytes: 1 << 20,
        auth_failures_per_session_per_min: 0,
        password_kdf: KdfCost::CHEAPEST,
    }
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
    },
    Send {
        s: usize,
        u: usize,
        c: usize,
        to: Option<usize>,
        id: Option<usize>,
        size: usize,
        original: bool,
    },
    SaveKey {
        s: usize,
        u: usize,
        c: usize,
    },
    SetSessionKey {
        s: usize,
        u: usize,
        c: usize,
    },
    PublicKeys {
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
    /// The socket goes away: its worker calls `disconnect` with its binding.
    Disconnect {
        c: usize,
    },
    /// Time passes, then the sweep runs.
    Sweep {
        secs: u64,
    },
    /// Shutdown: every member of every session is removed at once.
    RemoveAllMembers,
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SESSIONS.len();
    let u = 0..USERS.len();
    let c = 0..CONNS.len();
    prop_oneof![
        2 => (s.clone(), 0..KEYS.len(), 0..MODES.len()).prop_map(|(s, key, mode)| Op::Reserve { s, key, mode }),
        6 => (
            s.clone(),
            u.clone(),
            c.clone(),
            any::<bool>(),
            proptest::option::weighted(0.9, 0..KEYS.len()),
            proptest::option::of(0..PASSWORDS.len()),
            0..MODES.len(),
            any::<bool>()
        )
            .prop_map(|(s, u, c, creator, key, password, mode, pk)| Op::Join { s, u, c, creator, key, password, mode, pk }),
        5 => (
            s.clone(),
            u.clone(),
            c.clone(),
            proptest::option::of(0..USERS.len() + 2),
            proptest::option::of(0..6usize),
            0..1_500usize,
            any::<bool>()
        )
            .prop_map(|(s, u, c, to, id, size, original)| Op::Send { s, u, c, to, id, size, original }),
        1 => (s.clone(), u.clone(), c.clone()).prop_map(|(s, u, c)| Op::SaveKey { s, u, c }),
        1 => (s.clone(), u.clone(), c.clone()).prop_map(|(s, u, c)| Op::SetSessionKey { s, u, c }),
        1 => (s.clone(), u.clone(), c.clone()).prop_map(|(s, u, c)| Op::PublicKeys { s, u, c }),
        1 => (s.clone(), u.clone(), c.clone()).prop_map(|(s, u, c)| Op::Typing { s, u, c }),
        1 => (s.clone(), u.clone(), c.clone(), u.clone()).prop_map(|(s, u, c, sender)| Op::Download { s, u, c, sender }),
        2 => (s, u, c.clone()).prop_map(|(s, u, c)| Op::Leave { s, u, c }),
        2 => c.prop_map(|c| Op::Disconnect { c }),
        1 => prop_oneof![Just(0u64), 1..12u64, 25..35u64].prop_map(|secs| Op::Sweep { secs }),
        // Rare: it empties everything.
        1 => (0..8u8).prop_map(|n| if n == 0 { Op::RemoveAllMembers } else { Op::Sweep { secs: 0 } }),
    ]
}

// ---------------------------------------------------------------------------
// The reference model

#[derive(Debug, Clone)]
struct MSession {
    mode: ChatMode,
    key: String,
    password: Option<String>,
    reserved: bool,
    creator: Option<String>,
    /// user → current socket
    members: BTreeMap<String, String>,
    /// users with a stored public key
    keys: BTreeSet<String>,
    /// virtual seconds of the last accepted event
    last_activity: u64,
}

#[derive(Default)]
struct Model {
    sessions: BTreeMap<String, MSession>,
    /// socket → the (session, user) its worker is bound to
    bindings: HashMap<String, (String, String)>,
    now: u64,
}

impl Model {
    fn is_member(&self, s: &str, u: &str, c: &str) -> bool {
        self.sessions
            .get(s)
            .is_some_and(|m| m.members.get(u).is_some_and(|conn| conn == c))
    }

    /// What `with_member` does on success: counts as activity.
    fn touch(&mut self, s: &str) {
        let now = self.now;
        if let Some(m) = self.sessions.get_mut(s) {
            m.last_activity = now;
        }
    }

    /// The contract's join, steps 2–7. Ok(kind) with kind as the store names it.
    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        s: &str,
        u: &str,
        c: &str,
        creator: bool,
        key: Option<&str>,
        password: Option<&str>,
        mode: ChatMode,
        pk: bool,
        replace: Option<&str>,
    ) -> Result<JoinKind, &'static str> {
        let now = self.now;
        if !self.sessions.contains_key(s) {
            if !creator {
                return Err("SESSION_NOT_FOUND");
            }
            let Some(key) = key.filter(|k| !k.is_empty()) else {
                return Err("INVALID_KEY");
            };
            if self.sessions.len() >= MAX_SESSIONS {
                return Err("SESSION_LIMIT");
            }
            self.sessions.insert(s.into(), new_session(mode, key, now));
        }
        let session = self.sessions.get_mut(s).unwrap();
        if creator {
            if key.unwrap_or_default() != session.key {
                return Err("INVALID_KEY");
            }
        } else {
            match (&session.password, password) {
                (Some(pw), Some(offered)) => {
                    if pw != offered {
                        return Err("INVALID_PASSWORD");
                    }
                }
                _ => {
                    if key.unwrap_or_default() != session.key {
                        return Err("INVALID_KEY");
                    }
                }
            }
            if session.reserved {
                return Err("SESSION_NOT_ACTIVE");
            }
        }
        // A seat held by another socket is taken only from the one named gone.
        if session
            .members
            .get(u)
            .is_some_and(|held| held != c && replace != Some(held.as_str()))
        {
            return Err("ALREADY_CONNECTED");
        }
        if creator && session.creator.as_deref().is_none_or(|cr| cr == u) {
            session.reserved = false;
            session.creator = Some(u.into());
        }
        let capacity = if session.mode == ChatMode::Group {
            MAX_GROUP
        } else {
            2
        };
        let kind = match session.members.get(u) {
            Some(conn) if conn == c => JoinKind::Repeat,
            Some(conn) => JoinKind::Rejoined {
                previous: ConnId::new(conn.as_str()),
            },
            None if session.members.len() >= capacity => return Err("SESSION_FULL"),
            None => JoinKind::New,
        };
        session.members.insert(u.into(), c.into());
        if pk {
            session.keys.insert(u.into());
        }
        session.last_activity = now;
        Ok(kind)
    }

    fn remove_member(&mut self, s: &str, u: &str) {
        let now = self.now;
        let m = self.sessions.get_mut(s).unwrap();
        m.members.remove(u);
        m.keys.remove(u);
        m.last_activity = now;
    }

    /// The sweep: sessions idle past their timeout go; returns those that had members.
    fn sweep(&mut self) -> BTreeMap<String, BTreeSet<String>> {
        let now = self.now;
        let mut expired = BTreeMap::new();
        self.sessions.retain(|id, m| {
            let timeout = if m.members.is_empty() {
                IDLE_SECS
            } else {
                MEMBER_SECS
            };
            if now - m.last_activity < timeout {
                return true;
            }
            if !m.members.is_empty() {
                expired.insert(id.clone(), m.members.values().cloned().collect());
            }
            false
        });
        expired
    }
}

fn new_session(mode: ChatMode, key: &str, now: u64) -> MSession {
    MSession {
        mode,
        key: key.into(),
        password: match mode {
            ChatMode::Password => key.split_once(':').map(|(_, pw)| pw.to_string()),
            _ => None,
        },
        reserved: true,
        creator: None,
        members: BTreeMap::new(),
        keys: BTreeSet::new(),
        last_activity: now,
    }
}

fn join_code(e: &JoinError) -> &'static str {
    e.code()
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn uid(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

// ---------------------------------------------------------------------------
// One run

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _entered = rt.enter();
    let store = Store::new(limits());
    let mut model = Model::default();
    let mut stamp = 0u64;
    for (step, op) in ops.iter().enumerate() {
        stamp += 1;
        let at = || format!("step {step} {op:?}");
        match *op {
            Op::Reserve { s, key, mode } => {
                let (s, key, mode) = (SESSIONS[s], KEYS[key], MODES[mode]);
                let password = new_password(mode, key, KdfCost::CHEAPEST);
                let result = store.reserve(sid(s), key, mode, password);
                let expected = if model.sessions.contains_key(s) {
                    Err("exists")
                } else if model.sessions.len() >= MAX_SESSIONS {
                    Err("limit")
                } else {
                    model.sessions.insert(s.into(), new_session(mode, key, model.now));
                    Ok(())
                };
                prop_assert_eq!(
                    result.is_ok(),
                    expected.is_ok(),
                    "{}: {:?} vs {:?}",
                    at(),
                    result,
                    expected
                );
            }
            Op::Join {
                s,
                u,
                c,
                creator,
                key,
                password,
                mode,
                pk,
            } => {
                let (s, u, c) = (SESSIONS[s], USERS[u], CONNS[c]);
                let key = key.map(|k| KEYS[k]);
                let password = password.map(|p| PASSWORDS[p]);
                let req = JoinRequest {
                    session: sid(s),
                    user: uid(u),
                    display_name: Some(format!("{u}-name").into()),
                    public_key: pk.then(|| raw_string(&format!("pk-{u}-{stamp}"))),
                    is_creator: creator,
                    offered_key: key.map(str::to_owned),
                    offered_password: password.map(str::to_owned),
                    mode: MODES[mode],
                    may_create: true,
                    replacing: None,
                };
                // As the worker does once it found the holder gone (two
                // joins in three), or not (the third: refused).
                let holder = model.sessions.get(s).and_then(|m| m.members.get(u)).cloned();
                let replace = holder.filter(|h| h != c && !stamp.is_multiple_of(3));
                let req = JoinRequest {
                    replacing: replace.as_deref().map(ConnId::new),
                    ..req
                };
                let auth = store.auth_for(&req);
                let result = store.join(req, &auth, &ConnId::new(c), stamp);
                let expected = model.join(
                    s,
                    u,
                    c,
                    creator,
                    key,
                    password,
                    MODES[mode],
                    pk,
                    replace.as_deref(),
                );
                match (&result, &expected) {
                    (Ok(joined), Ok(kind)) => {
                        prop_assert_eq!(&joined.kind, kind, "{}", at());
                        let m = &model.sessions[s];
                        prop_assert_eq!(joined.mode, m.mode, "{}", at());
                        prop_assert!(joined.history.len() <= MAX_HISTORY, "{}", at());
                        prop_assert!(
                            joined.history.iter().all(|msg| msg.visible_to(&uid(u))),
                            "{}: history leaks",
                            at()
                        );
                        let owners: BTreeSet<String> =
                            joined.public_keys.iter().map(|k| k.user_id.to_string()).collect();
                        prop_assert_eq!(&owners, &m.keys, "{}", at());
                        if m.mode != ChatMode::Group {
                            prop_assert!(m.members.len() <= 2);
                        }
                        // The worker: one binding per socket.
                        let binding = (s.to_string(), u.to_string());
                        if let Some(prev) = model.bindings.insert(c.into(), binding.clone()) {
                            if prev != binding {
                                let left = store.leave(&sid(&prev.0), &uid(&prev.1), &ConnId::new(c));
                                let was_member = model.is_member(&prev.0, &prev.1, c);
                                prop_assert_eq!(
                                    left.is_ok(),
                                    was_member,
                                    "{}: leaving the previous binding",
                                    at()
                                );
                                if was_member {
                                    model.remove_member(&prev.0, &prev.1);
                                }
                            }
                        }
                    }
                    (Err(e), Err(code)) => prop_assert_eq!(join_code(e), *code, "{}", at()),
                    _ => prop_assert!(
                        false,
                        "{}: store {:?} but model {:?}",
                        at(),
                        result.map(|j| j.kind),
                        expected
                    ),
                }
            }
            Op::Send {
                s,
                u,
                c,
                to,
                id,
                size,
                original,
            } => {
                let (s, u, c) = (SESSIONS[s], USERS[u], CONNS[c]);
                let to = to.map(|t| match t {
                    t if t < USERS.len() => USERS[t].to_string(),
                    t if t == USERS.len() => "all".to_string(),
                    _ => "nobody".to_string(),
                });
                let out = NewMessage {
                    to: to.clone().map(Into::into),
                    encrypted: raw_string(&"e".repeat(size)),
                    original_content: original.then(|| raw_string("plain")),
                    kind: None,
                    client_message_id: id.map(|i| format!("m{i}").into()),
                };
                let result = store.send_message(&sid(s), &uid(u), &ConnId::new(c), out, stamp, original);
                let bound = model.is_member(s, u, c);
                let expected_route = match to.as_deref() {
                    _ if !bound => Err(EventError::NotInSession),
                    None | Some("all") => Ok(None),
                    Some(to) => match model.sessions[s].members.get(to) {
                        Some(conn) => Ok(Some(conn.clone())),
                        None => Err(EventError::UnknownRecipient),
                    },
                };
                match (&result, &expected_route) {
                    (Ok(sent), Ok(route)) => {
                        let got = match &sent.route {
                            Route::Others => None,
                            Route::Conn(conn) => Some(conn.as_str().to_string()),
                        };
                        prop_assert_eq!(&got, route, "{}", at());
                        prop_assert_eq!(sent.message.from.as_str(), u);
                        if let Some(i) = id {
                            let want = format!("m{i}");
                            prop_assert_eq!(&*sent.message.id, want.as_str());
                        }
                        model.touch(s);
                    }
                    (Err(e), Err(expected)) => prop_assert_eq!(e, expected, "{}", at()),
                    _ => prop_assert!(
                        false,
                        "{}: store {:?} but model {:?}",
                        at(),
                        result.map(|r| r.route),
                        expected_route
                    ),
                }
            }
            Op::SaveKey { s, u, c } => {
                let (s, u, c) = (SESSIONS[s], USERS[u], CONNS[c]);
                let result = store.save_public_key(
                    &sid(s),
                    &uid(u),
                    &ConnId::new(c),
                    raw_string(&format!("pk{stamp}")),
                    None,
                );
                let bound = model.is_member(s, u, c);
                prop_assert_eq!(result.is_ok(), bound, "{}", at());
                if let Ok(keys) = result {
                    let m = model.sessions.get_mut(s).unwrap();
                    m.keys.insert(u.into());
                    let owners: BTreeSet<String> = keys.iter().map(|k| k.user_id.to_string()).collect();
                    prop_assert_eq!(&owners, &m.keys, "{}", at());
                    model.touch(s);
                }
            }
            Op::SetSessionKey { s, u, c } => {
                let (s, u, c) = (SESSIONS[s], USERS[u], CONNS[c]);
                let keys: serde_json::Map<String, serde_json::Value> = USERS
                    .iter()
                    .map(|u| (u.to_string(), json!(format!("w{stamp}"))))
                    .collect();
                let keys = WrappedKeys::parse(raw(&json!(keys).to_string())).unwrap();
                let result = store.set_session_key(&sid(s), &uid(u), &ConnId::new(c), keys);
                let expected = if !model.is_member(s, u, c) {
                    Err("NOT_IN_SESSION")
                } else {
                    let m = &model.sessions[s];
                    if m.mode != ChatMode::Group || m.creator.as_deref() != Some(u) {
                        Err("NOT_ALLOWED")
                    } else {
                        Ok(())
                    }
                };
                match (&result, expected) {
                    (Ok(_), Ok(())) => model.touch(s),
                    (Err(e), Err(code)) => prop_assert_eq!(e.code(), code, "{}", at()),
                    _ => prop_assert!(false, "{}: store {:?} but model {:?}", at(), result, expected),
                }
            }
            Op::PublicKeys { s, u, c } => {
                let (s, u, c) = (SESSIONS[s], USERS[u], CONNS[c]);
                let keys = store.public_keys_for(&sid(s), &uid(u), &ConnId::new(c));
                let owners: BTreeSet<String> = keys.iter().map(|k| k.user_id.to_string()).collect();
                if model.is_member(s, u, c) {
                    let mut expected = model.sessions[s].keys.clone();
                    expected.remove(u);
                    prop_assert_eq!(&owners, &expected, "{}", at());
                    model.touch(s);
                } else {
                    prop_assert!(
                        owners.is_empty(),
                        "{}: keys revealed to a socket that is not the member's",
                        at()
                    );
                }
            }
            Op::Typing { s, u, c } => {
                let (s, u, c) = (SESSIONS[s], USERS[u], CONNS[c]);
                let result = store.typing(&sid(s), &uid(u), &ConnId::new(c));
                let bound = model.is_member(s, u, c);
                prop_assert_eq!(result.is_ok(), bound, "{}", at());
                if bound {
                    model.touch(s);
                }
            }
            Op::Download { s, u, c, sender } => {
                let (s, u, c, sender) = (SESSIONS[s], USERS[u], CONNS[c], USERS[sender]);
                let result = store.download_target(&sid(s), &uid(u), &ConnId::new(c), sender);
                let expected = if !model.is_member(s, u, c) {
                    Err(EventError::NotInSession)
                } else {
                    match model.sessions[s].members.get(sender) {
                        Some(conn) => Ok(conn.clone()),
                        None => Err(EventError::UnknownRecipient),
                    }
                };
                match (&result, &expected) {
                    (Ok(target), Ok(conn)) => {
                        prop_assert_eq!(target.as_str(), conn.as_str(), "{}", at());
                        model.touch(s);
                    }
                    (Err(e), Err(x)) => prop_assert_eq!(e, x, "{}", at()),
                    _ => prop_assert!(false, "{}: store {:?} but model {:?}", at(), result, expected),
                }
            }
            Op::Leave { s, u, c } => {
                let (s, u, c) = (SESSIONS[s], USERS[u], CONNS[c]);
                let result = store.leave(&sid(s), &uid(u), &ConnId::new(c));
                let bound = model.is_member(s, u, c);
                prop_assert_eq!(
                    result.is_ok(),
                    bound,
                    "{}: leave by a socket that is not the member's",
                    at()
                );
                if let Ok(left) = result {
                    model.remove_member(s, u);
                    let owners: BTreeSet<String> =
                        left.public_keys.iter().map(|k| k.user_id.to_string()).collect();
                    prop_assert_eq!(&owners, &model.sessions[s].keys, "{}", at());
                    if model.bindings.get(c) == Some(&(s.to_string(), u.to_string())) {
                        model.bindings.remove(c);
                    }
                }
            }
            Op::Disconnect { c } => {
                let c = CONNS[c];
                if let Some((s, u)) = model.bindings.remove(c) {
                    let current = model.is_member(&s, &u, c);
                    let left = store.depart(&sid(&s), &uid(&u), &ConnId::new(c));
                    // A member that rejoined from a newer socket is never removed by the old one.
                    prop_assert_eq!(left.is_some(), current, "{}: disconnect of ({}, {})", at(), s, u);
                    if current {
                        model.remove_member(&s, &u);
                    }
                }
            }
            Op::Sweep { secs } => {
                rt.block_on(tokio::time::advance(Duration::from_secs(secs)));
                model.now += secs;
                let expired = store.sweep(tokio::time::Instant::now());
                let got: BTreeMap<String, BTreeSet<String>> = expired
                    .into_iter()
                    .map(|e| {
                        (
                            e.session.to_string(),
                            e.conns.iter().map(|c| c.as_str().to_string()).collect(),
                        )
                    })
                    .collect();
                let expected = model.sweep();
                prop_assert_eq!(&got, &expected, "{}", at());
            }
            Op::RemoveAllMembers => {
                let departures = store.remove_local_members();
                let got: BTreeMap<String, BTreeSet<(String, String)>> = departures
                    .into_iter()
                    .map(|d| {
                        let members = d
                            .members
                            .iter()
                            .map(|(u, _, c)| (u.to_string(), c.as_str().to_string()))
                            .collect();
                        (d.session.to_string(), members)
                    })
                    .collect();
                let expected: BTreeMap<String, BTreeSet<(String, String)>> = model
                    .sessions
                    .iter()
                    .filter(|(_, m)| !m.members.is_empty())
                    .map(|(id, m)| {
                        (
                            id.clone(),
                            m.members.iter().map(|(u, c)| (u.clone(), c.clone())).collect(),
                        )
                    })
                    .collect();
                prop_assert_eq!(&got, &expected, "{}", at());
                for m in model.sessions.values_mut() {
                    m.members.clear();
                    m.keys.clear();
                }
                // Every socket's later disconnect finds nothing to remove.
            }
        }
        // After every step: the store's own invariants, and the model's view.
        if let Err(e) = store.check_invariants() {
            prop_assert!(false, "{}: invariant broken: {}", at(), e);
        }
        let rows = store.summaries();
        let listed: Vec<(String, usize, usize)> = rows
            .iter()
            .map(|r| (r.session_id.to_string(), r.members, r.public_keys))
            .collect();
        let mut expected: Vec<(String, usize, usize)> = model
            .sessions
            .iter()
            .map(|(id, m)| (id.clone(), m.members.len(), m.keys.len()))
            .collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        expected.sort();
        prop_assert_eq!(&listed_sorted, &expected, "{}: sessions, members, keys", at());
        for r in &rows {
            prop_assert!(r.messages <= MAX_HISTORY, "{}", at());
            if model.sessions[r.session_id.as_str()].mode != ChatMode::Group {
                prop_assert!(
                    r.members <= 2,
                    "{}: a pair session with {} members",
                    at(),
                    r.members
                );
            }
        }
        prop_assert_eq!(store.session_count(), model.sessions.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_store_operations_keep_every_invariant_and_match_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops)?;
    }
}

/// The scenario the contract singles out, spelled out: a member reloads
/// (rejoins from a new socket), then the old socket's disconnect arrives.
#[test]
fn an_old_sockets_disconnect_never_removes_a_member_that_rejoined() {
    let ops = [
        Op::Join {
            s: 0,
            u: 0,
            c: 0,
            creator: true,
            key: Some(0),
            password: None,
            mode: 1,
            pk: true,
        },
        Op::Join {
            s: 0,
            u: 1,
            c: 1,
            creator: false,
            key: Some(0),
            password: None,
            mode: 1,
            pk: true,
        },
        // u1 reloads: new socket c2.
        Op::Join {
            s: 0,
            u: 1,
            c: 2,
            creator: false,
            key: Some(0),
            password: None,
            mode: 1,
            pk: false,
        },
        Op::Disconnect { c: 1 },
        // Still two members; a third is refused (private session).
        Op::Join {
            s: 0,
            u: 2,
            c: 3,
            creator: false,
            key: Some(0),
            password: None,
            mode: 1,
            pk: false,
        },
        Op::Send {
            s: 0,
            u: 1,
            c: 2,
            to: Some(0),
            id: Some(1),
            size: 10,
            original: false,
        },
        Op::Send {
            s: 0,
            u: 1,
            c: 1,
            to: Some(0),
            id: Some(2),
            size: 10,
            original: false,
        },
        Op::Disconnect { c: 2 },
        Op::Sweep { secs: 11 },
        Op::Disconnect { c: 0 },
        Op::Sweep { secs: 11 },
    ];
    run(&ops).unwrap();
}
