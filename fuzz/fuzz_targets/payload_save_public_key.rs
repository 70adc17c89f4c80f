//! `save-public-key`: arbitrary bytes as JSON into the payload struct, the
//! handler's validation (`socket::validate`), then the store call.
#![no_main]

use e2e_chat_server::socket::payloads::SavePublicKey;
use e2e_chat_server::socket::validate::{public_key_request, MAX_PUBLIC_KEY_BYTES};
use e2e_chat_server_fuzz::{check, seeded, session_of, speaker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(p) = serde_json::from_slice::<SavePublicKey>(json) else {
        return;
    };
    let Some(session) = p.session_id.as_deref().and_then(session_of) else {
        return;
    };
    let (user, c) = speaker(selector);
    if p.user_id.as_deref().is_some_and(|u| u != user.as_str()) {
        return;
    }
    let Ok((key, name)) = public_key_request(p) else {
        return;
    };
    assert!(
        key.get().len() <= MAX_PUBLIC_KEY_BYTES,
        "an oversized key passed validation"
    );
    let store = seeded();
    let result = store.save_public_key(&session, &user, &c, key.clone(), name);
    check(&store);
    if let Ok(keys) = result {
        let mine: Vec<_> = keys.iter().filter(|k| k.user_id == user).collect();
        assert_eq!(mine.len(), 1, "one key per user");
        assert_eq!(mine[0].public_key.get(), key.get());
    }
});
