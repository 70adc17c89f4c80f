//! Support for `tests/attacks.rs`: a server in-process or as the real
//! binary, a raw Engine.IO/Socket.IO WebSocket client that records every
//! packet with its arrival time, hand-made WebSocket frames, plain HTTP
//! calls, and the "healthy pair" every attack ends with.
//!
//! Kept apart from `tests/common` on purpose: the attacks need byte-level
//! control (garbage packets, forged frame headers, a socket that stops
//! reading) and must not change when the functional suites' helpers do.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_chat_server::{Config, RunningServer, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Longest any single wait may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(5);
/// What "promptly" means for the healthy pair and `/health`.
pub const PROMPT: Duration = Duration::from_secs(1);

/// Every case takes this lock: several assert timings, and cases running
/// side by side on a 2-core machine would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

// ---------------------------------------------------------------------------
// Servers

/// The configuration every attack starts from: documented defaults on
/// 127.0.0.1:0 with the debug listing on.
pub fn base_config() -> Config {
    Config {
        debug: true,
        ..Config::local()
    }
}

pub async fn start(adjust: impl FnOnce(&mut Config)) -> RunningServer {
    // ATTACK_LOG=warn (or any filter) shows the in-process server's logs.
    if let Ok(filter) = std::env::var("ATTACK_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let mut config = base_config();
    adjust(&mut config);
    timeout(WAIT, Server::start(config))
        .await
        .expect("server start timed out")
        .expect("server failed to start")
}

pub async fn stop(server: RunningServer) {
    timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown took longer than 10 s");
}

/// The real binary, started with environment variables, in an empty working
/// directory (so no `.env` is read), its output in a log file.
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Spawned {
    pub fn binary() -> String {
        // scripts/test.sh exports the release binary it built; otherwise the
        // binary cargo built for this test run.
        std::env::var("E2E_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_e2e-chat-server").to_string())
    }

    pub async fn start(name: &str, vars: &[(&str, String)]) -> Spawned {
        let dir = std::env::temp_dir().join(format!("e2e-attacks-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("server.log");
        for _attempt in 0..5 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let out = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(Self::binary());
            cmd.current_dir(&dir)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOST", "127.0.0.1")
                .env("PORT", port.to_string())
                .env("RUST_LOG", "warn")
                // Several servers run at once: no fixed metrics port.
                .env("METRICS_ADDR", "127.0.0.1:0")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            for (k, v) in vars {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("cannot start the server binary");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // e.g. the port was taken meanwhile: try another
                }
                if let Ok((200, _)) = http_get(addr, "/health").await {
                    return Spawned { child, addr, log };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "the server binary did not come up; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} {}", self.pid()))
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Plain HTTP (hand-written HTTP/1.1 on a fresh connection every time, so a
// check never rides on a pooled connection that slipped past an attack)

/// `GET path` on a new connection: status and body, or an I/O error text.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path, &[], b"").await
}

/// `GET path` on a new connection: status, response head and body.
pub async fn http_get_with_head(addr: SocketAddr, path: &str) -> Result<(u16, String, String), String> {
    let go = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw).to_string();
        let head = text.split("\r\n\r\n").next().unwrap_or_default().to_string();
        let (status, body) = parse_response(&raw)?;
        Ok((status, head, body))
    };
    timeout(WAIT, go).await.map_err(|_| "timed out".to_string())?
}

pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let go = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let host = addr.to_string();
        let mut all = vec![("Connection", "close")];
        all.extend_from_slice(headers);
        write_request(&mut stream, method, path, &host, &all, body).await?;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        parse_response(&raw)
    };
    timeout(WAIT, go).await.map_err(|_| "timed out".to_string())?
}

/// Writes an HTTP/1.1 request on `stream`: its head (`Host`, `Content-Length`
/// and `headers`), then `body`. A refused body may be cut short by the
/// server: not an error here.
pub async fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), String> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.write_all(body).await;
    Ok(())
}

fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a chunked answer, as far as its chunks are whole.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET /health`: asserts 200 with `status: ok` within [`PROMPT`]; returns
/// the body and how long it took.
pub async fn assert_health(addr: SocketAddr) -> (Value, Duration) {
    let started = Instant::now();
    let (status, body) = http_get(addr, "/health").await.expect("GET /health failed");
    let took = started.elapsed();
    assert_eq!(status, 200, "/health: {body}");
    assert!(took < PROMPT, "/health took {took:?}");
    let body: Value = serde_json::from_str(&body).expect("/health is JSON");
    assert_eq!(body["status"], "ok", "{body}");
    (body, took)
}

/// The debug listing (`DEBUG=true`).
pub async fn sessions(addr: SocketAddr) -> Vec<Value> {
    let (status, body) = http_get(addr, "/sessions").await.expect("GET /sessions");
    assert_eq!(status, 200, "/sessions: {body}");
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

pub async fn reserve(addr: SocketAddr, session: &str, key: &str, mode: &str) -> (u16, String) {
    let body = json!({"sessionId": session, "authKey": key, "chatMode": mode}).to_string();
    http_request(
        addr,
        "POST",
        "/api/reserve-session",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
    .expect("reserve request")
}

// ---------------------------------------------------------------------------
// A raw WebSocket Engine.IO/Socket.IO client

/// One Socket.IO event as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub name: String,
    pub data: Value,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Received>,
    /// Every raw Engine.IO text packet, in order.
    raw: Vec<String>,
    /// The Socket.IO namespace connect answer (`40{..}`) was seen.
    connected: bool,
    /// Socket.IO CONNECT_ERROR packets (`44..`).
    connect_errors: Vec<String>,
    /// A Socket.IO DISCONNECT (`41`) or Engine.IO close (`1`) came.
    told_disconnect: bool,
    /// The WebSocket is gone.
    closed: bool,
    closed_at: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    version: watch::Sender<u64>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.version.send_modify(|v| *v += 1);
    }

    async fn wait_for<T>(&self, wait: Duration, mut check: impl FnMut(&mut State) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + wait;
        let mut rx = self.version.subscribe();
        loop {
            if let Some(found) = check(&mut self.state.lock().unwrap()) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return check(&mut self.state.lock().unwrap()),
            }
        }
    }
}

enum Out {
    Text(String),
    Binary(Vec<u8>),
    Close,
}

/// A WebSocket client that answers pings and records everything.
pub struct Ws {
    out: mpsc::UnboundedSender<Out>,
    shared: Arc<Shared>,
    /// While true the reader task stops reading the socket (a slow consumer).
    paused: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub open: Value,
}

impl Drop for Ws {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Ws {
    /// Opens the Engine.IO session (`?EIO=4&transport=websocket`) and reads
    /// the open packet; no namespace connect yet.
    pub async fn open(addr: SocketAddr) -> Ws {
        Self::open_query(addr, "EIO=4&transport=websocket")
            .await
            .unwrap_or_else(|e| panic!("websocket open failed: {e}"))
    }

    pub async fn open_query(addr: SocketAddr, query: &str) -> Result<Ws, String> {
        let url = format!("ws://{addr}/socket.io/?{query}");
        let request = url.into_client_request().unwrap();
        // The client side accepts anything the server sends.
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (stream, _) = timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(request, Some(config), true),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        Self::try_run(stream).await
    }

    /// Over a TCP socket with a small receive buffer, for a reader that stops reading.
    pub async fn open_with_small_window(addr: SocketAddr, rcvbuf: u32) -> Ws {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(rcvbuf).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (stream, _) = timeout(WAIT, tokio_tungstenite::client_async(url, tcp))
            .await
            .expect("ws connect timed out")
            .expect("ws connect");
        Self::run(stream).await
    }

    async fn run<S>(stream: tokio_tungstenite::WebSocketStream<S>) -> Ws
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        Self::try_run(stream).await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_run<S>(stream: tokio_tungstenite::WebSocketStream<S>) -> Result<Ws, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, mut stream) = stream.split();
        let open = timeout(WAIT, async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                    Some(Ok(_)) => continue,
                    other => return Err(format!("websocket closed before the open packet: {other:?}")),
                }
            }
        })
        .await
        .map_err(|_| "no open packet".to_string())??;
        let open: Value = serde_json::from_str(open.strip_prefix('0').ok_or("not an open packet")?)
            .map_err(|e| e.to_string())?;
        Ok(Self::spawn(sink, stream, open))
    }

    /// A session that starts with long-polling, connects to the main
    /// namespace there, and then upgrades to a WebSocket over a TCP socket
    /// with a small receive buffer (what a stock client with the default
    /// transports does, as a reader that will stop reading).
    pub async fn upgraded_with_small_window(addr: SocketAddr, rcvbuf: u32) -> Ws {
        let polling = Polling::open(addr).await;
        assert_eq!(polling.post(b"40").await.0, 200, "namespace connect over polling");
        let (status, body) = polling.get().await;
        assert!(
            status == 200 && body.contains("40{"),
            "no connect answer over polling: {body}"
        );
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(rcvbuf).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let url = format!(
            "ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={}",
            polling.sid
        );
        let (ws, _) = timeout(WAIT, tokio_tungstenite::client_async(url, tcp))
            .await
            .expect("ws upgrade timed out")
            .expect("ws upgrade");
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::text("2probe")).await.unwrap();
        let probe = timeout(WAIT, stream.next()).await.expect("probe answer");
        assert!(
            matches!(&probe, Some(Ok(Message::Text(t))) if t.as_str() == "3probe"),
            "probe answer: {probe:?}"
        );
        sink.send(Message::text("5")).await.unwrap();
        let ws = Self::spawn(sink, stream, json!({ "sid": polling.sid }));
        ws.shared.update(|s| s.connected = true);
        ws
    }

    fn spawn<S>(
        mut sink: futures_util::stream::SplitSink<tokio_tungstenite::WebSocketStream<S>, Message>,
        mut stream: futures_util::stream::SplitStream<tokio_tungstenite::WebSocketStream<S>>,
        open: Value,
    ) -> Ws
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            version: watch::channel(0).0,
        });
        let (out, mut out_rx) = mpsc::unbounded_channel::<Out>();
        let writer = tokio::spawn(async move {
            while let Some(o) = out_rx.recv().await {
                let m = match o {
                    Out::Text(t) => Message::text(t),
                    Out::Binary(b) => Message::binary(b),
                    Out::Close => Message::Close(None),
                };
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let reader_shared = shared.clone();
        let pong = out.clone();
        let (paused, mut paused_rx) = watch::channel(false);
        let reader = tokio::spawn(async move {
            loop {
                if paused_rx.wait_for(|p| !*p).await.is_err() {
                    break;
                }
                let Some(m) = stream.next().await else { break };
                match m {
                    Ok(Message::Text(t)) => handle_packet(&reader_shared, &pong, &t),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            reader_shared.update(|s| {
                s.closed = true;
                s.closed_at = Some(Instant::now());
            });
        });
        Ws {
            out,
            shared,
            paused,
            tasks: vec![writer, reader],
            open,
        }
    }

    /// Opens and connects to the main namespace.
    pub async fn connect(addr: SocketAddr) -> Ws {
        Self::open(addr).await.connect_namespace().await
    }

    /// Connects over a TCP socket with a small receive buffer.
    pub async fn connect_with_small_window(addr: SocketAddr, rcvbuf: u32) -> Ws {
        Self::open_with_small_window(addr, rcvbuf)
            .await
            .connect_namespace()
            .await
    }

    async fn connect_namespace(self) -> Ws {
        let ws = self;
        ws.send_text("40");
        assert!(
            ws.shared
                .wait_for(WAIT, |s| s.connected.then_some(()))
                .await
                .is_some(),
            "namespace connect failed: {:?}",
            ws.raw()
        );
        ws
    }

    /// Stops reading from the socket (after the frame being read, if any).
    pub fn stop_reading(&self) {
        self.paused.send_replace(true);
    }

    /// Reads from the socket again.
    pub fn resume_reading(&self) {
        self.paused.send_replace(false);
    }

    pub fn send_text(&self, packet: impl Into<String>) {
        let _ = self.out.send(Out::Text(packet.into()));
    }

    pub fn send_binary(&self, bytes: Vec<u8>) {
        let _ = self.out.send(Out::Binary(bytes));
    }

    pub fn close(&self) {
        let _ = self.out.send(Out::Close);
    }

    /// Drops the TCP connection without any goodbye.
    pub fn abort(self) {
        drop(self);
    }

    pub fn emit(&self, event: &str, data: Value) {
        self.send_text(format!("42{}", json!([event, data])));
    }

    /// Takes the first pending `name` event.
    pub async fn recv(&self, name: &str, wait: Duration) -> Option<Value> {
        self.recv_where(name, wait, |_| true).await.map(|r| r.data)
    }

    /// Takes the first pending `name` event whose data matches.
    pub async fn recv_where(
        &self,
        name: &str,
        wait: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Received> {
        self.shared
            .wait_for(wait, |s| {
                let i = s.pending.iter().position(|e| e.name == name && pred(&e.data))?;
                s.pending.remove(i)
            })
            .await
    }

    /// Like [`Ws::recv`] but fails the test when nothing comes.
    pub async fn expect(&self, name: &str) -> Value {
        match self.recv(name, WAIT).await {
            Some(v) => v,
            None => panic!(
                "no {name:?}; pending {:?}; raw tail {:?}",
                self.pending_names(),
                self.raw_tail(5)
            ),
        }
    }

    /// Sends an unknown event `probe-<tag>` and waits for its `event-error`:
    /// the worker handles a socket's events in order, so whatever the server
    /// answered to the packets sent before the probe has arrived by then.
    /// Returns those answers (taken from the pending events).
    pub async fn probe(&self, tag: &str) -> Option<Vec<Received>> {
        let event = format!("probe-{tag}");
        self.emit(&event, json!({}));
        self.shared
            .wait_for(WAIT, |s| {
                let i = s
                    .pending
                    .iter()
                    .position(|e| e.name == "event-error" && e.data["event"] == event.as_str())?;
                let before: Vec<Received> = s.pending.drain(..i).collect();
                s.pending.pop_front();
                Some(before)
            })
            .await
    }

    pub fn pending_names(&self) -> Vec<String> {
        self.shared
            .state
            .lock()
            .unwrap()
            .pending
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// Drops every pending event.
    pub fn clear(&self) {
        self.shared.update(|s| s.pending.clear());
    }

    pub fn count(&self, name: &str) -> usize {
        self.shared
            .state
            .lock()
            .unwrap()
            .pending
            .iter()
            .filter(|e| e.name == name)
            .count()
    }

    pub fn raw(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().raw.clone()
    }

    pub fn raw_tail(&self, n: usize) -> Vec<String> {
        let raw = self.raw();
        raw[raw.len().saturating_sub(n)..]
            .iter()
            .map(|p| p.chars().take(200).collect())
            .collect()
    }

    pub fn connect_errors(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().connect_errors.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().unwrap().closed
    }

    pub fn told_disconnect(&self) -> bool {
        self.shared.state.lock().unwrap().told_disconnect
    }

    /// Waits until the WebSocket is closed; returns when it happened.
    pub async fn wait_closed(&self, wait: Duration) -> Option<Instant> {
        self.shared.wait_for(wait, |s| s.closed_at).await
    }

    /// Waits until the server said disconnect (`41` / Engine.IO close) or closed the socket.
    pub async fn wait_disconnected(&self, wait: Duration) -> bool {
        self.shared
            .wait_for(wait, |s| (s.told_disconnect || s.closed).then_some(()))
            .await
            .is_some()
    }
}

fn handle_packet(shared: &Shared, out: &mpsc::UnboundedSender<Out>, packet: &str) {
    if packet == "2" {
        let _ = out.send(Out::Text("3".into()));
    }
    let now = Instant::now();
    shared.update(|s| {
        s.raw.push(packet.to_string());
        if packet == "1" || packet.starts_with("41") {
            s.told_disconnect = true;
        } else if packet.starts_with("40") {
            s.connected = true;
        } else if packet.starts_with("44") {
            s.connect_errors.push(packet.to_string());
        } else if let Some(body) = packet.strip_prefix("42") {
            if let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(body) {
                if let Some(Value::String(name)) = items.first().cloned() {
                    let data = if items.len() > 1 {
                        items.swap_remove(1)
                    } else {
                        Value::Null
                    };
                    s.pending.push_back(Received { name, data, at: now });
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Sessions and members

pub fn join_payload(session: &str, key: &str, user: &str, creator: bool) -> Value {
    json!({
        "sessionId": format!("{session}:{key}"),
        "userId": user,
        "displayName": format!("{user} name"),
        "publicKey": format!("pk-{user}"),
        "isCreator": creator,
    })
}

/// Joins and takes the three answers of a successful join.
pub async fn join(ws: &Ws, session: &str, key: &str, user: &str, creator: bool) {
    ws.emit("join-session", join_payload(session, key, user, creator));
    for name in ["messages-history", "session-metadata", "public-keys-updated"] {
        if ws.recv(name, WAIT).await.is_none() {
            panic!(
                "join of {user} to {session}: no {name}; pending {:?}; raw {:?}",
                ws.pending_names(),
                ws.raw_tail(5)
            );
        }
    }
}

/// A group session `session` opened by `users[0]` with the others joined;
/// every client starts with nothing pending.
pub async fn room(addr: SocketAddr, session: &str, users: &[&str]) -> Vec<Ws> {
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let ws = Ws::connect(addr).await;
        join(&ws, session, "key", user, i == 0).await;
        for earlier in &clients {
            let earlier: &Ws = earlier;
            earlier
                .recv_where("user-joined", WAIT, |d| d["userId"] == *user)
                .await
                .unwrap_or_else(|| panic!("no user-joined for {user}"));
            earlier
                .recv("public-keys-updated", WAIT)
                .await
                .expect("keys after a join");
        }
        clients.push(ws);
    }
    clients
}

pub fn message(session: &str, from: &str, to: Option<&str>, encrypted: &str) -> Value {
    let mut m = json!({"sessionId": session, "from": from, "encrypted": encrypted, "type": "text"});
    if let Some(to) = to {
        m["to"] = json!(to);
    }
    m
}

/// Waits for a `new-message` whose ciphertext is `encrypted`.
pub async fn recv_message(ws: &Ws, encrypted: &str, wait: Duration) -> Option<Received> {
    ws.recv_where("new-message", wait, |d| d["encrypted"] == encrypted)
        .await
}

/// Expects an `event-error {event, error, message}`.
pub async fn expect_event_error(ws: &Ws, event: &str, code: &str) -> Value {
    let e = ws
        .recv_where("event-error", WAIT, |d| d["event"] == event)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no event-error for {event}; pending {:?}; raw {:?}",
                ws.pending_names(),
                ws.raw_tail(5)
            )
        });
    assert_eq!(e.data["error"], code, "{}", e.data);
    assert!(e.data["message"].is_string(), "{}", e.data);
    e.data
}

/// Expects a `session-error {error, message}`.
pub async fn expect_session_error(ws: &Ws, code: &str) -> Value {
    let e = ws.recv("session-error", WAIT).await.unwrap_or_else(|| {
        panic!(
            "no session-error; pending {:?}; raw {:?}",
            ws.pending_names(),
            ws.raw_tail(5)
        )
    });
    assert_eq!(e["error"], code, "{e}");
    assert!(e["message"].is_string(), "{e}");
    e
}

/// Two members of a session of their own that must keep talking whatever
/// happens elsewhere.
pub struct Pair {
    pub session: String,
    pub a: Ws,
    pub b: Ws,
    pub addr: SocketAddr,
    seq: std::sync::atomic::AtomicU64,
}

impl Pair {
    pub async fn open(addr: SocketAddr, session: &str) -> Pair {
        let mut clients = room(addr, session, &["pair-a", "pair-b"]).await;
        let b = clients.pop().unwrap();
        let a = clients.pop().unwrap();
        Pair {
            session: session.into(),
            a,
            b,
            addr,
            seq: Default::default(),
        }
    }

    /// One message each way, each delivered within [`PROMPT`]; returns the
    /// slower of the two latencies.
    pub async fn exchange(&self) -> Duration {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut worst = Duration::ZERO;
        for (from, to, name) in [(&self.a, &self.b, "pair-a"), (&self.b, &self.a, "pair-b")] {
            let text = format!("healthy-{name}-{n}");
            let sent = Instant::now();
            from.emit("send-message", message(&self.session, name, None, &text));
            let got = recv_message(to, &text, PROMPT).await.unwrap_or_else(|| {
                panic!(
                    "the healthy pair's message {text} did not arrive within {PROMPT:?}; closed={} raw {:?}",
                    to.is_closed(),
                    to.raw_tail(3)
                )
            });
            worst = worst.max(got.at - sent);
            from.recv_where("message-sent", PROMPT, |d| d["encrypted"] == text.as_str())
                .await;
        }
        worst
    }

    /// The end of every attack: the pair exchanges messages promptly, a
    /// fresh client can connect and join, and `/health` is 200.
    pub async fn assert_healthy(&self) -> Duration {
        let latency = self.exchange().await;
        assert_health(self.addr).await;
        let started = Instant::now();
        let fresh = timeout(PROMPT * 2, async {
            let ws = Ws::connect(self.addr).await;
            join(&ws, &self.session, "key", "pair-fresh", false).await;
            ws.emit(
                "leave-session",
                json!({"sessionId": self.session, "userId": "pair-fresh"}),
            );
            ws
        })
        .await
        .expect("a fresh client could not connect and join promptly");
        assert!(started.elapsed() < PROMPT * 2);
        drop(fresh);
        for m in [&self.a, &self.b] {
            m.clear();
        }
        latency
    }
}

// ---------------------------------------------------------------------------
// Hand-made WebSocket frames over a raw TCP stream

/// A WebSocket opened by hand: the upgrade is written byte by byte, and
/// frames are built here, so a test can send a header that lies about the
/// length and then stop.
pub struct RawWs {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl RawWs {
    pub async fn open(addr: SocketAddr) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("upgrade answer")
                .unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buf.drain(..head_end);
        let mut ws = RawWs { stream, buf };
        let open = ws.read_text().await.expect("open packet");
        assert!(open.starts_with('0'), "{open}");
        ws
    }

    /// Opens and connects to the main namespace.
    pub async fn connect(addr: SocketAddr) -> RawWs {
        let mut ws = Self::open(addr).await;
        ws.write_frame(true, 0x1, b"40").await.unwrap();
        loop {
            let p = ws.read_text().await.expect("namespace answer");
            if p.starts_with("40") {
                return ws;
            }
        }
    }

    /// A masked client frame header for `len` payload bytes.
    pub fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= u64::from(u16::MAX) {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[0, 0, 0, 0]); // a zero mask: payload bytes go as they are
        h
    }

    pub async fn write_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = Self::header(fin, opcode, payload.len() as u64);
        f.extend_from_slice(payload);
        self.stream.write_all(&f).await
    }

    /// Reads one server frame; `None` when the connection ends or a close frame comes.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return if opcode == 0x8 {
                    None
                } else {
                    Some((opcode, payload))
                };
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads text frames, answering pings, until one that is not a ping.
    pub async fn read_text(&mut self) -> Option<String> {
        loop {
            let (opcode, payload) = timeout(WAIT, self.read_frame()).await.ok()??;
            if opcode == 0x1 {
                let t = String::from_utf8(payload).ok()?;
                if t == "2" {
                    let _ = self.write_frame(true, 0x1, b"3").await;
                    continue;
                }
                return Some(t);
            }
        }
    }

    /// Waits until the server ends the connection (close frame, EOF or reset).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        timeout(wait, async { while self.read_frame().await.is_some() {} })
            .await
            .is_ok()
    }
}

fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let mut payload = buf.get(at..at + len)?.to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((opcode, payload, at + len))
}

// ---------------------------------------------------------------------------
// Long-polling by hand

/// A polling Engine.IO session: handshake, and the `sid` for later requests.
pub struct Polling {
    pub addr: SocketAddr,
    pub sid: String,
}

impl Polling {
    pub async fn open(addr: SocketAddr) -> Polling {
        let (status, body) = http_get(addr, "/socket.io/?EIO=4&transport=polling")
            .await
            .unwrap();
        assert_eq!(status, 200, "polling handshake: {body}");
        let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
        Polling {
            addr,
            sid: open["sid"].as_str().unwrap().to_string(),
        }
    }

    pub fn path(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    pub async fn post(&self, body: &[u8]) -> (u16, String) {
        http_request(
            self.addr,
            "POST",
            &self.path(),
            &[("Content-Type", "text/plain;charset=UTF-8")],
            body,
        )
        .await
        .unwrap()
    }

    pub async fn get(&self) -> (u16, String) {
        http_get(self.addr, &self.path()).await.unwrap()
    }
}

/// A percentile of durations (`p` in 0..=100).
pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    s[((s.len() - 1) * p) / 100]
}
