//! Issue 7, "Tests": the operations surface seen from outside.
//!
//! - `/metrics` after a conversation: counters moved by exactly what
//!   happened, gauges equal to the live state.
//! - `/ready` while starting, serving and draining, in process and for the
//!   binary on SIGTERM; `/health` stays 200 while draining.
//! - The log-leak test: the binary at `RUST_LOG=trace` logs a whole
//!   conversation without any key, password, ciphertext or plaintext.
//! - `--version`, `/health`'s `version` and `e2e-chat-server healthcheck`.
//! - Issue 15: a fresh binary's `/metrics` has every family of the table in
//!   `src/metrics.rs` with `# HELP`, `# TYPE` and zero values, and the
//!   process figures; the README's metrics table lists the same families; a
//!   second SIGTERM exits at once; `--help` lists every setting with its
//!   default; `check-config` validates and starts nothing; `rust-version` is
//!   what the dependencies need.
//!
//! The metrics recorder is process-global: every test of this binary that
//! runs a server in process takes [`IN_PROCESS`], and metrics assertions
//! compare deltas of two scrapes, never absolute counter values.

mod ops_support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use e2e_chat_server::config::SETTINGS;
use e2e_chat_server::metrics::{Family, Kind, FAMILIES, PROCESS_FAMILIES};
use e2e_chat_server::{Config, Server};
use ops_support::*;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Held by every test that runs a server in this process (see the module doc).
static IN_PROCESS: Mutex<()> = Mutex::const_new(());

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A distinct suffix per call, so ids never collide between tests.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn refuses_connections(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

/// Joins `session` and waits for the join's answers (history, metadata, keys).
async fn join(
    client: &mut WsClient,
    session: &str,
    user: &str,
    auth_key: Option<&str>,
    creator: bool,
    public_key: &str,
) {
    let mut payload = json!({
        "sessionId": session,
        "userId": user,
        "displayName": format!("name of {user}"),
        "publicKey": public_key,
        "isCreator": creator,
    });
    if let Some(key) = auth_key {
        payload["authKey"] = json!(key);
    }
    client.emit("join-session", payload);
    client.recv("messages-history").await;
    client.recv("session-metadata").await;
    client.recv("public-keys-updated").await;
}

// ---------------------------------------------------------------------------
// 1. Metrics
// ---------------------------------------------------------------------------

/// A room of 4 (creator + 3), one broadcast, one direct message, a join
/// refused for a wrong key and a rate-limited send: the counters move by
/// exactly that, and the gauges show the live state.
#[tokio::test]
async fn metrics_count_a_conversation() {
    let _lock = IN_PROCESS.lock().await;
    // One send-message per second and socket, burst 1: a second send right
    // after the first is refused with RATE_LIMITED.
    let config = Config {
        send_rate_per_socket: 1,
        send_burst_per_socket: 1,
        ..Config::local()
    };
    let server = Server::start(config).await.expect("server starts");
    let addr = server.addr();
    let metrics = server.metrics_addr().expect("metrics listener is on by default");
    assert_ne!(metrics.port(), addr.port());

    // Never on the public port.
    let public = get(addr, "/metrics")
        .await
        .expect("GET /metrics on the public port");
    assert_eq!(
        public.status, 404,
        "/metrics must not be served on the public port: {public:?}"
    );

    let before = scrape(metrics).await;
    for (name, kind) in [
        ("chat_sockets", "gauge"),
        ("chat_sessions", "gauge"),
        ("chat_members", "gauge"),
        ("chat_history_bytes", "gauge"),
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some(kind),
            "# TYPE of {name}"
        );
    }
    assert_eq!(before.value("chat_sessions", &[("mode", "group")]), 0.0);
    assert_eq!(before.value("chat_members", &[]), 0.0);
    assert_eq!(before.value("chat_sockets", &[("transport", "websocket")]), 0.0);

    let session = unique("ops-metrics");
    let key = "metrics-room-key";
    reserve(addr, &session, key, "group").await;

    let mut creator = WsClient::connect(addr).await;
    join(&mut creator, &session, "creator", Some(key), true, "pk-creator").await;
    let mut joiners = Vec::new();
    for i in 1..=3 {
        let mut c = WsClient::connect(addr).await;
        join(
            &mut c,
            &session,
            &format!("joiner{i}"),
            Some(key),
            false,
            &format!("pk-{i}"),
        )
        .await;
        joiners.push(c);
    }

    // A join with the wrong key is refused.
    let mut intruder = WsClient::connect(addr).await;
    intruder.emit(
        "join-session",
        json!({ "sessionId": session, "userId": "intruder", "displayName": "x", "publicKey": "pk-x", "isCreator": false, "authKey": "wrong-key" }),
    );
    let refusal = intruder.recv("session-error").await;
    assert_eq!(refusal["error"], "INVALID_KEY", "{refusal}");

    // Broadcast: 3 deliveries.
    creator.emit(
        "send-message",
        json!({ "sessionId": session, "from": "creator", "to": "all", "encrypted": "ct-broadcast", "type": "text", "clientMessageId": "m-1" }),
    );
    creator.recv("message-sent").await;
    for j in &mut joiners {
        let m = j.recv("new-message").await;
        assert_eq!(m["id"], "m-1");
    }
    // Rate-limited: the creator's second send right away.
    creator.emit(
        "send-message",
        json!({ "sessionId": session, "from": "creator", "to": "all", "encrypted": "ct-too-fast", "clientMessageId": "m-limited" }),
    );
    let limited = creator.recv("event-error").await;
    assert_eq!(limited["error"], "RATE_LIMITED", "{limited}");

    // Direct: 1 delivery.
    joiners[0].emit(
        "send-message",
        json!({ "sessionId": session, "from": "joiner1", "to": "joiner2", "encrypted": "ct-direct", "type": "text", "clientMessageId": "m-2" }),
    );
    joiners[0].recv("message-sent").await;
    let direct = joiners[1].recv("new-message").await;
    assert_eq!(direct["id"], "m-2");
    // Nobody else got anything more (and m-limited never went out).
    for c in [&mut creator, &mut joiners[2]] {
        assert!(c
            .try_recv("new-message", Duration::from_millis(200))
            .await
            .is_none());
    }

    let after = scrape(metrics).await;
    for counter in [
        "chat_messages_total",
        "chat_deliveries_total",
        "chat_joins_total",
        "chat_session_errors_total",
        "chat_event_errors_total",
        "chat_rate_limited_total",
        "chat_received_bytes_total",
        "chat_sent_bytes_total",
    ] {
        assert_eq!(
            after.types.get(counter).map(String::as_str),
            Some("counter"),
            "# TYPE of {counter}"
        );
    }
    let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);

    assert_eq!(delta("chat_messages_total", &[]), 2.0, "chat_messages_total");
    assert_eq!(
        delta("chat_deliveries_total", &[]),
        4.0,
        "chat_deliveries_total (3 broadcast + 1 direct)"
    );
    assert_eq!(delta("chat_joins_total", &[]), 4.0, "chat_joins_total");
    assert_eq!(
        delta("chat_session_errors_total", &[("code", "INVALID_KEY")]),
        1.0,
        "chat_session_errors_total{{code=INVALID_KEY}}"
    );
    assert_eq!(
        delta("chat_event_errors_total", &[("code", "RATE_LIMITED")]),
        1.0,
        "chat_event_errors_total{{code=RATE_LIMITED}}"
    );
    assert_eq!(
        delta(
            "chat_rate_limited_total",
            &[("scope", "socket"), ("what", "send-message")]
        ),
        1.0,
        "chat_rate_limited_total{{scope=socket,what=send-message}}"
    );
    assert_eq!(
        delta("chat_event_duration_seconds_count", &[("event", "send-message")]),
        3.0,
        "every send-message handled, the refused one included"
    );
    assert_eq!(
        delta("chat_event_duration_seconds_count", &[("event", "join-session")]),
        5.0,
        "every join-session handled, the refused one included"
    );
    assert!(
        delta("chat_received_bytes_total", &[]) > 0.0,
        "chat_received_bytes_total moved"
    );
    assert!(
        delta("chat_sent_bytes_total", &[]) > 0.0,
        "chat_sent_bytes_total moved"
    );
    assert_eq!(
        after.types.get("chat_event_duration_seconds").map(String::as_str),
        Some("histogram")
    );

    // Gauges: the live state of this server.
    assert_eq!(
        after.value("chat_sessions", &[("mode", "group")]),
        1.0,
        "chat_sessions{{mode=group}}"
    );
    assert_eq!(after.value("chat_sessions", &[("mode", "private")]), 0.0);
    assert_eq!(after.value("chat_sessions", &[("mode", "password")]), 0.0);
    assert_eq!(after.value("chat_members", &[]), 4.0, "chat_members");
    assert_eq!(
        after.value("chat_sockets", &[("transport", "websocket")]),
        5.0,
        "chat_sockets{{transport=websocket}} (4 members + the refused socket)"
    );
    assert_eq!(after.value("chat_sockets", &[("transport", "polling")]), 0.0);
    assert!(
        after.value("chat_history_bytes", &[]) > 0.0,
        "history holds the two messages"
    );

    // Everyone leaves: members and sockets go back to 0, the session stays
    // (it is kept for the idle timeout).
    creator.close().await;
    intruder.close().await;
    for j in joiners {
        j.close().await;
    }
    let deadline = Instant::now() + TIMEOUT;
    let last = loop {
        let s = scrape(metrics).await;
        let settled = s.value("chat_members", &[]) == 0.0
            && s.value("chat_sockets", &[("transport", "websocket")]) == 0.0;
        if settled || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        last.value("chat_members", &[]),
        0.0,
        "chat_members after everyone left"
    );
    assert_eq!(
        last.value("chat_sockets", &[("transport", "websocket")]),
        0.0,
        "chat_sockets after everyone left"
    );
    assert_eq!(
        last.value("chat_sessions", &[("mode", "group")]),
        1.0,
        "the session outlives its members"
    );
    assert_eq!(
        last.value("chat_joins_total", &[]) - before.value("chat_joins_total", &[]),
        4.0,
        "departures are not joins"
    );

    server.shutdown().await;
}

