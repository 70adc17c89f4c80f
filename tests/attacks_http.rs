//! Attacks on the HTTP layer's fair share (issues "Bounded memory" and
//! "Identity inside a session", their HTTP parts): the real server, attacked
//! from one address (127.0.0.1), while a bystander at another address
//! (127.0.0.2: `/health` and a Socket.IO conversation of its own) must still
//! be served within a second; where memory is at stake, the real binary's
//! RSS must stay under a bound computed from the settings.
//!
//! The cases run one at a time (`serial()`): several measure time, and on a
//! 2-core machine they would measure each other. The outbox and upgrade
//! cases read or cut a session through test hooks: `cargo test --features
//! test-hooks` (scripts/test.sh does).

mod attack_support;
#[path = "attack_support/fairshare.rs"]
mod fairshare;

use std::time::Duration;

use attack_support::*;
use fairshare::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

/// What one open connection may cost the server, at most, in these bounds
/// (the whole server's budget is about 20 KiB per idle connection; this
/// leaves room for allocator slack and HTTP/2 state).
const PER_CONNECTION_KIB: u64 = 64;
/// Allowance for the allocator and the runtime growing their pools.
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// `CLOSE_GRACE` of `src/http/serve.rs`: how long a connection asked to
/// close may take before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// (a) One address, many HTTP/2 openings

type Closing = tokio::task::JoinHandle<Option<Duration>>;

/// `n` connections from the attacker that send the HTTP/2 opening and then
/// nothing; each watched until the server closes it (how long it lived).
async fn h2_openings(addr: std::net::SocketAddr, n: usize) -> Vec<Closing> {
    let mut watchers = Vec::new();
    for _ in 0..n {
        let mut stream = h2_opening(ATTACKER, addr).await;
        let opened = Instant::now();
        watchers.push(tokio::spawn(async move {
            let within = Duration::from_secs(15);
            closed_within(&mut stream, within).await.then(|| opened.elapsed())
        }));
    }
    watchers
}

