//! Helpers of `tests/ops.rs`: a minimal raw Engine.IO v4 / Socket.IO v5
//! WebSocket client, plain HTTP GETs, a Prometheus text-format parser and
//! the plumbing to run the server binary as a child process.
//!
//! Kept apart from `tests/common/` on purpose: the ops tests only need a
//! tiny WebSocket client and must not depend on helpers other tests change.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Longest any single wait of these helpers may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Socket.IO client
// ---------------------------------------------------------------------------

/// One Socket.IO event received from the server.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    /// The first argument after the name (`Null` when absent).
    pub data: Value,
}

/// What the reader task reports.
#[derive(Debug)]
enum Incoming {
    Event(Event),
    /// Socket.IO DISCONNECT, a close frame, or the connection ended.
    Closed,
}

/// A connected Socket.IO client over a WebSocket (no polling, no upgrade).
pub struct WsClient {
    /// The Socket.IO socket id from the namespace CONNECT answer.
    pub sid: String,
    out: mpsc::UnboundedSender<Message>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Received but not yet taken by `recv`.
    pending: VecDeque<Event>,
    closed: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl WsClient {
    /// Opens `ws://addr/socket.io/?EIO=4&transport=websocket`, reads the
    /// Engine.IO OPEN, connects to the main namespace and waits for its answer.
    pub async fn connect(addr: SocketAddr) -> Self {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket connect failed");
        let (mut sink, mut stream) = ws.split();

        let open = next_text(&mut stream).await;
        assert!(open.starts_with('0'), "expected Engine.IO OPEN, got {open:?}");
        let open: Value = serde_json::from_str(&open[1..]).expect("OPEN payload is JSON");
        assert!(open["sid"].is_string(), "OPEN without sid: {open}");

        sink.send(Message::text("40")).await.expect("send 40");
        let sid = loop {
            let text = next_text(&mut stream).await;
            if text == "2" {
                sink.send(Message::text("3")).await.expect("send pong");
                continue;
            }
            if let Some(rest) = text.strip_prefix("40") {
                let answer: Value = serde_json::from_str(rest).expect("CONNECT answer is JSON");
                break answer["sid"].as_str().expect("CONNECT answer has sid").to_owned();
            }
            panic!("expected Socket.IO CONNECT answer, got {text:?}");
        };

        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (in_tx, in_rx) = mpsc::unbounded_channel::<Incoming>();
        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                let close = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() || close {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let pong = out_tx.clone();
        let reader = tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                let text = match frame {
                    Ok(Message::Text(t)) => t.to_string(),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                if text == "2" {
                    let _ = pong.send(Message::text("3"));
                } else if let Some(rest) = text.strip_prefix("42") {
                    let Ok(Value::Array(mut parts)) = serde_json::from_str::<Value>(rest) else {
                        continue;
                    };
                    if parts.is_empty() {
                        continue;
                    }
                    let name = parts.remove(0).as_str().unwrap_or_default().to_owned();
                    let data = if parts.is_empty() {
                        Value::Null
                    } else {
                        parts.remove(0)
                    };
                    let _ = in_tx.send(Incoming::Event(Event { name, data }));
                } else if text.starts_with("41") || text == "1" {
                    break;
                }
            }
            let _ = in_tx.send(Incoming::Closed);
        });
        Self {
            sid,
            out: out_tx,
            incoming: in_rx,
            pending: VecDeque::new(),
            closed: false,
            tasks: vec![writer, reader],
        }
    }

    /// Sends `42["event",data]`.
    pub fn emit(&self, event: &str, data: Value) {
        let packet = format!("42{}", json!([event, data]));
        self.out
            .send(Message::text(packet))
            .expect("client writer is gone");
    }

    /// The next event named `name` (others stay queued for later `recv`s).
    pub async fn recv(&mut self, name: &str) -> Value {
        match self.try_recv(name, TIMEOUT).await {
            Some(v) => v,
            None => panic!(
                "no {name:?} within {TIMEOUT:?} (connection closed: {}); queued: {:?}",
                self.closed,
                self.pending.iter().map(|e| &e.name).collect::<Vec<_>>()
            ),
        }
    }

