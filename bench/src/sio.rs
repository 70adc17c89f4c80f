//! A minimal Engine.IO v4 / Socket.IO v5 client over WebSocket, plus the one
//! HTTP call the flow needs (`POST /api/reserve-session`).
//!
//! Only what a load generator needs: the WebSocket transport (no polling),
//! the default namespace, text packets, answering the server's pings. Frames
//! are inspected as text: the few fields the benchmark reads are found by
//! substring, never by parsing the whole JSON, so the client stays cheap.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// How long one handshake or join may take before it counts as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

pub type Ws = WebSocketStream<TcpStream>;

/// WebSocket settings: a small initial read buffer (it grows for large
/// messages) so that 10 000 idle clients stay cheap, and limits above the
/// server's 20 MiB payload limit.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// One Socket.IO client connected to the default namespace.
pub struct Client {
    pub ws: Ws,
}

/// What a frame from the server is, as far as the benchmark cares.
pub enum Frame {
    /// A Socket.IO event (`42[...]`): the whole text of the packet.
    Event(Utf8Bytes),
    /// An Engine.IO ping (`2`) that the caller must answer with `3`
    /// (only from [`Client::try_next_frame`]).
    Ping,
    /// The connection is gone (close frame, error or end of stream).
    Closed(String),
}

impl Client {
    /// TCP connect, WebSocket upgrade, Engine.IO open, Socket.IO connect.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        timeout(STEP_TIMEOUT, Self::connect_inner(addr))
            .await
            .map_err(|_| anyhow!("handshake timed out"))?
    }

    async fn connect_inner(addr: SocketAddr) -> Result<Self> {
        let tcp = TcpStream::connect(addr).await.context("tcp connect")?;
        tcp.set_nodelay(true)?;
        // Closing with RST leaves no TIME_WAIT behind on the client side, so
        // tens of thousands of connections per run do not exhaust the
        // loopback's ephemeral ports. (The deprecation is about blocking on
        // drop with a non-zero linger; a zero linger never blocks.)
        #[allow(deprecated)]
        let _ = tcp.set_linger(Some(Duration::ZERO));
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
            .await
            .context("websocket upgrade")?;
        let mut client = Client { ws };
        // Engine.IO open packet: `0{"sid":...,"pingInterval":...}`.
        match client.ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with('0') => {}
            other => bail!("expected the Engine.IO open packet, got {other:?}"),
        }
        client.send_text("40".to_owned()).await?;
        loop {
            match client.recv_raw().await? {
                t if t.starts_with("40") => break,
                t if t.starts_with("44") => bail!("namespace connect refused: {t}"),
                _ => continue,
            }
        }
        Ok(client)
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .context("websocket send")
    }

    /// Emits `event` with an already serialized JSON payload.
    pub async fn emit(&mut self, event: &str, json: &str) -> Result<()> {
        self.send_text(format!("42[\"{event}\",{json}]")).await
    }

    /// Next text packet, answering pings on the way.
    async fn recv_raw(&mut self) -> Result<Utf8Bytes> {
        loop {
            match self.next_frame().await {
                Frame::Event(t) => return Ok(t),
                Frame::Ping => continue,
                Frame::Closed(why) => bail!("connection closed: {why}"),
            }
        }
    }

    /// Next Socket.IO packet of interest; pings are answered here.
    pub async fn next_frame(&mut self) -> Frame {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "2" {
                        if let Err(e) = self.send_text("3".to_owned()).await {
                            return Frame::Closed(e.to_string());
                        }
                        continue;
                    }
                    if t.starts_with('1') {
                        return Frame::Closed("engine.io close packet".into());
                    }
                    return Frame::Event(t);
                }
                Some(Ok(Message::Close(c))) => return Frame::Closed(format!("close frame {c:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Frame::Closed(e.to_string()),
                None => return Frame::Closed("end of stream".into()),
            }
        }
    }

    /// The next packet if one is already buffered, without waiting; lets a
    /// task handle a burst of frames in one wake-up. Pings come back as
    /// [`Frame::Ping`] for the caller to answer.
    pub fn try_next_frame(&mut self) -> Option<Frame> {
        loop {
            return match self.ws.next().now_or_never()? {
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => Some(Frame::Ping),
                Some(Ok(Message::Text(t))) if t.starts_with('1') => {
                    Some(Frame::Closed("engine.io close packet".into()))
                }
                Some(Ok(Message::Text(t))) => Some(Frame::Event(t)),
                Some(Ok(Message::Close(c))) => Some(Frame::Closed(format!("close frame {c:?}"))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Some(Frame::Closed(e.to_string())),
                None => Some(Frame::Closed("end of stream".into())),
            };
        }
    }

    /// Sends `join-session` and waits for its `messages-history` (the reply
    /// to the joiner only). Events of other kinds that arrive meanwhile are
    /// ignored. A `session-error` fails the join.
    pub async fn join(&mut self, join: &JoinArgs<'_>) -> Result<Joined> {
        let payload = serde_json::json!({
            "sessionId": format!("{}:{}", join.session_id, join.auth_key),
            "userId": join.user_id,
            "displayName": join.display_name,
            "publicKey": join.public_key,
            "isCreator": join.is_creator,
        })
        .to_string();
        self.emit("join-session", &payload).await?;
        timeout(STEP_TIMEOUT, async {
            loop {
                let t = self.recv_raw().await?;
                match event_name(&t) {
                    Some("messages-history") => {
                        return Ok(Joined {
                            history_bytes: t.len(),
                            history_messages: t.matches("\"encrypted\":").count(),
                        })
                    }
                    Some("session-error") => bail!("join refused: {}", t.as_str()),
                    _ => continue,
                }
            }
        })
        .await
        .map_err(|_| anyhow!("join timed out"))?
    }

    /// Ends the connection at once (RST, see `connect`).
    pub async fn close(self) {
        drop(self.ws);
    }
}

