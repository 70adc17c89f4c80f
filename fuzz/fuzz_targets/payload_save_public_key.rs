//! `save-public-key`: arbitrary bytes as JSON into the payload struct, the
//! worker's size checks, then the store call.
#![no_main]

use e2e_chat_server::socket::payloads::{display_name, json_len, SavePublicKey, MAX_PUBLIC_KEY_BYTES};
use e2e_chat_server_fuzz::{check, seeded, session_of, speaker};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

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
    let key = p.public_key.unwrap_or(Value::Null);
    if json_len(&key) > MAX_PUBLIC_KEY_BYTES {
        return;
    }
    let Ok(name) = display_name(p.display_name) else {
        return;
    };
    let store = seeded();
    let result = store.save_public_key(&session, &user, &c, key.clone(), name);
    check(&store);
    if let Ok(keys) = result {
        let mine: Vec<_> = keys.iter().filter(|k| k.user_id == user).collect();
        assert_eq!(mine.len(), 1, "one key per user");
        assert_eq!(mine[0].public_key, key);
    }
});