/// How long the watched connections lived: those closed within `at_once`,
/// and the others.
async fn closings(watchers: Vec<Closing>, at_once: Duration) -> (Vec<Duration>, Vec<Duration>) {
    let mut lived = Vec::new();
    for w in watchers {
        let closed = w.await.unwrap();
        lived.push(closed.expect("a preface-only connection was still open after 15 s"));
    }
    lived.into_iter().partition(|d| *d < at_once)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_preface_floods_from_one_address_are_capped_and_closed_once_idle() {
    let _serial = serial().await;
    const CAP: usize = 100;
    const ATTEMPTS: usize = 300;
    let idle = Duration::from_secs(2);
    let server = Spawned::start(
        "h2-flood",
        &[
            ("MAX_CONNECTIONS_PER_IP", CAP.to_string()),
            ("IDLE_CONNECTION_TIMEOUT_SECS", idle.as_secs().to_string()),
        ],
    )
    .await;
    let addr = server.addr;
    let bystander = Bystander::open(addr, "calm").await;
    bystander.assert_served().await;
    let base = server.rss_kib();

    let started = Instant::now();
    let watchers = h2_openings(addr, ATTEMPTS).await;
    let opened_all = started.elapsed();
    // The cap is full: the attacker's address is refused, the bystander is not.
    sleep(Duration::from_millis(300)).await;
    let refused = http_get(addr, "/health").await;
    assert!(
        refused.is_err(),
        "a connection over the cap was served: {refused:?}"
    );
    let while_full = bystander.assert_served().await;
    let full = server.rss_kib();
    let bound = base + CAP as u64 * PER_CONNECTION_KIB + RSS_SLACK_KIB;
    assert!(
        full <= bound,
        "RSS {full} KiB with the cap full, bound {bound} KiB (base {base})"
    );

    let (at_once, after_idle) = closings(watchers, Duration::from_secs(1)).await;
    assert_eq!(
        at_once.len(),
        ATTEMPTS - CAP,
        "connections over the cap closed at once"
    );
    assert_eq!(after_idle.len(), CAP);
    let (first, last) = (after_idle.iter().min().unwrap(), after_idle.iter().max().unwrap());
    assert!(
        *first >= idle - Duration::from_millis(300),
        "closed before the idle timeout: {first:?}"
    );
    assert!(
        *last <= idle + CLOSE_GRACE + Duration::from_secs(2),
        "closed only after {last:?}"
    );
    // Their count is given back: the address is served again.
    assert_health(addr).await;
    let after = bystander.assert_served().await;
    eprintln!(
        "h2 flood: {ATTEMPTS} openings in {opened_all:?}; {} closed at once (max {:?}), {CAP} after \
         {first:?}..{last:?}; RSS base {base} KiB, cap full {full} KiB (+{} KiB, bound {bound}); \
         bystander {while_full:?} while full, {after:?} after",
        at_once.len(),
        at_once.iter().max().unwrap(),
        full.saturating_sub(base),
    );
}

// ---------------------------------------------------------------------------
// (b) The same behind a proxy: counted per forwarded address

/// A keep-alive connection from the attacker's address whose request
/// claims `forwarded` as the client; its answer.
async fn forwarded_request(addr: std::net::SocketAddr, forwarded: &str) -> (TcpStream, Answer) {
    let mut stream = connect_from(ATTACKER, addr).await.unwrap();
    // A forged chain: the proxy's own entry is the last one.
    let chain = format!("6.6.6.6, {forwarded}");
    let answer = request_on(&mut stream, "GET", "/health", &[("X-Forwarded-For", &chain)], b"")
        .await
        .unwrap();
    (stream, answer)
}

#[tokio::test]
async fn behind_a_proxy_the_connection_cap_counts_each_forwarded_address() {
    let _serial = serial().await;
    const CAP: usize = 5;
    let idle = Duration::from_secs(2);
    let server = start(|c| {
        c.trust_proxy = Some("x-forwarded-for".parse().unwrap());
        c.max_connections_per_ip = CAP;
        c.idle_connection_timeout = idle;
    })
    .await;
    let addr = server.addr();
    let bystander = Bystander::open(addr, "calm").await;

    let mut kept = Vec::new();
    for _ in 0..CAP {
        let (stream, answer) = forwarded_request(addr, "10.9.8.7").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        kept.push((stream, Instant::now()));
    }
    // The same address again, written as ip:port: over the cap.
    let (mut over, answer) = forwarded_request(addr, "10.9.8.7:4242").await;
    answer.assert_json_error(429);
    assert!(
        closed_within(&mut over, PROMPT).await,
        "the refused connection stayed open"
    );
    // Another forwarded address on the same proxy connection's peer is served.
    let (_other, answer) = forwarded_request(addr, "10.9.8.8").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    bystander.assert_served().await;

    // The kept connections are idle: closed after the idle timeout.
    for (stream, opened) in &mut kept {
        assert!(
            closed_within(stream, idle + CLOSE_GRACE + Duration::from_secs(2)).await,
            "a kept-alive connection stayed open"
        );
        let lived = opened.elapsed();
        assert!(
            lived >= idle - Duration::from_millis(300),
            "closed after {lived:?}"
        );
    }
    let (_again, answer) = forwarded_request(addr, "10.9.8.7").await;
    assert_eq!(
        answer.status, 200,
        "the address's count was not given back: {answer:?}"
    );
    bystander.assert_served().await;
    stop(server).await;
}

// ---------------------------------------------------------------------------
// (e) IPv6 addresses count by their /64

#[tokio::test]
async fn ipv6_addresses_of_one_64_share_one_connection_count() {
    let _serial = serial().await;
    // The loopback here is ::1/128 only: no two local addresses share a
    // /64, so the addresses come through a proxy header, in every form a
    // proxy writes them (the unit tests of `limits` cover the key itself).
    let server = start(|c| {
        c.trust_proxy = Some("x-forwarded-for".parse().unwrap());
        c.max_connections_per_ip = 3;
    })
    .await;
    let addr = server.addr();
    let bystander = Bystander::open(addr, "calm").await;
    let mut kept = Vec::new();
    for forwarded in [
        "2001:db8:1:2::1",
        "[2001:db8:1:2::2]:443",
        "[2001:db8:1:2:ffff:ffff:ffff:ffff]",
    ] {
        let (stream, answer) = forwarded_request(addr, forwarded).await;
        assert_eq!(answer.status, 200, "{forwarded}: {answer:?}");
        kept.push(stream);
    }
    let (_over, answer) = forwarded_request(addr, "2001:db8:1:2:abcd::9").await;
    answer.assert_json_error(429);
    let (_next, answer) = forwarded_request(addr, "[2001:db8:1:3::1]:8080").await;
    assert_eq!(
        answer.status, 200,
        "the next /64 has a count of its own: {answer:?}"
    );
    let (_mapped, answer) = forwarded_request(addr, "::ffff:10.1.1.1").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    bystander.assert_served().await;
    stop(server).await;
}

// ---------------------------------------------------------------------------
// (c) Trickled polling bodies

/// A polling POST of `declared` bytes whose body comes `step` bytes every
/// `every`: its answer, how long after the head it came, and whether the
/// server then closed the connection.
async fn trickle(
    addr: std::net::SocketAddr,
    sid: String,
    declared: usize,
    step: &'static [u8],
    every: Duration,
) -> (Answer, Duration, bool) {
    let mut stream = connect_from(ATTACKER, addr).await.unwrap();
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: t\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent + step.len() <= declared && wr.write_all(step).await.is_ok() {
            sent += step.len();
            sleep(every).await;
        }
        wr
    });
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        while let Ok(n) = rd.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .is_ok();
    let took = started.elapsed();
    writer.abort();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let answer = Answer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    };
    (answer, took, closed)
}