pub struct JoinArgs<'a> {
    pub session_id: &'a str,
    pub auth_key: &'a str,
    pub user_id: &'a str,
    pub display_name: &'a str,
    pub public_key: &'a str,
    pub is_creator: bool,
}

pub struct Joined {
    pub history_bytes: usize,
    pub history_messages: usize,
}

/// The event name of a `42["name",...]` packet.
pub fn event_name(t: &str) -> Option<&str> {
    let rest = t.strip_prefix("42[\"")?;
    rest.split('"').next()
}

/// The value of the first string field whose `"<key>":"` prefix is `pat`.
pub fn string_field<'a>(t: &'a str, pat: &str) -> Option<&'a str> {
    let start = t.find(pat)? + pat.len();
    let len = t[start..].find('"')?;
    Some(&t[start..start + len])
}

/// Field prefixes for [`string_field`].
pub const ID_FIELD: &str = "\"id\":\"";
pub const ENCRYPTED_FIELD: &str = "\"encrypted\":\"";

/// `POST /api/reserve-session`; returns the HTTP status.
pub async fn reserve(addr: SocketAddr, session_id: &str, auth_key: &str) -> Result<u16> {
    let body = serde_json::json!({
        "sessionId": session_id,
        "authKey": auth_key,
        "chatMode": "group",
    })
    .to_string();
    timeout(STEP_TIMEOUT, post_json(addr, "/api/reserve-session", &body))
        .await
        .map_err(|_| anyhow!("reserve timed out"))?
}

/// A one-shot HTTP/1.1 POST (`Connection: close`): enough for the API's
/// single call and free of an HTTP client dependency.
async fn post_json(addr: SocketAddr, path: &str, body: &str) -> Result<u16> {
    let mut s = TcpStream::connect(addr).await.context("tcp connect")?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    s.read_to_end(&mut buf).await?;
    let head = std::str::from_utf8(&buf[..buf.len().min(32)]).unwrap_or("");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP response: {head:?}"))?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_event_names_and_fields() {
        let t = r#"42["new-message",{"id":"3.7.12.99","from":"u","encrypted":"xx"}]"#;
        assert_eq!(event_name(t), Some("new-message"));
        assert_eq!(string_field(t, ID_FIELD), Some("3.7.12.99"));
        assert_eq!(string_field(t, "\"nope\":\""), None);
        assert_eq!(event_name("40"), None);
    }
}
