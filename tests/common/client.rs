//! A small raw Engine.IO v4 / Socket.IO v5 client for the tests.
//!
//! Written by hand (over tokio-tungstenite and reqwest) rather than taken
//! from a crate so that the tests control every byte on the wire: the
//! robustness tests send packets no real client would, and the ordering
//! tests need to see events exactly in arrival order. Only the main
//! namespace and text packets are supported; that is all the contract uses.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// How long any single wait of the client may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Engine.IO packets are joined with this separator in polling bodies.
const RECORD_SEPARATOR: char = '\u{1e}';

thread_local! {
    /// `reqwest::Client::new()` blocks for ~50 ms (it reads system proxy
    /// settings), which serialises a storm of polling connects; one client
    /// per thread is reused instead. Every test runs on its own thread(s)
    /// and runtime, so pooled connections never outlive their runtime.
    static HTTP: reqwest::Client = reqwest::Client::new();
}

/// The HTTP client of this thread (cheap to clone).
pub fn http_client() -> reqwest::Client {
    HTTP.with(Clone::clone)
}

/// The two Engine.IO transports the server must speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Polling,
}

/// Both transports, for tests that must hold on each.
pub const TRANSPORTS: [Transport; 2] = [Transport::WebSocket, Transport::Polling];

/// One Socket.IO event received from the server.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    /// The first argument after the name (`Value::Null` when absent).
    pub data: Value,
}

#[derive(Default)]
struct InboxState {
    /// Events not yet taken by `recv_event`, in arrival order.
    pending: VecDeque<Event>,
    /// Every event ever received, in arrival order.
    all: Vec<Event>,
    /// Raw Engine.IO packets the client did not understand.
    unknown: Vec<String>,
    /// The Socket.IO `sid` from the namespace connect answer.
    socket_id: Option<String>,
    /// A Socket.IO CONNECT_ERROR packet, if one came.
    connect_error: Option<Value>,
    /// The server sent a Socket.IO DISCONNECT for the namespace.
    sio_disconnected: bool,
    /// The transport is gone (close frame, socket closed, polling refused).
    closed: bool,
    /// Sends nothing any more (not even pongs): a client whose connection
    /// died without the server knowing yet.
    muted: bool,
}

/// Shared between the client handle and its reader task. `version` is
/// bumped on every change so waiters never miss an update.
struct Inbox {
    state: Mutex<InboxState>,
    version: watch::Sender<u64>,
}

impl Inbox {
    fn new() -> Arc<Self> {
        Arc::new(Inbox {
            state: Mutex::new(InboxState::default()),
            version: watch::channel(0).0,
        })
    }

    fn is_muted(&self) -> bool {
        self.state.lock().unwrap().muted
    }

    fn update(&self, f: impl FnOnce(&mut InboxState)) {
        f(&mut self.state.lock().unwrap());
        self.version.send_modify(|v| *v += 1);
    }

    /// Waits until `check` returns `Some`, or the deadline passes.
    async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&mut InboxState) -> Option<T>,
    ) -> Option<T> {
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

/// Options for opening a connection.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Sent as the `Origin` header of every request when set.
    pub origin: Option<String>,
}

/// A connected Socket.IO client on the main namespace.
pub struct Client {
    transport: Transport,
    out: mpsc::UnboundedSender<String>,
    inbox: Arc<Inbox>,
    tasks: Vec<JoinHandle<()>>,
    /// Engine.IO session id.
    pub engine_sid: String,
    /// The handshake's `0{...}` open packet, parsed.
    pub open_packet: Value,
}

impl Drop for Client {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Client {
    /// Opens the transport, reads the Engine.IO open packet, connects to
    /// the main namespace and waits for the server's `40{"sid":..}`.
    pub async fn connect(addr: SocketAddr, transport: Transport) -> Client {
        Self::connect_with(addr, transport, ConnectOptions::default()).await
    }

    pub async fn connect_with(addr: SocketAddr, transport: Transport, options: ConnectOptions) -> Client {
        let client = Self::open_engine(addr, transport, options).await;
        client.send_raw("40");
        let inbox = client.inbox.clone();
        let connected = inbox
            .wait_for(Instant::now() + TIMEOUT, |s| {
                if s.socket_id.is_some() || s.connect_error.is_some() || s.closed {
                    Some(())
                } else {
                    None
                }
            })
            .await;
        let state = inbox.state.lock().unwrap();
        assert!(
            connected.is_some() && state.socket_id.is_some(),
            "namespace connect failed over {transport:?}: connect_error={:?} closed={} unknown={:?}",
            state.connect_error,
            state.closed,
            state.unknown
        );
        drop(state);
        client
    }