/// The exposition parser itself, on the text format's corner cases.
#[test]
fn prometheus_text_parser() {
    let s = Scrape::parse(
        "# HELP x_total a counter\n# TYPE x_total counter\nx_total 3\n\
         y{b=\"2\",a=\"q\\\"uote\"} 1.5e3\n\
         h_bucket{le=\"+Inf\",event=\"e\"} 7 1700000000000\n\
         g NaN\n",
    );
    assert_eq!(s.value("x_total", &[]), 3.0);
    assert_eq!(s.types["x_total"], "counter");
    assert_eq!(s.helps["x_total"], "a counter");
    assert_eq!(s.value("y", &[("a", "q\"uote"), ("b", "2")]), 1500.0);
    assert_eq!(s.value("h_bucket", &[("event", "e"), ("le", "+Inf")]), 7.0);
    assert!(s.value("g", &[]).is_nan());
    assert!(!s.has("missing", &[]));
}

/// The binary on its own ports, ready; returns it with its public and
/// metrics addresses.
async fn spawn_ready(name: &str, env: &[(&str, &str)]) -> (ServerProcess, SocketAddr, SocketAddr) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cmd = command(name);
    cmd.env("HOST", "127.0.0.1")
        .env("PORT", addr.port().to_string())
        .env("METRICS_ADDR", metrics.to_string())
        .env("LOG_FORMAT", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut process = ServerProcess::spawn(cmd);
    wait_ready(addr, &mut process, Duration::from_secs(10)).await;
    (process, addr, metrics)
}