/// A polling POST of `body` sent 10 kB every 100 ms; its answer.
async fn steady_upload(addr: std::net::SocketAddr, sid: String, body: Vec<u8>) -> Result<Answer, String> {
    let mut stream = connect_from(ATTACKER, addr).await.unwrap();
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: t\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(10_000) {
        stream.write_all(piece).await.unwrap();
        sleep(Duration::from_millis(100)).await;
    }
    read_answer(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_polling_bodies_are_cut_at_the_minimum_rate_and_a_steady_upload_passes() {
    let _serial = serial().await;
    const TRICKLERS: usize = 40;
    const RATE: u64 = 1000;
    let window = Duration::from_secs(1);
    let server = Spawned::start(
        "trickle",
        &[
            ("BODY_MIN_RATE_BYTES_PER_SEC", RATE.to_string()),
            ("BODY_RATE_WINDOW_SECS", window.as_secs().to_string()),
            ("HANDSHAKE_RATE_PER_IP", "0".into()),
        ],
    )
    .await;
    let addr = server.addr;
    let bystander = Bystander::open(addr, "calm").await;
    let mut sessions = Vec::new();
    for _ in 0..=TRICKLERS {
        let polling = Polling::open(addr).await;
        assert_eq!(polling.post(b"40").await.0, 200);
        sessions.push(polling);
    }
    let base = server.rss_kib();
    let steady_session = sessions.pop().unwrap();

    // 2 bytes every 50 ms: 40 B/s against a minimum of 1000 B/s.
    let mut tricklers = Vec::new();
    for s in &sessions {
        tricklers.push(tokio::spawn(trickle(
            addr,
            s.sid.clone(),
            1_000_000,
            b"3\x1e",
            Duration::from_millis(50),
        )));
    }
    // A steady 100 kB/s upload of 600 kB: six windows, each well above the minimum.
    let steady = tokio::spawn(steady_upload(addr, steady_session.sid.clone(), pongs(300_000)));
    sleep(Duration::from_millis(500)).await;
    let during = bystander.assert_served().await;
    let mut cut_after = Vec::new();
    for t in tricklers {
        let (answer, took, closed) = t.await.unwrap();
        answer.assert_json_error(408);
        assert!(closed, "the connection of a cut body stayed open");
        cut_after.push(took);
    }
    let latest = *cut_after.iter().max().unwrap();
    assert!(
        latest <= window * 2 + Duration::from_secs(2),
        "trickled bodies were cut only after {latest:?} (window {window:?})"
    );
    let rss = server.rss_kib();
    let bound = base + TRICKLERS as u64 * PER_CONNECTION_KIB + RSS_SLACK_KIB;
    assert!(rss <= bound, "RSS {rss} KiB, bound {bound} KiB (base {base})");
    // The engine closed each cut session.
    let (status, body) = sessions[0].get().await;
    assert_eq!(status, 400, "a cut session still polls: {body}");
    let steady = steady.await.unwrap().expect("the steady upload's answer");
    assert_eq!((steady.status, steady.body.as_str()), (200, "ok"), "{steady:?}");
    let after = bystander.assert_served().await;
    eprintln!(
        "trickle: {TRICKLERS} bodies cut after {:?}..{latest:?}; steady 600 kB upload passed; RSS base {base} KiB, \
         after {rss} KiB (bound {bound}); bystander {during:?} during, {after:?} after",
        cut_after.iter().min().unwrap(),
    );
}

// ---------------------------------------------------------------------------
// (d) Two polling POSTs of one session at once

#[tokio::test]
async fn a_second_polling_post_of_a_session_while_one_is_read_is_refused() {
    let _serial = serial().await;
    let server = start(|_| {}).await;
    let addr = server.addr();
    let bystander = Bystander::open(addr, "calm").await;
    let polling = connected_polling(addr).await;

    // A first POST whose body is half sent, and stays so for a moment.
    let body = pongs(500);
    let mut first = connect_from(ATTACKER, addr).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        polling.path(),
        body.len()
    );
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&body[..400]).await.unwrap();
    sleep(Duration::from_millis(200)).await;
    let (status, second) = polling.post(b"3").await;
    assert_eq!(status, 400, "a second POST while the first is read: {second}");
    let error: serde_json::Value = serde_json::from_str(&second).expect("a JSON refusal");
    assert!(error["error"].is_string(), "{second}");

    // The first one completes normally, and then the session posts again.
    first.write_all(&body[400..]).await.unwrap();
    let answer = read_answer(&mut first).await.unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"), "{answer:?}");
    assert_eq!(polling.post(b"3").await, (200, "ok".to_string()));
    bystander.assert_served().await;
    stop(server).await;
}