    /// Opens the Engine.IO session only (no namespace connect), for tests
    /// that want to speak raw packets from the very start.
    pub async fn open_engine(addr: SocketAddr, transport: Transport, options: ConnectOptions) -> Client {
        match transport {
            Transport::WebSocket => Self::open_ws(addr, options).await,
            Transport::Polling => Self::open_polling(addr, options).await,
        }
    }

    async fn open_ws(addr: SocketAddr, options: ConnectOptions) -> Client {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let mut request = url.into_client_request().unwrap();
        if let Some(origin) = &options.origin {
            request.headers_mut().insert("Origin", origin.parse().unwrap());
        }
        let (stream, _response) = timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connect failed");
        let (mut sink, mut stream) = stream.split();

        // The first frame must be the Engine.IO open packet.
        let open = timeout(TIMEOUT, async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => return text.to_string(),
                    Some(Ok(_)) => continue,
                    other => panic!("websocket closed before the open packet: {other:?}"),
                }
            }
        })
        .await
        .expect("no Engine.IO open packet over websocket");
        let open_packet = parse_open(&open);

        let inbox = Inbox::new();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let writer_inbox = inbox.clone();
        let writer = tokio::spawn(async move {
            while let Some(packet) = out_rx.recv().await {
                if writer_inbox.is_muted() {
                    continue;
                }
                let message = if packet == CLOSE_SENTINEL {
                    Message::Close(None)
                } else if let Some(bytes) = packet.strip_prefix(BINARY_SENTINEL) {
                    Message::binary(bytes.as_bytes().to_vec())
                } else {
                    Message::text(packet)
                };
                if sink.send(message).await.is_err() {
                    writer_inbox.update(|s| s.closed = true);
                    break;
                }
            }
        });
        let reader_inbox = inbox.clone();
        let pong = out.clone();
        let reader = tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                match message {
                    Ok(Message::Text(text)) => handle_engine_packet(&reader_inbox, &pong, &text),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            reader_inbox.update(|s| s.closed = true);
        });

        Client {
            transport: Transport::WebSocket,
            out,
            inbox,
            tasks: vec![writer, reader],
            engine_sid: open_packet["sid"].as_str().unwrap().to_string(),
            open_packet,
        }
    }

    async fn open_polling(addr: SocketAddr, options: ConnectOptions) -> Client {
        let http = http_client();
        let base = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
        let with_origin = move |rb: reqwest::RequestBuilder, origin: &Option<String>| match origin {
            Some(o) => rb.header("Origin", o.as_str()),
            None => rb,
        };
        let response = timeout(TIMEOUT, with_origin(http.get(&base), &options.origin).send())
            .await
            .expect("polling handshake timed out")
            .expect("polling handshake failed");
        assert_eq!(response.status(), 200, "polling handshake refused");
        let body = response.text().await.unwrap();
        let first = body.split(RECORD_SEPARATOR).next().unwrap();
        let open_packet = parse_open(first);
        let sid = open_packet["sid"].as_str().unwrap().to_string();
        let url = format!("{base}&sid={sid}");

        let inbox = Inbox::new();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();

        // One writer: packets go out in order, batched into POST bodies,
        // never two POSTs at once (Engine.IO forbids it).
        let writer_inbox = inbox.clone();
        let (post_http, post_url, post_origin) = (http.clone(), url.clone(), options.origin.clone());
        let writer = tokio::spawn(async move {
            while let Some(first) = out_rx.recv().await {
                if writer_inbox.is_muted() {
                    continue;
                }
                let mut batch = vec![first];
                while let Ok(more) = out_rx.try_recv() {
                    batch.push(more);
                }
                let body = batch
                    .into_iter()
                    .map(|p| if p == CLOSE_SENTINEL { "1".to_string() } else { p })
                    .collect::<Vec<_>>()
                    .join(&RECORD_SEPARATOR.to_string());
                let request = post_http
                    .post(&post_url)
                    .header("Content-Type", "text/plain;charset=UTF-8")
                    .body(body);
                let request = match &post_origin {
                    Some(o) => request.header("Origin", o.as_str()),
                    None => request,
                };
                match request.send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        writer_inbox.update(|s| s.closed = true);
                        break;
                    }
                }
            }
        });

        // One reader: a single long-poll GET at a time.
        let reader_inbox = inbox.clone();
        let pong = out.clone();
        let origin = options.origin.clone();
        let reader = tokio::spawn(async move {
            loop {
                let request = http.get(&url);
                let request = match &origin {
                    Some(o) => request.header("Origin", o.as_str()),
                    None => request,
                };
                let body = match request.send().await {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(body) => body,
                        Err(_) => break,
                    },
                    _ => break,
                };
                if body.is_empty() {
                    break; // the session was closed while polling
                }
                for packet in body.split(RECORD_SEPARATOR) {
                    handle_engine_packet(&reader_inbox, &pong, packet);
                }
                if reader_inbox.state.lock().unwrap().closed {
                    break;
                }
            }
            reader_inbox.update(|s| s.closed = true);
        });

        Client {
            transport: Transport::Polling,
            out,
            inbox,
            tasks: vec![writer, reader],
            engine_sid: sid,
            open_packet,
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The Socket.IO socket id given by the server on namespace connect.
    pub fn socket_id(&self) -> Option<String> {
        self.inbox.state.lock().unwrap().socket_id.clone()
    }

    /// Sends `42["name",data]`.
    pub fn emit(&self, name: &str, data: Value) {
        let packet = format!("42{}", json!([name, data]));
        self.send_raw(&packet);
    }

    /// Sends one raw Engine.IO packet (text), e.g. `"42[\"x\"]"` or garbage.
    /// From now on the client sends nothing, pongs included, while still
    /// reading what comes: its connection died without the server knowing.
    pub fn go_silent(&self) {
        self.inbox.update(|s| s.muted = true);
    }

    pub fn send_raw(&self, packet: &str) {
        // A closed transport just drops what is sent; tests observe that.
        let _ = self.out.send(packet.to_string());
    }

    /// Sends a raw binary WebSocket frame (WebSocket transport only).
    /// The bytes are given as a string and sent verbatim.
    pub fn send_raw_binary(&self, bytes: &str) {
        assert_eq!(self.transport, Transport::WebSocket);
        let _ = self.out.send(format!("{BINARY_SENTINEL}{bytes}"));
    }

    /// Waits for the next not-yet-taken event called `name`; panics after
    /// `wait` with everything that did arrive.
    pub async fn recv_event(&self, name: &str, wait: Duration) -> Value {
        let found = self
            .inbox
            .wait_for(Instant::now() + wait, |s| {
                let at = s.pending.iter().position(|e| e.name == name)?;
                s.pending.remove(at).map(|e| e.data)
            })
            .await;
        match found {
            Some(data) => data,
            None => panic!(
                "no `{name}` event within {wait:?} over {:?}; received: {}",
                self.transport,
                self.describe()
            ),
        }
    }

    /// Like `recv_event`, but `None` on timeout instead of a panic.
    pub async fn try_recv_event(&self, name: &str, wait: Duration) -> Option<Value> {
        self.inbox
            .wait_for(Instant::now() + wait, |s| {
                let at = s.pending.iter().position(|e| e.name == name)?;
                s.pending.remove(at).map(|e| e.data)
            })
            .await
    }

    /// `recv_event` with the default timeout.
    pub async fn recv(&self, name: &str) -> Value {
        self.recv_event(name, TIMEOUT).await
    }

    /// Takes `n` events called `name`, in arrival order.
    pub async fn recv_many(&self, name: &str, n: usize, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let next = self
                .inbox
                .wait_for(deadline, |s| {
                    let at = s.pending.iter().position(|e| e.name == name)?;
                    s.pending.remove(at).map(|e| e.data)
                })
                .await;
            match next {
                Some(data) => out.push(data),
                None => panic!(
                    "only {} of {n} `{name}` events within {wait:?} over {:?}",
                    out.len(),
                    self.transport
                ),
            }
        }
        out
    }

    /// Asserts that no untaken `name` event is pending now or arrives within
    /// `wait`.
    pub async fn expect_no_event(&self, name: &str, wait: Duration) {
        let seen = self
            .inbox
            .wait_for(Instant::now() + wait, |s| {
                s.pending.iter().find(|e| e.name == name).cloned()
            })
            .await;
        if let Some(event) = seen {
            panic!(
                "unexpected `{name}` event over {:?}: {}",
                self.transport, event.data
            );
        }
    }

    /// Asserts that no untaken event of any name is pending now or arrives
    /// within `wait`.
    pub async fn expect_silence(&self, wait: Duration) {
        let seen = self
            .inbox
            .wait_for(Instant::now() + wait, |s| s.pending.front().cloned())
            .await;
        if let Some(event) = seen {
            panic!(
                "unexpected `{}` event over {:?}: {}",
                event.name, self.transport, event.data
            );
        }
    }

    /// Drops every pending event (after a setup phase whose events the
    /// test does not care about).
    pub fn clear(&self) {
        self.inbox.state.lock().unwrap().pending.clear();
    }

    /// Names of the events still pending, in arrival order.
    pub fn pending_names(&self) -> Vec<String> {
        let state = self.inbox.state.lock().unwrap();
        state.pending.iter().map(|e| e.name.clone()).collect()
    }

    /// Every event received so far, in arrival order (taken or not).
    pub fn all_events(&self) -> Vec<Event> {
        self.inbox.state.lock().unwrap().all.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.inbox.state.lock().unwrap().closed
    }

    /// True once the server disconnected the socket: either a Socket.IO
    /// DISCONNECT packet or the transport closing.
    pub fn is_disconnected(&self) -> bool {
        let state = self.inbox.state.lock().unwrap();
        state.closed || state.sio_disconnected
    }

    /// Waits until the server disconnects this client; false on timeout.
    pub async fn wait_disconnected(&self, wait: Duration) -> bool {
        self.inbox
            .wait_for(Instant::now() + wait, |s| {
                (s.closed || s.sio_disconnected).then_some(())
            })
            .await
            .is_some()
    }

    /// Closes the transport the way a browser tab does: a WebSocket close
    /// frame, or an Engine.IO close packet over polling. The server sees a
    /// transport close at once.
    pub async fn close(self) {
        let _ = self.out.send(CLOSE_SENTINEL.to_string());
        // Give the writer the chance to flush the close.
        let _ = self
            .inbox
            .wait_for(Instant::now() + Duration::from_secs(2), |s| {
                s.closed.then_some(())
            })
            .await;
    }

    fn describe(&self) -> String {
        let state = self.inbox.state.lock().unwrap();
        let events: Vec<String> = state
            .all
            .iter()
            .map(|e| format!("{} {}", e.name, truncate(&e.data.to_string(), 200)))
            .collect();
        format!(
            "{events:?} (closed={}, sio_disconnected={}, unknown packets={:?})",
            state.closed, state.sio_disconnected, state.unknown
        )
    }
}