/// A fresh binary, before any traffic: every family of the table with its
/// `# HELP` and `# TYPE`, every known series at zero, nothing that is not in
/// the table, and the process figures.
#[tokio::test]
async fn a_fresh_server_exports_every_family_described_and_zeroed() {
    let (mut process, _, metrics) = spawn_ready("fresh-metrics", &[("SHUTDOWN_DRAIN_SECS", "0")]).await;
    let scrape = scrape(metrics).await;

    let described = |family: &Family| {
        let name = family.name;
        assert_eq!(
            scrape.helps.get(name).map(String::as_str),
            Some(family.help),
            "# HELP of {name}"
        );
        assert_eq!(
            scrape.types.get(name).map(String::as_str),
            Some(family.kind.as_str()),
            "# TYPE of {name}"
        );
    };
    for family in FAMILIES {
        let name = family.name;
        described(family);
        for labels in family.known_series() {
            let zero = |name: &str, labels: &[(&str, &str)]| {
                assert!(
                    scrape.has(name, labels),
                    "{} is not exported",
                    sample_key(name, labels)
                );
                assert_eq!(scrape.value(name, labels), 0.0, "{}", sample_key(name, labels));
            };
            if family.kind == Kind::Histogram {
                zero(&format!("{name}_count"), &labels);
                zero(&format!("{name}_sum"), &labels);
                let mut inf = labels.clone();
                inf.push(("le", "+Inf"));
                zero(&format!("{name}_bucket"), &inf);
            } else {
                zero(name, &labels);
            }
        }
    }
    for mode in ["group", "private", "password"] {
        assert!(
            scrape.has("chat_sessions", &[("mode", mode)]),
            "chat_sessions{{mode={mode}}}"
        );
    }

    for family in PROCESS_FAMILIES {
        let name = family.name;
        described(family);
        assert!(scrape.has(name, &[]), "{name} is not exported");
    }
    let resident = scrape.value("process_resident_memory_bytes", &[]);
    assert!(resident > 1_000_000.0, "process_resident_memory_bytes {resident}");
    assert!(scrape.value("process_virtual_memory_bytes", &[]) >= resident);
    let open = scrape.value("process_open_fds", &[]);
    assert!(
        open >= 3.0 && scrape.value("process_max_fds", &[]) >= open,
        "file descriptors"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = scrape.value("process_start_time_seconds", &[]);
    assert!(
        (now - 60.0..=now + 1.0).contains(&started),
        "process_start_time_seconds {started}, now {now}"
    );

    let known: Vec<&str> = FAMILIES.iter().chain(PROCESS_FAMILIES).map(|f| f.name).collect();
    for name in scrape.types.keys() {
        assert!(
            known.contains(&name.as_str()),
            "{name} is exported but not in the table of src/metrics.rs"
        );
    }

    process.sigterm();
    let status = process
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

/// README "Operations": the metrics table lists every family, with its type.
#[test]
fn the_readme_lists_every_metric_family() {
    let readme = include_str!("../README.md");
    let table = readme
        .split("**Metrics**")
        .nth(1)
        .expect("README has a **Metrics** paragraph");
    let mut listed = BTreeMap::new();
    for row in table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for name in cells[1].split('`').skip(1).step_by(2) {
            let name = name.split('{').next().unwrap().to_owned();
            listed.insert(name, cells[2].to_owned());
        }
    }
    let families: Vec<&Family> = FAMILIES.iter().chain(PROCESS_FAMILIES).collect();
    for family in &families {
        assert_eq!(
            listed.get(family.name).map(String::as_str),
            Some(family.kind.as_str()),
            "README's metrics table: {} ({})",
            family.name,
            family.kind.as_str()
        );
    }
    assert_eq!(
        listed.len(),
        families.len(),
        "README lists families the server does not export: {listed:?}"
    );
}

// ---------------------------------------------------------------------------
// 2. Readiness
// ---------------------------------------------------------------------------

/// How long the tests' drains last.
const DRAIN: Duration = Duration::from_secs(2);

/// Polls `/ready` and `/health` during the first part of a drain that
/// started at `drain_started`: `/ready` must turn 503 draining and stay so,
/// `/health` must stay 200, and both must be served. Only the first three
/// quarters of the drain are judged, so that a slow machine cannot push a
/// request past the drain's end.
async fn observe_drain(addr: SocketAddr, drain_started: Instant) {
    let window_end = drain_started + DRAIN * 3 / 4;
    let mut draining_seen = 0;
    while Instant::now() < window_end {
        let ready = get(addr, "/ready").await;
        let in_window = Instant::now() < window_end;
        match ready {
            Ok(ready) if ready.status == 200 => assert_eq!(
                draining_seen,
                0,
                "/ready back to 200 {:?} into the drain",
                drain_started.elapsed()
            ),
            Ok(ready) => {
                assert_eq!(ready.status, 503, "/ready during the drain: {ready:?}");
                assert_eq!(ready.json(), json!({ "status": "draining" }));
                if in_window {
                    draining_seen += 1;
                }
            }
            Err(e) if in_window => panic!(
                "/ready not served {:?} into the drain: {e}",
                drain_started.elapsed()
            ),
            Err(_) => break,
        }
        match get(addr, "/health").await {
            Ok(health) => {
                assert_eq!(health.status, 200, "/health during the drain: {health:?}");
                assert_eq!(health.json()["status"], "ok");
            }
            Err(e) if Instant::now() < window_end => panic!(
                "/health not served {:?} into the drain: {e}",
                drain_started.elapsed()
            ),
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        draining_seen >= 1,
        "/ready never answered 503 draining in the first {:?} of the drain",
        DRAIN * 3 / 4
    );
}

#[tokio::test]
async fn ready_in_process_then_draining_on_shutdown() {
    let _lock = IN_PROCESS.lock().await;
    let config = Config {
        shutdown_drain: DRAIN,
        ..Config::local()
    };
    let server = Server::start(config).await.expect("server starts");
    let addr = server.addr();
    let metrics = server.metrics_addr().expect("metrics on");

    let ready = get(addr, "/ready").await.expect("/ready");
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.json(), json!({ "status": "ready" }));
    let health = get(addr, "/health").await.expect("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["version"], VERSION, "/health carries the version");

    // A connected socket is still served during the drain.
    let mut client = WsClient::connect(addr).await;

    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    observe_drain(addr, started).await;
    client.emit("get-public-keys", json!({ "sessionId": "nope", "userId": "u" }));
    assert_eq!(
        client.recv("public-keys-updated").await,
        json!([]),
        "socket served during the drain"
    );

    tokio::time::timeout(DRAIN + Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown finishes within 5 s of the drain")
        .expect("shutdown task");
    assert!(
        started.elapsed() >= DRAIN,
        "shutdown returned after {:?}, before the {DRAIN:?} drain",
        started.elapsed()
    );
    assert!(
        client.wait_closed(Duration::from_secs(2)).await,
        "the socket was closed by the shutdown"
    );
    assert!(
        refuses_connections(addr),
        "the public port still accepts after shutdown"
    );
    assert!(
        refuses_connections(metrics),
        "the metrics port still accepts after shutdown"
    );
}

/// The binary: `/ready` is refused or 503 "starting" until it is 200; on
/// SIGTERM it is 503 "draining" for SHUTDOWN_DRAIN_SECS while `/health`
/// stays 200, then the process exits 0.
#[tokio::test]
async fn binary_ready_then_draining_on_sigterm() {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = command("sigterm");
    cmd.env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("SHUTDOWN_DRAIN_SECS", DRAIN.as_secs().to_string())
        .env("LOG_FORMAT", "json");
    let mut process = ServerProcess::spawn(cmd);
    wait_ready(addr, &mut process, Duration::from_secs(10)).await;

    let health = get(addr, "/health").await.expect("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["version"], VERSION, "/health carries the version");

    let started = Instant::now();
    process.sigterm();
    observe_drain(addr, started).await;
    let status = process.wait_exit(DRAIN + Duration::from_secs(5)).await;
    let took = started.elapsed();
    let output = process.output_so_far();
    let status = status.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM\n{output}"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}\n{output}"
    );
    assert!(
        took >= DRAIN,
        "exited {took:?} after SIGTERM, before the {DRAIN:?} drain"
    );
    assert!(refuses_connections(addr), "the port still accepts after exit");

    let (stdout, _) = process.finish();
    let messages: Vec<String> = stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(str::to_owned))
        .collect();
    for expected in ["starting", "listening", "shutting down", "shut down"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} log line in {messages:?}"
        );
    }
}