// ---------------------------------------------------------------------------
// (f) A bogus upgrade before the real one

#[cfg(feature = "test-hooks")]
/// Upgrade requests for the session at `ws_path` that never become its
/// WebSocket; returns the connection of the first, which the engine
/// refused and which stays open for further requests.
async fn bogus_upgrades(addr: std::net::SocketAddr, ws_path: &str) -> TcpStream {
    // No Sec-WebSocket-Key: the engine refuses it.
    let mut keyless = connect_from(ATTACKER, addr).await.unwrap();
    let headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
    ];
    let refused = request_on(&mut keyless, "GET", ws_path, &headers, b"")
        .await
        .unwrap();
    assert_eq!(refused.status, 400, "{refused:?}");
    // A key, over HTTP/1.0: the engine answers 101, but HTTP/1.0 cannot be
    // upgraded, so hyper closes the connection after the answer.
    let mut old_http = connect_from(ATTACKER, addr).await.unwrap();
    let head = format!(
        "GET {ws_path} HTTP/1.0\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    old_http.write_all(head.as_bytes()).await.unwrap();
    let answered = read_answer(&mut old_http).await.unwrap();
    assert_eq!(answered.status, 101, "{answered:?}");
    assert!(
        closed_within(&mut old_http, PROMPT).await,
        "an HTTP/1.0 connection stayed open after a 101"
    );
    keyless
}

#[cfg(feature = "test-hooks")]
type RawWebSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