const CLOSE_SENTINEL: &str = "\u{0}close";
const BINARY_SENTINEL: &str = "\u{0}binary:";

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

fn parse_open(packet: &str) -> Value {
    let json = packet
        .strip_prefix('0')
        .unwrap_or_else(|| panic!("expected an Engine.IO open packet, got {packet:?}"));
    serde_json::from_str(json).expect("open packet is JSON")
}

/// Handles one Engine.IO packet from the server.
fn handle_engine_packet(inbox: &Inbox, out: &mpsc::UnboundedSender<String>, packet: &str) {
    match packet.chars().next() {
        // ping → pong
        Some('2') => {
            let _ = out.send(format!("3{}", &packet[1..]));
        }
        Some('4') => handle_socketio_packet(inbox, &packet[1..]),
        Some('1') => inbox.update(|s| s.closed = true),
        Some('6') | Some('3') => {}
        _ => inbox.update(|s| s.unknown.push(packet.to_string())),
    }
}

/// Handles one Socket.IO packet (the part after the Engine.IO `4`).
fn handle_socketio_packet(inbox: &Inbox, packet: &str) {
    let kind = packet.chars().next();
    let rest = packet.get(1..).unwrap_or("");
    // Main namespace only: a `/nsp,` prefix would be a server bug here.
    match kind {
        Some('0') => {
            let sid = serde_json::from_str::<Value>(rest)
                .ok()
                .and_then(|v| v["sid"].as_str().map(str::to_string));
            inbox.update(|s| s.socket_id = sid.or(Some(String::new())));
        }
        Some('1') => inbox.update(|s| s.sio_disconnected = true),
        Some('2') => {
            let json_start = rest.find('[').unwrap_or(rest.len());
            match serde_json::from_str::<Value>(&rest[json_start..]) {
                Ok(Value::Array(mut args)) if !args.is_empty() => {
                    let name = args.remove(0).as_str().unwrap_or_default().to_string();
                    let data = if args.is_empty() {
                        Value::Null
                    } else {
                        args.remove(0)
                    };
                    let event = Event { name, data };
                    inbox.update(|s| {
                        s.all.push(event.clone());
                        s.pending.push_back(event);
                    });
                }
                _ => inbox.update(|s| s.unknown.push(format!("4{packet}"))),
            }
        }
        Some('4') => {
            let err = serde_json::from_str::<Value>(rest).unwrap_or(Value::Null);
            inbox.update(|s| s.connect_error = Some(err));
        }
        _ => inbox.update(|s| s.unknown.push(format!("4{packet}"))),
    }
}
