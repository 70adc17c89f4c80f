//! `get-public-keys`, `typing`, `stopped-typing`, `leave-session`: arbitrary
//! bytes as JSON into the shared payload struct, then each store call.
#![no_main]

use e2e_chat_server::domain::UserId;
use e2e_chat_server::socket::payloads::SessionUser;
use e2e_chat_server::socket::validate::display_name;
use e2e_chat_server_fuzz::{check, seeded, session_of, speaker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(p) = serde_json::from_slice::<SessionUser>(json) else {
        return;
    };
    let _ = display_name(p.display_name.clone());
    let Some(session) = p.session_id.as_deref().and_then(session_of) else {
        return;
    };
    let (bound, c) = speaker(selector);
    // The claimed user, when given, must be the bound one; the store is
    // also called with the claimed one to check it refuses a stranger.
    let claimed = p
        .user_id
        .as_deref()
        .and_then(UserId::parse)
        .unwrap_or(bound.clone());
    let store = seeded();
    for user in [&bound, &claimed] {
        let keys = store.public_keys_for(&session, user, &c);
        assert!(keys.iter().all(|k| &k.user_id != user), "own key returned");
        check(&store);
        let _ = store.typing(&session, user, &c);
        check(&store);
        let members_before: usize = store.summaries().iter().map(|s| s.members).sum();
        let left = store.leave(&session, user, &c);
        check(&store);
        let members_after: usize = store.summaries().iter().map(|s| s.members).sum();
        match left {
            Ok(_) => assert_eq!(members_after + 1, members_before),
            Err(_) => assert_eq!(members_after, members_before),
        }
        assert!(store.depart(&session, user, &c).is_none(), "left twice");
        check(&store);
    }
});
