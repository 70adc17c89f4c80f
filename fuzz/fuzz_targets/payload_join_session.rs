//! `join-session`: arbitrary bytes as JSON into the payload struct, then the
//! contract's validation (`join_request`), then the join itself on a seeded store.
#![no_main]

use e2e_chat_server::domain::ids::SessionRef;
use e2e_chat_server::socket::payloads::JoinSession;
use e2e_chat_server::socket::validate::join_request;
use e2e_chat_server_fuzz::{check, conn, seeded, sid, uid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(payload) = serde_json::from_slice::<JoinSession>(json) else {
        return;
    };
    let raw_session = payload.session_id.clone();
    let Ok(req) = join_request(payload) else { return };
    // What validation promises.
    let raw_session = raw_session.expect("a valid join has a sessionId");
    assert_eq!(req.session.as_str(), SessionRef::split(&raw_session).id);
    assert!(req.user.as_str().len() <= 128 && !req.user.as_str().is_empty());
    assert!(req.offered_key.as_ref().is_none_or(|k| k.len() <= 512));
    assert!(req.display_name.as_ref().is_none_or(|n| n.len() <= 128));
    let store = seeded();
    // The socket joining, and what it was bound to before (as the worker holds it).
    let (c, bound) = [
        ("c-alice", Some(("room", "alice"))),
        ("c-bob", Some(("room", "bob"))),
        ("c-new", None),
        ("c-alice2", Some(("pair", "alice"))),
    ][usize::from(selector % 4)];
    let c = conn(c);
    let before = store.session_count();
    let auth = store.auth_for(&req);
    let result = store.join(req.clone(), &auth, &c, 2);
    // As the worker does: a socket holds one binding, so joining as someone
    // else leaves the previous one.
    if result.is_ok() {
        if let Some((s, u)) =
            bound.filter(|&(s, u)| (sid(s), uid(u)) != (req.session.clone(), req.user.clone()))
        {
            store
                .leave(&sid(s), &uid(u), &c)
                .expect("the previous binding was a member");
        }
    }
    check(&store);
    match result {
        Ok(joined) => {
            assert!(joined.history.iter().all(|m| m.visible_to(&req.user)));
            assert!(store.session_count() <= before + 1);
            if store.session_count() > before {
                assert!(req.is_creator, "only a creator's join creates a session");
            }
        }
        Err(_) => assert_eq!(store.session_count(), before, "a refused join created a session"),
    }
});
