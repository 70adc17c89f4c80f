//! Helpers of `tests/attacks_http.rs` (included there by path, beside
//! `attack_support`): clients bound to a chosen local address, so that an
//! attack comes from 127.0.0.1 while a bystander talks from 127.0.0.2;
//! HTTP/1.1 requests on a connection kept open; HTTP/2 openings; and a
//! small Socket.IO client over such a connection.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::attack_support::{dechunk, join_payload, message, write_request, Polling, PROMPT, WAIT};

/// Where every attack comes from.
pub const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// Another client address, which must be served whatever the attacker does.
pub const BYSTANDER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The 24-byte HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty HTTP/2 SETTINGS frame (what a client sends right after the preface).
pub const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];

/// A TCP connection to `addr` from the local address `local`.
pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

/// A connection from `local` that sends the HTTP/2 preface and an empty
/// SETTINGS frame, and then nothing.
pub async fn h2_opening(local: IpAddr, addr: SocketAddr) -> TcpStream {
    let mut stream = connect_from(local, addr).await.expect("connect");
    let mut opening = H2_PREFACE.to_vec();
    opening.extend_from_slice(H2_EMPTY_SETTINGS);
    // The server may already have closed it (over the cap): not an error here.
    let _ = stream.write_all(&opening).await;
    stream
}

/// Reads and drops whatever comes until the server closes `stream` (EOF or
/// reset); whether that happened within `within`.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 4096];
    timeout(within, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The answer is `status` with a JSON `{"error": "..."}` body.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{self:?}"
        );
        assert!(self.json()["error"].is_string(), "{self:?}");
    }
}

/// Writes one HTTP/1.1 request on `stream` (kept alive) and reads its answer.
pub async fn request_on(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    write_request(stream, method, path, "test", headers, body).await?;
    read_answer(stream).await
}

/// Reads one answer (with a `Content-Length` or chunked body) from `stream`.
pub async fn read_answer(stream: &mut TcpStream) -> Result<Answer, String> {
    let go = async {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(answer) = complete_answer(&raw) {
                return Ok(answer);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    return complete_answer(&raw).ok_or_else(|| {
                        format!(
                            "closed before a whole answer: {:?}",
                            String::from_utf8_lossy(&raw)
                        )
                    })
                }
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    };
    timeout(WAIT, go)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

fn complete_answer(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let lower = head.to_ascii_lowercase();
    let rest = &raw[end..];
    let body = if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        (rest.len() >= len).then(|| String::from_utf8_lossy(&rest[..len]).to_string())?
    } else if lower.contains("transfer-encoding: chunked") {
        let text = String::from_utf8_lossy(rest).to_string();
        text.contains("0\r\n\r\n").then(|| dechunk(&text))?
    } else {
        String::new()
    };
    Some(Answer { status, head, body })
}

/// `GET /health` from `local` on a new connection: asserts 200 within
/// [`PROMPT`]; returns how long it took.
pub async fn health_from(local: IpAddr, addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = connect_from(local, addr).await.expect("connect for /health");
    let answer = request_on(&mut stream, "GET", "/health", &[("Connection", "close")], b"")
        .await
        .unwrap_or_else(|e| panic!("GET /health from {local}: {e}"));
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(took < PROMPT, "/health from {local} took {took:?}");
    took
}

// ---------------------------------------------------------------------------
// A small Socket.IO client over a WebSocket from a chosen address

/// A Socket.IO client over a WebSocket that answers pings and keeps every
/// packet it receives.
pub struct SioClient {
    out: mpsc::UnboundedSender<Message>,
    packets: Arc<(Mutex<VecDeque<String>>, Notify)>,
    tasks: Vec<JoinHandle<()>>,
    pub sid: String,
}