    /// The next event named `name`, or `None` after `wait`.
    pub async fn try_recv(&mut self, name: &str, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = self.pending.iter().position(|e| e.name == name) {
                return self.pending.remove(i).map(|e| e.data);
            }
            if self.closed {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(Incoming::Event(e))) => self.pending.push_back(e),
                Ok(Some(Incoming::Closed)) | Ok(None) => self.closed = true,
                Err(_) => return None,
            }
        }
    }

    /// Waits until the server ends the connection (or `wait` passes).
    pub async fn wait_closed(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while !self.closed {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(Incoming::Event(e))) => self.pending.push_back(e),
                Ok(Some(Incoming::Closed)) | Ok(None) => self.closed = true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Sends a Socket.IO DISCONNECT and a close frame.
    pub async fn close(mut self) {
        let _ = self.out.send(Message::text("41"));
        let _ = self.out.send(Message::Close(None));
        let _ = self.wait_closed(Duration::from_secs(2)).await;
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn next_text<S>(stream: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let frame = timeout(TIMEOUT, stream.next())
            .await
            .expect("no WebSocket frame within the timeout")
            .expect("WebSocket ended during the handshake")
            .expect("WebSocket error during the handshake");
        if let Message::Text(t) = frame {
            return t.to_string();
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// Status and body of a plain HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// A client without a connection pool, so that every request opens a new
/// connection (a refused port shows as an error, and nothing outlives a test).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .expect("reqwest client")
}

/// `GET http://addr{path}`; `Err` when the connection fails.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer, reqwest::Error> {
    let res = http().get(format!("http://{addr}{path}")).send().await?;
    let status = res.status().as_u16();
    let body = res.text().await?;
    Ok(Answer { status, body })
}

/// `POST /api/reserve-session`; panics unless it answers 200.
pub async fn reserve(addr: SocketAddr, session_id: &str, auth_key: &str, mode: &str) {
    let res = http()
        .post(format!("http://{addr}/api/reserve-session"))
        .json(&json!({ "sessionId": session_id, "authKey": auth_key, "chatMode": mode }))
        .send()
        .await
        .expect("reserve request");
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    assert_eq!(status, 200, "reserve {session_id}: {body}");
}

// ---------------------------------------------------------------------------
// Prometheus text exposition
// ---------------------------------------------------------------------------

/// One scrape: `name{sorted labels}` → value.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
    /// `# HELP` text by family.
    pub helps: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses the text format: `# TYPE` and `# HELP` lines, comments, and
    /// `name{label="value",...} value [timestamp]` samples, with the label
    /// value escapes `\\`, `\"` and `\n`.
    pub fn parse(text: &str) -> Self {
        let mut scrape = Scrape::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let mut words = rest.split_whitespace();
                match words.next() {
                    Some("TYPE") => {
                        if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                            scrape.types.insert(name.to_owned(), kind.to_owned());
                        }
                    }
                    Some("HELP") => {
                        if let Some(name) = words.next() {
                            let text = words.collect::<Vec<_>>().join(" ");
                            scrape.helps.insert(name.to_owned(), text);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let (key, value) =
                parse_sample(line).unwrap_or_else(|e| panic!("metrics line {}: {e}: {line:?}", n + 1));
            assert!(
                scrape.samples.insert(key.clone(), value).is_none(),
                "metrics line {}: duplicate sample {key}",
                n + 1
            );
        }
        scrape
    }

    /// The value of `name` with exactly these labels (0 when absent: a
    /// counter that was never incremented is not exported).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .get(&sample_key(name, labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Whether the sample is exported at all.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.contains_key(&sample_key(name, labels))
    }
}

/// `name{a="1",b="2"}` with labels sorted by name; `name` when there are none.
pub fn sample_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    key_of(name, &labels)
}

fn key_of(name: &str, labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn parse_sample(line: &str) -> Result<(String, f64), String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut consumed = None;
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((i, '}')) => {
                    consumed = Some(i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut label = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                label.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {label} has no quoted value"));
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => return Err("dangling escape".into()),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err("unterminated label value".into());
            }
            labels.push((label.trim().to_owned(), value));
        }
        let consumed = consumed.ok_or("unterminated label set")?;
        rest = &after[consumed..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|e| format!("bad timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    labels.sort();
    Ok((key_of(name, &labels), value))
}

/// Scrapes `GET /metrics`.
pub async fn scrape(metrics: SocketAddr) -> Scrape {
    let answer = get(metrics, "/metrics").await.expect("GET /metrics");
    assert_eq!(answer.status, 200, "GET /metrics: {}", answer.body);
    Scrape::parse(&answer.body)
}

// ---------------------------------------------------------------------------
// The binary as a child process
// ---------------------------------------------------------------------------

pub const BIN: &str = env!("CARGO_BIN_EXE_e2e-chat-server");

/// A port that was free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// An empty working directory of its own, so that no `.env` is picked up.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ops").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The binary with a clean environment (only `PATH` and coverage settings
/// pass through, so the settings of whoever runs the tests do not leak in),
/// run in an empty directory.
pub fn command(name: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        let k_str = k.to_string_lossy();
        if k_str == "PATH" || k_str.starts_with("LLVM_PROFILE") || k_str.starts_with("CARGO_LLVM_COV") {
            cmd.env(&k, v);
        }
    }
    cmd.current_dir(scratch_dir(name));
    cmd
}

/// A running server process whose stdout and stderr are captured line by line.
pub struct ServerProcess {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the server binary");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out = child.stdout.take().expect("stdout");
        let lines = stdout.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        }));
        let err = child.stderr.take().expect("stderr");
        let lines = stderr.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        }));
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -TERM <pid>`.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// The exit status, polling until `wait` has passed.
    pub async fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the output readers after the process exited; returns
    /// every line of stdout and stderr.
    pub fn finish(mut self) -> (Vec<String>, Vec<String>) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let out = std::mem::take(&mut *self.stdout.lock().unwrap());
        let err = std::mem::take(&mut *self.stderr.lock().unwrap());
        (out, err)
    }

    pub fn output_so_far(&self) -> String {
        let out = self.stdout.lock().unwrap().join("\n");
        let err = self.stderr.lock().unwrap().join("\n");
        format!("--- stdout ---\n{out}\n--- stderr ---\n{err}")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // The server's side of a failed test, in the test's output.
            std::thread::sleep(Duration::from_millis(100));
            eprintln!(
                "server output (pid {}):\n{}",
                self.child.id(),
                self.output_so_far()
            );
        }
    }
}

/// Polls `GET /ready` until it answers 200; every earlier answer must be a
/// refused connection or 503 `{"status":"starting"}`.
pub async fn wait_ready(addr: SocketAddr, process: &mut ServerProcess, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = process.child.try_wait().expect("try_wait") {
            panic!(
                "the server exited early with {status}\n{}",
                process.output_so_far()
            );
        }
        match get(addr, "/ready").await {
            Ok(answer) if answer.status == 200 => {
                assert_eq!(answer.json(), json!({ "status": "ready" }));
                return;
            }
            Ok(answer) => {
                assert_eq!(answer.status, 503, "/ready before ready: {answer:?}");
                assert_eq!(answer.json(), json!({ "status": "starting" }));
            }
            Err(e) => assert!(e.is_connect(), "/ready before ready: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "/ready not 200 within {wait:?}\n{}",
            process.output_so_far()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