/// During a long drain a second SIGTERM ends the process at once, with
/// status 130 and a log line that says so.
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let (mut process, addr, _) = spawn_ready("second-signal", &[("SHUTDOWN_DRAIN_SECS", "30")]).await;
    process.sigterm();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = get(addr, "/ready").await.expect("/ready during the drain");
        if ready.status == 503 {
            assert_eq!(ready.json(), json!({ "status": "draining" }));
            break;
        }
        assert!(Instant::now() < deadline, "/ready never turned 503 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = Instant::now();
    process.sigterm();
    let status = process.wait_exit(Duration::from_secs(3)).await;
    let output = process.output_so_far();
    let status = status.unwrap_or_else(|| panic!("still running 3 s after the second SIGTERM\n{output}"));
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "exited {:?} after the second signal",
        second.elapsed()
    );
    assert!(output.contains("second signal during shutdown"), "{output}");
}

// ---------------------------------------------------------------------------
// 3. Nothing secret in the logs
// ---------------------------------------------------------------------------

/// Standard base64 (the password rooms' encoding).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_the_standard_encoding() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"pw"), "cHc=");
}

/// The binary at `RUST_LOG=trace`, `LOG_FORMAT=json`, `DEBUG=true` plays a
/// whole conversation (group and password rooms) over real sockets; no
/// secret it carried appears in stdout or stderr.
#[tokio::test]
async fn logs_of_a_whole_conversation_leak_no_secret() {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = command("logleak");
    cmd.env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("SHUTDOWN_DRAIN_SECS", "0")
        .env("LOG_FORMAT", "json")
        .env("DEBUG", "true")
        .env("RUST_LOG", "trace");
    let mut process = ServerProcess::spawn(cmd);
    wait_ready(addr, &mut process, Duration::from_secs(10)).await;

    // Every secret is a distinctive string that cannot appear by chance.
    let group = "LeakGroupRoomId7Q3";
    let group_key = "AuthKeyCanaryGroupX9v2";
    let wrong_key = "WrongKeyCanaryZ81m";
    let pk_alice = "PubKeyCanaryAliceQ4t";
    let pk_bob = "PubKeyCanaryBobW7n";
    let pk_alice_new = "PubKeyCanaryAliceRotatedK2";
    let pk_carol = "PubKeyCanaryCarolE5j";
    let wrapped_alice = "WrappedKeyCanaryAliceH3s";
    let wrapped_bob = "WrappedKeyCanaryBobU6d";
    let cipher_1 = "CipherCanaryOneN8f";
    let plain_1 = "PlainCanaryOneB2x";
    let cipher_2 = "CipherCanaryTwoP4z";
    let plain_2 = "PlainCanaryTwoM1c";
    let cipher_pw = "CipherCanaryPwRoomY5g";
    let plain_pw = "PlainCanaryPwRoomF9k";
    let pw_room = "LeakPwRoomId4T6";
    let pw_room_key = "AuthKeyCanaryPwRoomL3w";
    let password = "PasswordCanaryS7r";
    let password_b64 = base64(password.as_bytes());
    let wrong_password = "WrongPasswordCanaryV2e";
    let wrong_password_b64 = base64(wrong_password.as_bytes());
    let pw_auth = format!("{pw_room_key}:{password_b64}");

    // --- group room ---
    reserve(addr, group, group_key, "group").await;
    let mut alice = WsClient::connect(addr).await;
    // The stock client asks for keys once before it joins.
    alice.emit(
        "get-public-keys",
        json!({ "sessionId": format!("{group}:{group_key}"), "userId": "alice" }),
    );
    alice.recv("public-keys-updated").await;
    join(&mut alice, group, "alice", Some(group_key), true, pk_alice).await;
    let mut bob = WsClient::connect(addr).await;
    join(
        &mut bob,
        &format!("{group}:{group_key}"),
        "bob",
        None,
        false,
        pk_bob,
    )
    .await;
    alice.recv("user-joined").await;

    let mut mallory = WsClient::connect(addr).await;
    mallory.emit(
        "join-session",
        json!({ "sessionId": group, "userId": "mallory", "displayName": "m", "publicKey": "PubKeyCanaryMallory", "isCreator": false, "authKey": wrong_key }),
    );
    assert_eq!(mallory.recv("session-error").await["error"], "INVALID_KEY");

    alice.emit(
        "set-session-key",
        json!({ "sessionId": group, "encryptedKeys": { "alice": wrapped_alice, "bob": wrapped_bob } }),
    );
    bob.recv("session-key-available").await;
    alice.emit(
        "save-public-key",
        json!({ "sessionId": group, "userId": "alice", "publicKey": pk_alice_new, "displayName": "Alice" }),
    );
    bob.recv("public-keys-updated").await;
    alice.emit(
        "typing",
        json!({ "sessionId": group, "userId": "alice", "displayName": "Alice" }),
    );
    bob.recv("user-typing").await;
    alice.emit(
        "stopped-typing",
        json!({ "sessionId": group, "userId": "alice", "displayName": "Alice" }),
    );
    bob.recv("user-stopped-typing").await;

    alice.emit(
        "send-message",
        json!({ "sessionId": group, "from": "alice", "to": "all", "encrypted": cipher_1, "originalContent": plain_1, "type": "text", "clientMessageId": "leak-m1" }),
    );
    assert_eq!(alice.recv("message-sent").await["originalContent"], plain_1);
    assert_eq!(bob.recv("new-message").await["encrypted"], cipher_1);
    bob.emit(
        "send-message",
        json!({ "sessionId": format!("{group}:{group_key}"), "from": "bob", "to": "alice", "encrypted": { "iv": cipher_2, "data": cipher_2 }, "originalContent": plain_2, "type": "file" }),
    );
    bob.recv("message-sent").await;
    alice.recv("new-message").await;
    // Refused events (their payloads carry secrets too).
    mallory.emit(
        "send-message",
        json!({ "sessionId": group, "from": "mallory", "encrypted": cipher_1, "originalContent": plain_1 }),
    );
    assert_eq!(mallory.recv("event-error").await["error"], "NOT_IN_SESSION");
    bob.emit(
        "set-session-key",
        json!({ "sessionId": group, "encryptedKeys": { "bob": wrapped_bob } }),
    );
    assert_eq!(bob.recv("event-error").await["error"], "NOT_ALLOWED");
    bob.emit("send-message", json!({ "sessionId": group, "from": "bob", "to": "nobody", "encrypted": cipher_2, "originalContent": plain_2 }));
    assert_eq!(bob.recv("event-error").await["error"], "UNKNOWN_RECIPIENT");
    bob.emit("send-message", json!({ "sessionId": group, "from": "bob", "encrypted": 12, "originalContent": { "x": plain_2 }, "clientMessageId": 5 }));
    assert_eq!(bob.recv("event-error").await["error"], "INVALID_PAYLOAD");

    bob.emit(
        "file-downloaded",
        json!({ "sessionId": group, "downloadedBy": "bob", "senderId": "alice", "fileName": "report.pdf", "timestamp": 1 }),
    );
    alice.recv("download-notification").await;

    // A late joiner gets history and the wrapped key (none for carol).
    let mut carol = WsClient::connect(addr).await;
    join(&mut carol, group, "carol", Some(group_key), false, pk_carol).await;

    bob.emit("leave-session", json!({ "sessionId": group, "userId": "bob" }));
    alice.recv("user-left").await;

    // --- password room ---
    reserve(addr, pw_room, &pw_auth, "password").await;
    let mut dave = WsClient::connect(addr).await;
    join(
        &mut dave,
        pw_room,
        "dave",
        Some(&pw_auth),
        true,
        "PubKeyCanaryDaveA8h",
    )
    .await;
    let mut eve = WsClient::connect(addr).await;
    eve.emit(
        "join-session",
        json!({ "sessionId": format!("{pw_room}:password:{wrong_password_b64}"), "userId": "eve", "displayName": "Eve", "publicKey": "PubKeyCanaryEveG6p", "isCreator": false }),
    );
    assert_eq!(eve.recv("session-error").await["error"], "INVALID_PASSWORD");
    let pw_link = format!("{pw_room}:password:{password_b64}");
    let mut frank = WsClient::connect(addr).await;
    join(&mut frank, &pw_link, "frank", None, false, "PubKeyCanaryFrankR1y").await;
    frank.emit(
        "send-message",
        json!({ "sessionId": pw_link, "from": "frank", "to": "dave", "encrypted": cipher_pw, "originalContent": plain_pw, "clientMessageId": "leak-pw-1" }),
    );
    frank.recv("message-sent").await;
    dave.recv("new-message").await;

    // HTTP API requests are traced too.
    let listing = get(addr, "/sessions").await.expect("/sessions");
    assert_eq!(listing.status, 200, "/sessions with DEBUG=true");
    let health = get(addr, "/health").await.expect("/health");
    assert_eq!(health.status, 200);

    // Disconnects (departures announced by the server).
    for c in [alice, carol, mallory, dave, eve, frank, bob] {
        c.close().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    process.sigterm();
    let status = process.wait_exit(Duration::from_secs(8)).await;
    let output = process.output_so_far();
    let status = status.unwrap_or_else(|| panic!("still running after SIGTERM\n{output}"));
    assert_eq!(status.code(), Some(0), "exit status: {status}\n{output}");
    let (stdout, stderr) = process.finish();
    // Kept for whoever debugs a failure (target/tmp/ops/logleak/).
    let dir = scratch_dir("logleak");
    let _ = std::fs::write(dir.join("stdout.log"), stdout.join("\n"));
    let _ = std::fs::write(dir.join("stderr.log"), stderr.join("\n"));

    // Sanity: the logs are there (trace level, a real conversation).
    assert!(
        stdout.len() >= 20,
        "expected a trace-level log, got {} lines\n{output}",
        stdout.len()
    );

    let secrets: Vec<(&str, String)> = vec![
        ("group auth key", group_key.into()),
        ("wrong auth key", wrong_key.into()),
        ("password room auth key", pw_room_key.into()),
        ("password", password.into()),
        ("password (base64)", password_b64.clone()),
        ("wrong password", wrong_password.into()),
        ("wrong password (base64)", wrong_password_b64.clone()),
        ("public key alice", pk_alice.into()),
        ("public key bob", pk_bob.into()),
        ("public key alice rotated", pk_alice_new.into()),
        ("public key carol", pk_carol.into()),
        ("public key (password room)", "PubKeyCanary".into()),
        ("wrapped key alice", wrapped_alice.into()),
        ("wrapped key bob", wrapped_bob.into()),
        ("ciphertext 1", cipher_1.into()),
        ("ciphertext 2", cipher_2.into()),
        ("ciphertext password room", cipher_pw.into()),
        ("plaintext 1", plain_1.into()),
        ("plaintext 2", plain_2.into()),
        ("plaintext password room", plain_pw.into()),
        // The README: "the session id as an 8-hex-digit hash, never the id itself".
        ("session id (group)", group.into()),
        ("session id (password room)", pw_room.into()),
    ];
    let mut leaks = Vec::new();
    for (stream, lines) in [("stdout", &stdout), ("stderr", &stderr)] {
        for (n, line) in lines.iter().enumerate() {
            for (what, secret) in &secrets {
                if line.contains(secret.as_str()) {
                    leaks.push(format!("{stream} line {}: {what} ({secret}) in {line}", n + 1));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secrets in the logs:\n{}", leaks.join("\n"));

    // LOG_FORMAT=json: every stdout line is one JSON object.
    let mut records = Vec::new();
    for (n, line) in stdout.iter().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => records.push(v),
            other => panic!("stdout line {} is not a JSON object ({other:?}): {line:?}", n + 1),
        }
    }

    // The start-up line: the version and the effective settings.
    let start = records
        .iter()
        .find(|r| r["message"] == "starting")
        .unwrap_or_else(|| panic!("no start-up line\n{output}"));
    let start_text = start.to_string();
    assert!(
        start_text.contains("settings"),
        "start-up line without settings: {start_text}"
    );
    assert!(
        start_text.contains(VERSION),
        "start-up line without the version: {start_text}"
    );
    assert_eq!(start["version"], VERSION, "{start_text}");
    let settings = start["settings"].as_str().unwrap_or_default();
    for expected in [
        "PORT=",
        "LOG_FORMAT=json",
        "DEBUG=true",
        "SHUTDOWN_DRAIN_SECS=0",
        "METRICS_ADDR=",
    ] {
        assert!(
            settings.contains(expected),
            "settings without {expected}: {settings}"
        );
    }
    let listening = records.iter().find(|r| r["message"] == "listening");
    assert!(
        listening.is_some_and(|r| r.to_string().contains(&addr.to_string())),
        "no listening line with {addr}\n{output}"
    );

    // The events of note are logged, with the session id hashed.
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["message"] == "join refused")
        .collect();
    assert!(
        refused.iter().any(|r| r["error"] == "INVALID_KEY")
            && refused.iter().any(|r| r["error"] == "INVALID_PASSWORD"),
        "refused joins are logged with their code: {refused:?}"
    );
    let tagged: Vec<&str> = records
        .iter()
        .filter(|r| r["message"] == "member joined")
        .filter_map(|r| r["session"].as_str())
        .collect();
    assert!(!tagged.is_empty(), "no 'member joined' line\n{output}");
    for tag in tagged {
        assert!(
            tag.len() == 8 && tag.chars().all(|c| c.is_ascii_hexdigit()),
            "session tag {tag:?} is not 8 hex digits"
        );
    }
}

// ---------------------------------------------------------------------------
// 4. Version and healthcheck
// ---------------------------------------------------------------------------

#[test]
fn version_flag_prints_the_package_version() {
    let out = command("version")
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(out.status.success(), "--version: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), format!("e2e-chat-server {VERSION}"));
}

#[tokio::test]
async fn health_reports_the_package_version() {
    let _lock = IN_PROCESS.lock().await;
    let server = Server::start(Config::local()).await.expect("server starts");
    let health = get(server.addr(), "/health").await.expect("/health");
    assert_eq!(health.status, 200);
    let body = health.json();
    assert_eq!(body["version"], VERSION, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    server.shutdown().await;
}

fn healthcheck(port: u16) -> std::process::Output {
    command("healthcheck")
        .arg("healthcheck")
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .output()
        .expect("run healthcheck")
}

#[tokio::test]
async fn healthcheck_subcommand_probes_the_running_server() {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = command("healthcheck-server");
    cmd.env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("METRICS_ADDR", "off")
        .env("SHUTDOWN_DRAIN_SECS", "0");
    let mut process = ServerProcess::spawn(cmd);
    wait_ready(addr, &mut process, Duration::from_secs(10)).await;

    let up = tokio::task::spawn_blocking(move || healthcheck(port))
        .await
        .unwrap();
    assert_eq!(
        up.status.code(),
        Some(0),
        "healthcheck against a running server: {up:?}"
    );

    process.sigterm();
    let status = process
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    drop(process);

    let down = tokio::task::spawn_blocking(move || healthcheck(port))
        .await
        .unwrap();
    assert!(
        !down.status.success(),
        "healthcheck with nothing listening: {down:?}"
    );
    assert_ne!(down.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("unhealthy"),
        "healthcheck says why: {down:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. Settings and toolchain
// ---------------------------------------------------------------------------

/// `--help`: every setting of `SETTINGS`, each followed by its default.
#[test]
fn help_lists_every_setting_with_its_default() {
    let out = command("help").arg("--help").output().expect("run --help");
    assert!(out.status.success(), "--help: {out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = help.lines().collect();
    for s in SETTINGS {
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(&format!("{} ", s.name)))
            .unwrap_or_else(|| panic!("--help does not list {}:\n{help}", s.name));
        assert!(
            lines[at].contains(s.help),
            "--help line of {}: {}",
            s.name,
            lines[at]
        );
        let default = if s.default.is_empty() { "unset" } else { s.default };
        assert_eq!(
            lines.get(at + 1).map(|l| l.trim()),
            Some(format!("default: {default}").as_str()),
            "default of {} in --help",
            s.name
        );
    }
}

/// `check-config` validates the environment and exits: 0 and the effective
/// settings when valid (a cluster's Redis is not contacted), 2 and the
/// variable when not; nothing is ever bound.
#[test]
fn check_config_validates_and_starts_nothing() {
    let port = free_port();
    let check = |name: &str, env: &[(&str, &str)]| {
        let mut cmd = command(name);
        cmd.arg("check-config")
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = std::time::Instant::now();
        let out = cmd.output().expect("run check-config");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "check-config took {:?}",
            started.elapsed()
        );
        out
    };

    let ok = check("check-config-ok", &[]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("settings are valid") && stdout.contains(&format!("PORT={port}")),
        "{stdout}"
    );

    // A valid cluster configuration whose Redis does not exist: still 0.
    let cluster = check("check-config-cluster", &[("REDIS_URL", "redis://127.0.0.1:1")]);
    assert_eq!(cluster.status.code(), Some(0), "{cluster:?}");

    for (name, value) in [("PORT", "abc"), ("METRICS_ADDR", "9464"), ("LOG_FORMAT", "xml")] {
        let bad = check("check-config-bad", &[(name, value)]);
        assert_eq!(bad.status.code(), Some(2), "{name}={value}: {bad:?}");
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains(name),
            "{name}={value}: {bad:?}"
        );
    }
    let bad = check(
        "check-config-cluster-bad",
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("NODE_TIMEOUT_SECS", "3"),
            ("STORE_TIMEOUT_MS", "2000"),
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("STORE_TIMEOUT_MS"),
        "{bad:?}"
    );

    assert!(
        refuses_connections(([127, 0, 0, 1], port).into()),
        "something listens on {port}"
    );
}

fn version_tuple(v: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = v
        .split('.')
        .map(|p| p.parse().expect("a numeric version"))
        .collect();
    parts.resize(3, 0);
    parts
}

/// `rust-version` in Cargo.toml (and the README's requirement) is the
/// highest `rust-version` of the packages the build resolves: socketioxide
/// 0.18.9's 1.94 today.
#[test]
fn rust_version_is_what_the_dependencies_need() {
    let ours = env!("CARGO_PKG_RUST_VERSION");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
    let (needed, by) = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["name"] != env!("CARGO_PKG_NAME"))
        .filter_map(|p| {
            Some((
                version_tuple(p["rust_version"].as_str()?),
                format!("{} {}", p["name"], p["version"]),
            ))
        })
        .max()
        .expect("some package declares a rust-version");
    assert_eq!(
        version_tuple(ours),
        needed,
        "rust-version {ours}, but {by} needs {needed:?}"
    );
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(&format!("a Rust toolchain ({ours} or newer")),
        "the README's toolchain requirement is not {ours}"
    );
}