impl Drop for SioClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl SioClient {
    /// Opens a WebSocket from `local` and connects to the main namespace.
    pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> SioClient {
        let tcp = connect_from(local, addr).await.expect("connect");
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = timeout(WAIT, tokio_tungstenite::client_async(url, tcp))
            .await
            .expect("websocket open timed out")
            .expect("websocket open");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let packets: Arc<(Mutex<VecDeque<String>>, Notify)> = Arc::default();
        let (shared, pong) = (packets.clone(), out.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m {
                    if t.as_str() == "2" {
                        let _ = pong.send(Message::text("3"));
                    }
                    shared.0.lock().unwrap().push_back(t.to_string());
                    shared.1.notify_waiters();
                }
            }
        });
        let mut client = SioClient {
            out,
            packets,
            tasks: vec![writer, reader],
            sid: String::new(),
        };
        let open = client.packet(|p| p.starts_with('0')).await.expect("open packet");
        let open: Value = serde_json::from_str(&open[1..]).unwrap();
        client.sid = open["sid"].as_str().unwrap().to_string();
        client.send("40");
        client
            .packet(|p| p.starts_with("40"))
            .await
            .expect("namespace connect answer");
        client
    }

    pub fn send(&self, packet: &str) {
        let _ = self.out.send(Message::text(packet.to_string()));
    }

    pub fn emit(&self, event: &str, data: Value) {
        self.send(&format!("42{}", json!([event, data])));
    }

    /// Takes the first packet that matches, waiting up to [`WAIT`].
    async fn packet(&self, matches: impl Fn(&str) -> bool) -> Option<String> {
        self.packet_within(WAIT, matches).await
    }

    async fn packet_within(&self, within: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.packets.1.notified();
            {
                let mut packets = self.packets.0.lock().unwrap();
                if let Some(i) = packets.iter().position(|p| matches(p)) {
                    return packets.remove(i);
                }
            }
            if timeout(deadline.saturating_duration_since(Instant::now()), notified)
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Takes the first `name` event whose data matches, within `within`.
    pub async fn event(
        &self,
        name: &str,
        within: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let packet = self
            .packet_within(within, |p| {
                let Some(body) = p.strip_prefix("42") else {
                    return false;
                };
                let Ok(Value::Array(items)) = serde_json::from_str::<Value>(body) else {
                    return false;
                };
                items.first().and_then(Value::as_str) == Some(name)
                    && matches(items.get(1).unwrap_or(&Value::Null))
            })
            .await?;
        let items: Vec<Value> = serde_json::from_str(&packet[2..]).ok()?;
        items.into_iter().nth(1)
    }

    /// Joins `session` (created by the first to join) and takes the join's answers.
    pub async fn join(&self, session: &str, user: &str, creator: bool) {
        self.emit("join-session", join_payload(session, "key", user, creator));
        for name in ["messages-history", "session-metadata", "public-keys-updated"] {
            assert!(
                self.event(name, WAIT, |_| true).await.is_some(),
                "join of {user}: no {name}"
            );
        }
    }
}

/// Two members of a session of their own, both at [`BYSTANDER`]'s address,
/// that must keep being served whatever the attacker does.
pub struct Bystander {
    pub addr: SocketAddr,
    session: String,
    a: SioClient,
    b: SioClient,
    seq: std::sync::atomic::AtomicUsize,
}

impl Bystander {
    pub async fn open(addr: SocketAddr, session: &str) -> Bystander {
        let a = SioClient::connect_from(BYSTANDER, addr).await;
        a.join(session, "by-a", true).await;
        let b = SioClient::connect_from(BYSTANDER, addr).await;
        b.join(session, "by-b", false).await;
        a.event("user-joined", WAIT, |d| d["userId"] == "by-b")
            .await
            .expect("user-joined for by-b");
        Bystander {
            addr,
            session: session.into(),
            a,
            b,
            seq: Default::default(),
        }
    }

    /// `/health` from the bystander's address and one message each way,
    /// each within [`PROMPT`]; returns the slowest of the three.
    pub async fn assert_served(&self) -> Duration {
        let mut worst = health_from(BYSTANDER, self.addr).await;
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (from, to, name) in [(&self.a, &self.b, "by-a"), (&self.b, &self.a, "by-b")] {
            let text = format!("bystander-{name}-{n}");
            let sent = Instant::now();
            from.emit("send-message", message(&self.session, name, None, &text));
            to.event("new-message", PROMPT, |d| d["encrypted"] == text.as_str())
                .await
                .unwrap_or_else(|| panic!("the bystander's message {text} did not arrive within {PROMPT:?}"));
            worst = worst.max(sent.elapsed());
        }
        worst
    }
}

// ---------------------------------------------------------------------------
// Long-polling

/// A polling session connected to the main namespace (its socket exists).
/// The engine's first ping may come before the connect answer: it is answered.
pub async fn connected_polling(addr: std::net::SocketAddr) -> Polling {
    let polling = Polling::open(addr).await;
    assert_eq!(polling.post(b"40").await.0, 200, "namespace connect over polling");
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = polling.get().await;
        assert_eq!(status, 200, "{body}");
        if body.split('\u{1e}').any(|p| p == "2") {
            assert_eq!(polling.post(b"3").await.0, 200, "pong");
        }
        if body.contains("40{") {
            return polling;
        }
        assert!(Instant::now() < deadline, "no connect answer over polling");
    }
}

/// `n` pong packets joined by the Engine.IO v4 separator: a valid polling body.
pub fn pongs(n: usize) -> Vec<u8> {
    vec!["3"; n].join("\u{1e}").into_bytes()
}
