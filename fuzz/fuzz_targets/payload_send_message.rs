//! `send-message`: arbitrary bytes as JSON into the payload struct, the
//! worker's checks, then the store call (three times, to reach the history bounds).
#![no_main]

use e2e_chat_server::store::{NewMessage, Route};
use e2e_chat_server::domain::EventError;
use e2e_chat_server::socket::payloads::{SendMessage, MAX_CLIENT_MESSAGE_ID_LEN, MAX_TYPE_LEN};
use e2e_chat_server_fuzz::{check, seeded, session_of, speaker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(p) = serde_json::from_slice::<SendMessage>(json) else {
        return;
    };
    let Some(session) = p.session_id.as_deref().and_then(session_of) else {
        return;
    };
    let (user, c) = speaker(selector);
    if p.from.as_deref().is_some_and(|f| f != user.as_str()) {
        return;
    }
    let Some(encrypted) = p.encrypted.filter(|v| !v.is_null()) else {
        return;
    };
    if p.kind.as_ref().is_some_and(|t| t.len() > MAX_TYPE_LEN)
        || p.client_message_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > MAX_CLIENT_MESSAGE_ID_LEN)
    {
        return;
    }
    let store = seeded();
    for round in 0..3u64 {
        let out = NewMessage {
            to: p.to.clone().map(Into::into),
            encrypted: encrypted.clone(),
            original_content: p.original_content.clone(),
            kind: p.kind.clone().map(Into::into),
            client_message_id: p.client_message_id.clone().map(Into::into),
        };
        let result = store.send_message(&session, &user, &c, out, round, selector & 0x80 != 0);
        check(&store);
        match result {
            Ok(sent) => {
                assert_eq!(sent.message.from, user);
                if let Some(id) = &p.client_message_id {
                    assert_eq!(&*sent.message.id, id.as_str());
                    assert_eq!(sent.is_new, round == 0, "an id is new only the first time");
                }
                if let Route::Conn(_) = sent.route {
                    assert!(p.to.as_deref().is_some_and(|t| t != "all"));
                }
            }
            Err(EventError::NotInSession | EventError::UnknownRecipient) => {}
            Err(e) => panic!("unexpected refusal {e:?}"),
        }
    }
});
