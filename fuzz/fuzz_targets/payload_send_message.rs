//! `send-message`: arbitrary bytes as JSON into the payload struct, the
//! handler's validation (`socket::validate`), then the store call (three
//! times, to reach the history bounds).
#![no_main]

use e2e_chat_server::domain::EventError;
use e2e_chat_server::socket::payloads::SendMessage;
use e2e_chat_server::socket::validate::{send_request, MAX_CLIENT_MESSAGE_ID_LEN, MAX_TYPE_LEN};
use e2e_chat_server::store::{NewMessage, Route};
use e2e_chat_server::OriginalContent;
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
    let keep = selector & 0x80 != 0;
    let policy = if keep {
        OriginalContent::Author
    } else {
        OriginalContent::Echo
    };
    let to = p.to.clone();
    let client_message_id = p.client_message_id.clone();
    let Ok(req) = send_request(p, policy) else {
        return;
    };
    let m = &req.message;
    assert!(
        !e2e_chat_server::domain::raw::is_null(&m.encrypted),
        "a message without ciphertext passed validation"
    );
    assert!(m.kind.as_ref().is_none_or(|t| t.len() <= MAX_TYPE_LEN));
    assert!(m
        .client_message_id
        .as_ref()
        .is_none_or(|id| !id.is_empty() && id.len() <= MAX_CLIENT_MESSAGE_ID_LEN));
    let store = seeded();
    for round in 0..3u64 {
        let out = NewMessage {
            to: m.to.clone(),
            encrypted: m.encrypted.clone(),
            original_content: m.original_content.clone(),
            kind: m.kind.clone(),
            client_message_id: m.client_message_id.clone(),
        };
        let result = store.send_message(&session, &user, &c, out, round, keep);
        check(&store);
        match result {
            Ok(sent) => {
                assert_eq!(sent.message.from, user);
                if let Some(id) = &client_message_id {
                    assert_eq!(&*sent.message.id, id.as_str());
                    assert_eq!(sent.is_new, round == 0, "an id is new only the first time");
                }
                if let Route::Conn(_) = sent.route {
                    assert!(to.as_deref().is_some_and(|t| t != "all"));
                }
            }
            Err(EventError::NotInSession | EventError::UnknownRecipient) => {}
            Err(e) => panic!("unexpected refusal {e:?}"),
        }
    }
});
