//! The outbox of a Socket.IO session (`src/http/outbox.rs`), for real: a
//! server, raw WebSocket and long-polling clients, and the count of bytes
//! queued for a client and not yet written, read through the test hook
//! `RunningServer::outbox` (`cargo test --features test-hooks`). What the
//! socket side will do for every emit (count it as queued) is done here by
//! the test itself, before the server writes.
#![cfg(feature = "test-hooks")]

mod attack_support;
#[path = "attack_support/fairshare.rs"]
mod fairshare;

use std::time::Duration;

use attack_support::*;
use fairshare::*;
use serde_json::json;
use tokio::time::{sleep, timeout, Instant};

const MIB: usize = 1 << 20;

/// `n` messages of about `len` bytes from `sender` to the session's room;
/// returns their texts.
fn send_large(sender: &Ws, session: &str, user: &str, n: usize, len: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let text = format!("{i:03}{}", "x".repeat(len - 3));
            sender.emit("send-message", message(session, user, None, &text));
            text
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_outbox_drains_as_the_client_reads_and_stays_high_while_it_does_not() {
    let _serial = serial().await;
    const K: usize = 12;
    let server = start(|c| c.max_sockets_per_ip = 0).await;
    let addr = server.addr();
    let bystander = Bystander::open(addr, "calm").await;
    let sender = Ws::connect(addr).await;
    join(&sender, "out", "key", "sender", true).await;
    let reader = Ws::connect(addr).await;
    join(&reader, "out", "key", "reader", false).await;
    // A small receive window, so that what it does not read stays on the server.
    let stopped = Ws::connect_with_small_window(addr, 4096).await;
    join(&stopped, "out", "key", "stopped", false).await;
    let outbox = |ws: &Ws| {
        server
            .outbox(ws.open["sid"].as_str().unwrap())
            .expect("the socket's outbox")
    };
    let (reading, stalled) = (outbox(&reader), outbox(&stopped));
    // The joins' answers were counted and written: nothing stays pending.
    for (what, outbox) in [("reader", &reading), ("stopped", &stalled)] {
        timeout(WAIT, outbox.drained_to(0)).await.unwrap_or_else(|_| {
            panic!(
                "the {what}'s outbox stayed at {} after its join",
                outbox.pending()
            )
        });
    }

    stopped.stop_reading();
    // The relay counts each emit as queued (its packet's bytes, at least
    // the ciphertext), the connection credits what it writes.
    let texts = send_large(&sender, "out", "sender", K, MIB);
    for text in &texts {
        recv_message(&reader, text, WAIT)
            .await
            .expect("the reader gets every message");
    }
    timeout(Duration::from_secs(2), reading.drained_to(0))
        .await
        .unwrap_or_else(|_| panic!("the reader's outbox stayed at {}", reading.pending()));
    sleep(Duration::from_millis(500)).await;
    let held = stalled.pending();
    assert!(
        held > K * MIB / 2,
        "a reader that stopped has only {held} of {} bytes pending",
        K * MIB
    );
    // Once it reads again, its outbox drains too.
    stopped.resume_reading();
    timeout(Duration::from_secs(5), stalled.drained_to(0))
        .await
        .unwrap_or_else(|_| panic!("the resumed reader's outbox stayed at {}", stalled.pending()));
    bystander.assert_served().await;
    eprintln!(
        "websocket outbox: {} MiB queued; a stopped reader held {held} bytes pending",
        K
    );
    stop(server).await;
}

/// GETs `polling` until its answers hold every one of `texts` (answering
/// pings); the bytes received.
async fn poll_until_all(polling: &Polling, texts: &[String]) -> usize {
    let mut received = String::new();
    let deadline = Instant::now() + WAIT;
    while !texts.iter().all(|t| received.contains(t.as_str())) {
        assert!(Instant::now() < deadline, "polling did not bring every message");
        let (status, body) = polling.get().await;
        assert_eq!(status, 200);
        if body.split('\u{1e}').any(|p| p == "2") {
            assert_eq!(polling.post(b"3").await.0, 200, "pong");
        }
        received.push_str(&body);
    }
    received.len()
}

/// A polling client joined to `session` (its join's answers taken).
async fn polling_member(addr: std::net::SocketAddr, session: &str, user: &str) -> Polling {
    let polling = connected_polling(addr).await;
    let join = json!(["join-session", join_payload(session, "key", user, false)]);
    assert_eq!(polling.post(format!("42{join}").as_bytes()).await.0, 200);
    poll_until_all(&polling, &["public-keys-updated".to_string()]).await;
    polling
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_outbox_drains_as_the_client_polls_and_stays_high_while_it_does_not() {
    let _serial = serial().await;
    const K: usize = 4;
    let server = start(|c| {
        c.max_sockets_per_ip = 0;
        c.handshake_rate_per_ip = 0;
    })
    .await;
    let addr = server.addr();
    let bystander = Bystander::open(addr, "calm").await;
    let sender = Ws::connect(addr).await;
    join(&sender, "outp", "key", "sender", true).await;
    let reader = polling_member(addr, "outp", "reader").await;
    let idle = polling_member(addr, "outp", "idle").await;
    let reading = server.outbox(&reader.sid).expect("the reader's outbox");
    let stalled = server.outbox(&idle.sid).expect("the idle poller's outbox");

    let texts = send_large(&sender, "outp", "sender", K, MIB);
    let got = poll_until_all(&reader, &texts).await;
    timeout(Duration::from_secs(2), reading.drained_to(0))
        .await
        .unwrap_or_else(|_| panic!("the poller's outbox stayed at {}", reading.pending()));
    // A client that does not poll is written nothing.
    sleep(Duration::from_millis(300)).await;
    let held = stalled.pending();
    assert!(
        (K * MIB..K * MIB + 4096).contains(&held),
        "nothing was written to the client that stopped polling: {held} pending"
    );
    poll_until_all(&idle, &texts).await;
    timeout(Duration::from_secs(2), stalled.drained_to(0))
        .await
        .unwrap_or_else(|_| panic!("the late poller's outbox stayed at {}", stalled.pending()));
    bystander.assert_served().await;
    eprintln!(
        "polling outbox: {} MiB queued, {got} bytes polled, drained to 0",
        K
    );
    stop(server).await;
}
