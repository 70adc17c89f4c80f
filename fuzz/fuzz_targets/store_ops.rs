//! Sequences of store operations (arbitrary-derived), with the store's
//! invariants checked after every step and a few model checks:
//! membership and binding follow the joins, an old socket never removes a
//! member that rejoined, pair sessions never exceed two members, and the
//! idle sweep follows (paused, advanced) time.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use e2e_chat_server::domain::raw::{raw, raw_string};
use e2e_chat_server::domain::{ChatMode, ConnId, SessionId, UserId, WrappedKeys};
use e2e_chat_server::store::MemoryStore as Store;
use e2e_chat_server::store::{JoinKind, JoinRequest, NewMessage};
use e2e_chat_server_fuzz::{check, conn, limits, new_password, sid, uid};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

const SESSIONS: [&str; 4] = ["s0", "s1", "s2", "s3"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const CONNS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];
const KEYS: [&str; 4] = ["k0", "k1", "k0:pw0", "k0:pw1"];
const PASSWORDS: [&str; 2] = ["pw0", "pw1"];
const MODES: [ChatMode; 3] = [ChatMode::Group, ChatMode::Private, ChatMode::Password];

#[derive(Debug, Arbitrary)]
enum Op {
    Reserve {
        s: u8,
        key: u8,
        mode: u8,
    },
    Join {
        s: u8,
        u: u8,
        c: u8,
        creator: bool,
        key: Option<u8>,
        password: Option<u8>,
        mode: u8,
        pk: Option<u8>,
    },
    Send {
        s: u8,
        u: u8,
        c: u8,
        to: Option<u8>,
        id: Option<u8>,
        size: u16,
        original: bool,
    },
    SaveKey {
        s: u8,
        u: u8,
        c: u8,
        pk: u8,
    },
    SetSessionKey {
        s: u8,
        u: u8,
        c: u8,
        n: u8,
    },
    PublicKeys {
        s: u8,
        u: u8,
        c: u8,
    },
    Typing {
        s: u8,
        u: u8,
        c: u8,
    },
    Download {
        s: u8,
        u: u8,
        c: u8,
        sender: u8,
    },
    Leave {
        s: u8,
        u: u8,
        c: u8,
    },
    /// The socket `c` goes away: its worker calls `disconnect` with its binding.
    Disconnect {
        c: u8,
    },
    Sweep {
        advance_secs: u8,
    },
    /// Shutdown: every member of every session removed at once.
    RemoveAllMembers,
}

fn pick<T: Copy>(items: &[T], i: u8) -> T {
    items[usize::from(i) % items.len()]
}

struct Ctx {
    store: Store,
    /// (session, user) → current socket, as the join results said.
    members: HashMap<(SessionId, UserId), ConnId>,
    /// socket → the binding its worker holds (one per socket).
    bindings: HashMap<ConnId, (SessionId, UserId)>,
}

impl Ctx {
    fn member_count(&self, s: &SessionId) -> usize {
        self.store
            .summaries()
            .iter()
            .find(|row| &row.session_id == s)
            .map_or(0, |row| row.members)
    }

    fn sync_members(&mut self) {
        let live: Vec<SessionId> = self.store.summaries().into_iter().map(|r| r.session_id).collect();
        self.members.retain(|(s, _), _| live.contains(s));
    }
}

