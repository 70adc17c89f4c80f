//! `file-downloaded`: arbitrary bytes as JSON into the payload struct, the
//! handler's validation (`socket::validate`), then the store call.
#![no_main]

use e2e_chat_server::socket::payloads::FileDownloaded;
use e2e_chat_server::socket::validate::{download_notice, MAX_FILE_NAME_LEN};
use e2e_chat_server_fuzz::{check, conn, seeded, session_of, speaker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(p) = serde_json::from_slice::<FileDownloaded>(json) else {
        return;
    };
    let Some(session) = p.session_id.as_deref().and_then(session_of) else {
        return;
    };
    let (user, c) = speaker(selector);
    if p.downloaded_by.as_deref().is_some_and(|u| u != user.as_str()) {
        return;
    }
    let Ok((sender, notice)) = download_notice(p, &user) else {
        return;
    };
    assert!(
        notice.file_name.len() <= MAX_FILE_NAME_LEN,
        "an oversized file name passed validation"
    );
    assert!(!notice.downloaded_by.is_empty(), "a notice without a downloader");
    let store = seeded();
    let result = store.download_target(&session, &user, &c, &sender);
    check(&store);
    if let Ok(target) = result {
        let expected = match (session.as_str(), sender.as_str()) {
            ("room", "alice") => "c-alice",
            ("room", "bob") => "c-bob",
            ("pair", "alice") => "c-alice2",
            other => panic!("a notice routed to a non-member: {other:?}"),
        };
        assert_eq!(target, conn(expected));
    }
});