#[cfg(feature = "test-hooks")]
/// The real upgrade of the session at `ws_path` (`2probe`, `3probe`, `5`),
/// checked by a join answered over it.
async fn real_upgrade(addr: std::net::SocketAddr, ws_path: &str) -> RawWebSocket {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let tcp = connect_from(ATTACKER, addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{ws_path}"), tcp)
        .await
        .expect("the real upgrade");
    ws.send(Message::text("2probe")).await.unwrap();
    let probe = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(probe.to_text().unwrap(), "3probe");
    ws.send(Message::text("5")).await.unwrap();
    let join = json!(["join-session", join_payload("upgraded", "key", "u", true)]);
    ws.send(Message::text(format!("42{join}"))).await.unwrap();
    let answered = timeout(WAIT, async {
        while let Some(Ok(m)) = ws.next().await {
            if m.to_text()
                .unwrap_or_default()
                .starts_with("42[\"messages-history\"")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(answered, Ok(true), "the session does not answer on its WebSocket");
    ws
}

#[cfg(feature = "test-hooks")]
#[tokio::test]
async fn bogus_upgrade_requests_cannot_keep_the_real_websocket_from_being_cut_off() {
    use futures_util::StreamExt;

    let _serial = serial().await;
    let server = start(|_| {}).await;
    let addr = server.addr();
    let bystander = Bystander::open(addr, "calm").await;
    let polling = connected_polling(addr).await;
    let ws_path = format!("/socket.io/?EIO=4&transport=websocket&sid={}", polling.sid);
    let mut refused = bogus_upgrades(addr, &ws_path).await;
    let mut ws = real_upgrade(addr, &ws_path).await;

    let cut_at = Instant::now();
    assert!(server.cut_off(&polling.sid), "no socket {}", polling.sid);
    let closed = timeout(PROMPT, async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "cutting the session off did not close its real WebSocket"
    );
    let took = cut_at.elapsed();
    // The refused request's connection was never the session's: it still serves.
    let health = request_on(&mut refused, "GET", "/health", &[], b"")
        .await
        .unwrap();
    assert_eq!(health.status, 200, "{health:?}");
    bystander.assert_served().await;
    eprintln!("bogus upgrades: the real WebSocket closed {took:?} after the cut-off");
    stop(server).await;
}

// ---------------------------------------------------------------------------
// (g) Reservations: JSON only, and forwarded ip:port

async fn reserve_with(addr: std::net::SocketAddr, id: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let body = json!({"sessionId": id, "authKey": "k"}).to_string();
    http_request(addr, "POST", "/api/reserve-session", headers, body.as_bytes())
        .await
        .unwrap()
}

#[tokio::test]
async fn reservations_need_a_json_body_and_a_forwarded_ip_port_counts_as_its_ip() {
    let _serial = serial().await;
    let server = start(|c| {
        c.trust_proxy = Some("x-forwarded-for".parse().unwrap());
        // 30 a minute: a burst of 5.
        c.reserve_rate_per_ip = 30;
    })
    .await;
    let addr = server.addr();
    let bystander = Bystander::open(addr, "calm").await;

    // What a web page can send without a CORS preflight is refused.
    for headers in [
        &[("Content-Type", "text/plain;charset=UTF-8")][..],
        &[("Content-Type", "application/x-www-form-urlencoded")][..],
        &[][..],
    ] {
        let (status, body) = reserve_with(addr, "from-a-page", headers).await;
        assert_eq!(status, 415, "{headers:?}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON refusal");
        assert!(error["error"].is_string(), "{body}");
    }
    let listed = sessions(addr).await;
    assert!(
        listed.iter().all(|s| s["sessionId"] != "from-a-page"),
        "{listed:?}"
    );
    let json_utf8 = [("Content-Type", "application/json; charset=utf-8")];
    assert_eq!(reserve_with(addr, "json-ok", &json_utf8).await.0, 200);

    // A forwarded `ip:port` is that ip: five reservations spend its burst...
    for port in 1..=5 {
        let forwarded = format!("198.51.100.4:{port}");
        let headers = [json_utf8[0], ("X-Forwarded-For", forwarded.as_str())];
        let (status, body) = reserve_with(addr, &format!("fwd-{port}"), &headers).await;
        assert_eq!(status, 200, "{forwarded}: {body}");
    }
    // ...so the same ip without a port is refused, while another ip, and the
    // proxy's own address, keep theirs.
    let as_ip = [json_utf8[0], ("X-Forwarded-For", "198.51.100.4")];
    assert_eq!(reserve_with(addr, "fwd-6", &as_ip).await.0, 429);
    let other = [json_utf8[0], ("X-Forwarded-For", "[2001:db8::5]:443")];
    assert_eq!(reserve_with(addr, "fwd-v6", &other).await.0, 200);
    assert_eq!(reserve_with(addr, "no-header", &json_utf8).await.0, 200);
    bystander.assert_served().await;
    stop(server).await;
}