fn run(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut ctx = Ctx {
        store: Store::new(limits()),
        members: HashMap::new(),
        bindings: HashMap::new(),
    };
    let mut seq = 0u64;
    for op in ops {
        seq += 1;
        match op {
            Op::Reserve { s, key, mode } => {
                let _ = ctx.store.reserve(
                    sid(pick(&SESSIONS, s)),
                    pick(&KEYS, key),
                    pick(&MODES, mode),
                    new_password(pick(&MODES, mode), pick(&KEYS, key), limits().password_kdf),
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
                let (s, u, c) = (
                    sid(pick(&SESSIONS, s)),
                    uid(pick(&USERS, u)),
                    conn(pick(&CONNS, c)),
                );
                let req = JoinRequest {
                    session: s.clone(),
                    user: u.clone(),
                    display_name: Some(format!("{u}-{seq}").into()),
                    public_key: pk.map(|k| raw_string(&format!("pk{k}"))),
                    is_creator: creator,
                    offered_key: key.map(|k| pick(&KEYS, k).to_owned()),
                    offered_password: password.map(|p| pick(&PASSWORDS, p).to_owned()),
                    mode: pick(&MODES, mode),
                    may_create: true,
                    replacing: None,
                };
                let before = ctx.member_count(&s);
                let auth = ctx.store.auth_for(&req);
                match ctx.store.join(req, &auth, &c, seq) {
                    Ok(joined) => {
                        let previous = ctx.members.insert((s.clone(), u.clone()), c.clone());
                        match (&joined.kind, previous) {
                            (JoinKind::New, None) => assert_eq!(ctx.member_count(&s), before + 1),
                            (JoinKind::Repeat, Some(p)) => assert_eq!(p, c),
                            (JoinKind::Rejoined { previous }, Some(p)) => {
                                assert_eq!(*previous, p);
                                assert_ne!(p, c);
                                // The old socket's disconnect must not remove the member.
                                assert!(ctx.store.depart(&s, &u, &p).is_none());
                                assert_eq!(ctx.member_count(&s), before);
                            }
                            (kind, previous) => panic!("join kind {kind:?} with model {previous:?}"),
                        }
                        assert!(joined.history.iter().all(|m| m.visible_to(&u)));
                        // As the worker does: joining as someone else leaves the previous binding.
                        let binding = (s.clone(), u.clone());
                        if let Some(prev) = ctx.bindings.insert(c.clone(), binding.clone()) {
                            if prev != binding && ctx.store.leave(&prev.0, &prev.1, &c).is_ok() {
                                assert_eq!(ctx.members.remove(&prev), Some(c.clone()));
                            }
                        }
                        if joined.mode != ChatMode::Group {
                            assert!(ctx.member_count(&s) <= 2);
                        }
                    }
                    Err(_) => assert_eq!(ctx.member_count(&s), before),
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
                let (s, u, c) = (
                    sid(pick(&SESSIONS, s)),
                    uid(pick(&USERS, u)),
                    conn(pick(&CONNS, c)),
                );
                let out = NewMessage {
                    to: to.map(|t| {
                        if t % 5 == 4 {
                            "all".into()
                        } else {
                            pick(&USERS, t).into()
                        }
                    }),
                    encrypted: raw_string(&"x".repeat(usize::from(size % 3000))),
                    original_content: original.then(|| raw_string("plain")),
                    kind: None,
                    client_message_id: id.map(|i| format!("m{}", i % 8).into()),
                };
                let bound = ctx.members.get(&(s.clone(), u.clone())) == Some(&c);
                let result = ctx.store.send_message(&s, &u, &c, out, seq, original);
                if !bound {
                    assert!(
                        result.is_err(),
                        "a socket that is not the member's sent a message"
                    );
                }
            }
            Op::SaveKey { s, u, c, pk } => {
                let (s, u, c) = (
                    sid(pick(&SESSIONS, s)),
                    uid(pick(&USERS, u)),
                    conn(pick(&CONNS, c)),
                );
                let bound = ctx.members.get(&(s.clone(), u.clone())) == Some(&c);
                let result = ctx
                    .store
                    .save_public_key(&s, &u, &c, raw_string(&format!("pk{pk}")), None);
                assert_eq!(result.is_ok(), bound);
            }
            Op::SetSessionKey { s, u, c, n } => {
                let (s, u, c) = (
                    sid(pick(&SESSIONS, s)),
                    uid(pick(&USERS, u)),
                    conn(pick(&CONNS, c)),
                );
                let keys: serde_json::Map<String, serde_json::Value> = (0..n % 5)
                    .map(|i| (format!("u{i}"), json!(format!("w{seq}"))))
                    .collect();
                let keys = WrappedKeys::parse(raw(&json!(keys).to_string())).expect("an object of strings");
                let bound = ctx.members.get(&(s.clone(), u.clone())) == Some(&c);
                if ctx.store.set_session_key(&s, &u, &c, keys).is_ok() {
                    assert!(bound);
                }
            }
            Op::PublicKeys { s, u, c } => {
                let (s, u, c) = (
                    sid(pick(&SESSIONS, s)),
                    uid(pick(&USERS, u)),
                    conn(pick(&CONNS, c)),
                );
                let bound = ctx.members.get(&(s.clone(), u.clone())) == Some(&c);
                let keys = ctx.store.public_keys_for(&s, &u, &c);
                if !bound {
                    assert!(keys.is_empty(), "keys revealed to a non-member");
                }
            }
            Op::Typing { s, u, c } => {
                let (s, u, c) = (
                    sid(pick(&SESSIONS, s)),
                    uid(pick(&USERS, u)),
                    conn(pick(&CONNS, c)),
                );
                let bound = ctx.members.get(&(s.clone(), u.clone())) == Some(&c);
                assert_eq!(ctx.store.typing(&s, &u, &c).is_ok(), bound);
            }
            Op::Download { s, u, c, sender } => {
                let (s, u, c) = (
                    sid(pick(&SESSIONS, s)),
                    uid(pick(&USERS, u)),
                    conn(pick(&CONNS, c)),
                );
                let sender = uid(pick(&USERS, sender));
                if let Ok(target) = ctx.store.download_target(&s, &u, &c, sender.as_str()) {
                    assert_eq!(ctx.members.get(&(s.clone(), sender)), Some(&target));
                }
            }
            Op::Leave { s, u, c } => {
                let (s, u, c) = (
                    sid(pick(&SESSIONS, s)),
                    uid(pick(&USERS, u)),
                    conn(pick(&CONNS, c)),
                );
                let bound = ctx.members.get(&(s.clone(), u.clone())) == Some(&c);
                let before = ctx.member_count(&s);
                let removed = ctx.store.leave(&s, &u, &c).is_ok();
                assert_eq!(removed, bound, "leave by the current socket only");
                if removed {
                    ctx.members.remove(&(s.clone(), u.clone()));
                    ctx.bindings.remove(&c);
                    assert_eq!(ctx.member_count(&s), before - 1);
                }
            }
            Op::Disconnect { c } => {
                let c = conn(pick(&CONNS, c));
                if let Some((s, u)) = ctx.bindings.remove(&c) {
                    let current = ctx.members.get(&(s.clone(), u.clone())) == Some(&c);
                    let before = ctx.member_count(&s);
                    let removed = ctx.store.depart(&s, &u, &c).is_some();
                    // A member that rejoined from a newer socket stays.
                    assert_eq!(
                        removed, current,
                        "disconnect removes only the current socket's member"
                    );
                    if removed {
                        ctx.members.remove(&(s.clone(), u.clone()));
                        assert_eq!(ctx.member_count(&s), before - 1);
                    } else {
                        assert_eq!(ctx.member_count(&s), before);
                    }
                }
            }
            Op::RemoveAllMembers => {
                let departed: usize = ctx
                    .store
                    .remove_local_members()
                    .iter()
                    .map(|d| d.members.len())
                    .sum();
                assert_eq!(departed, ctx.members.len(), "every member departs once");
                ctx.members.clear();
            }
            Op::Sweep { advance_secs } => {
                rt.block_on(tokio::time::advance(Duration::from_secs(u64::from(
                    advance_secs % 90,
                ))));
                let expired = ctx.store.sweep(tokio::time::Instant::now());
                for e in &expired {
                    assert!(!e.conns.is_empty());
                }
                ctx.sync_members();
            }
        }
        check(&ctx.store);
        let total: usize = ctx.store.summaries().iter().map(|r| r.members).sum();
        assert_eq!(total, ctx.members.len(), "members out of step with the joins");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    if ops.len() <= 256 {
        run(ops);
    }
});
