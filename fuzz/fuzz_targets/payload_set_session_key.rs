//! `set-session-key`: arbitrary bytes as JSON into the payload struct, the
//! handler's validation (`socket::validate`), then the store call.
#![no_main]

use e2e_chat_server::domain::EventError;
use e2e_chat_server::socket::payloads::SetSessionKey;
use e2e_chat_server::socket::validate::{wrapped_keys, MAX_WRAPPED_KEYS_BYTES};
use e2e_chat_server_fuzz::{check, seeded, session_of, speaker};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(p) = serde_json::from_slice::<SetSessionKey>(json) else {
        return;
    };
    let Some(session) = p.session_id.as_deref().and_then(session_of) else {
        return;
    };
    let Ok(keys) = wrapped_keys(p.encrypted_keys) else {
        return;
    };
    let tree: Value = serde_json::from_str(keys.raw().get()).expect("validated keys are JSON");
    assert!(
        tree.as_object().is_some_and(|o| o.values().all(Value::is_string)),
        "a non-string wrapped key passed validation"
    );
    assert!(keys.raw().get().len() <= MAX_WRAPPED_KEYS_BYTES);
    assert_eq!(
        keys.len(),
        tree.as_object().map_or(0, |o| o.len()).max(keys.len())
    );
    let (user, c) = speaker(selector);
    let store = seeded();
    let result = store.set_session_key(&session, &user, &c, keys.clone());
    check(&store);
    match result {
        Ok(stored) => {
            assert_eq!(session.as_str(), "room", "only the group session takes a key");
            assert_eq!(user.as_str(), "alice", "only the creator sets the key");
            assert_eq!(stored.raw().get(), keys.raw().get());
        }
        Err(EventError::NotInSession | EventError::NotGroupSession | EventError::NotCreator) => {}
        Err(e) => panic!("unexpected refusal {e:?}"),
    }
});
