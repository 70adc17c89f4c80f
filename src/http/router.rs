//! The request router every request passes: `/socket.io/` requests go to
//! socketioxide, the rest to the API router.
//!
//! For every request, it first finds the client address (the peer, or with
//! `TRUST_PROXY` the last entry of that header, where a proxy may write
//! `ip`, `ip:port` or `[ipv6]:port`). Behind a proxy every connection comes
//! from the proxy, so the per-address connection cap is applied here, by
//! the address of the connection's requests: a request whose address
//! already has `MAX_CONNECTIONS_PER_IP` connections gets 429 and its
//! connection is closed (without a proxy the accept loop counts peers).
//!
//! Socket.IO requests are checked (origin, handshake rate per address) and
//! then rebuilt from fresh copies of only the headers the engine needs:
//! engineioxide keeps a socket's request parts for the socket's whole life,
//! and hyper's originals are slices of its 16 KB read buffer, which would
//! stay allocated per connection (docs/PROTOCOL.md, "Facts about the
//! stack", point 4). Around the engine, per session ([`CutOff`]):
//!
//! - a new session's handshake request carries its new [`CutOff`];
//! - a polling POST's body must keep up `BODY_MIN_RATE_BYTES_PER_SEC`
//!   ([`PacedBody`]; 408 and the connection closed otherwise), and a second
//!   POST of a session while one is being read is refused with 400. The
//!   mark of a POST being read lives in the session's [`CutOff`], which a
//!   request reaches through the session's socket, so it exists from the
//!   namespace connect on (the first POST carries that connect); before it,
//!   the minimum rate and the per-address connection cap bound such POSTs;
//! - a polling GET's answer is credited to the session's outbox as hyper
//!   takes it ([`Credited`]);
//! - a WebSocket request the engine answers 101 is recorded as the
//!   session's (possible) WebSocket, and its connection credits the outbox
//!   (see `cutoff.rs` on why only then).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use axum::response::IntoResponse;
use axum::{Json, Router};
use engineioxide::service::NotFoundService;
use hyper::body::Incoming;
use serde_json::json;
use socketioxide::adapter::Adapter;
use socketioxide::service::SocketIoService;
use socketioxide::socket::Sid;
use socketioxide::SocketIo;
use tower::ServiceExt;

use super::body::{Credited, MinRate, PacedBody};
use super::conn::ConnectionSwitch;
use super::cutoff::CutOff;
use crate::config::AllowedOrigins;
use crate::limits::{IpCounter, IpLimiter};

/// The path socketioxide serves.
pub const SOCKET_IO_PATH: &str = "/socket.io";

/// The only headers engineioxide reads (a WebSocket upgrade's key, a polling
/// POST's type); every other header is dropped from Socket.IO requests,
/// which the engine keeps for the socket's life.
const ENGINE_HEADERS: [HeaderName; 2] = [header::SEC_WEBSOCKET_KEY, header::CONTENT_TYPE];

/// The client's IP, as the API handlers and the Socket.IO connect
/// middleware see it (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Open TCP connections per client address (`MAX_CONNECTIONS_PER_IP`).
#[derive(Clone, Default)]
pub struct ConnectionCap {
    pub counter: Arc<IpCounter>,
    /// 0: no limit.
    pub max: usize,
}

/// Routes every request; cheap to clone.
pub struct RequestRouter<A: Adapter> {
    pub socket_io: SocketIoService<NotFoundService, A>,
    /// To find the session a request with a `sid` belongs to.
    pub io: SocketIo<A>,
    pub api: Router,
    pub allowed_origins: Arc<AllowedOrigins>,
    pub trust_proxy: Option<HeaderName>,
    pub handshakes: Arc<IpLimiter>,
    pub connections: ConnectionCap,
    /// What a polling POST's body must keep up.
    pub body_rate: MinRate,
}

// Not derived: the adapter type itself need not be `Clone`.
impl<A: Adapter> Clone for RequestRouter<A> {
    fn clone(&self) -> Self {
        Self {
            socket_io: self.socket_io.clone(),
            io: self.io.clone(),
            api: self.api.clone(),
            allowed_origins: self.allowed_origins.clone(),
            trust_proxy: self.trust_proxy.clone(),
            handshakes: self.handshakes.clone(),
            connections: self.connections.clone(),
            body_rate: self.body_rate,
        }
    }
}

/// What a `/socket.io/` request is to the engine, from its query and method.
struct EngineRequest {
    /// No `sid`: a polling handshake or a fresh WebSocket, which starts a session.
    new_session: bool,
    sid: Option<Sid>,
    /// A WebSocket request over HTTP/1.1 (only those can be upgraded).
    websocket: bool,
    /// A polling POST (a body of packets).
    post: bool,
    /// A polling GET with a `sid` (a poll, answered with packets).
    poll: bool,
}

impl EngineRequest {
    fn of<B>(req: &Request<B>) -> Self {
        let query = req.uri().query().unwrap_or_default();
        let has = |pair: &str| query.split('&').any(|kv| kv == pair);
        let sid = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("sid="))
            .and_then(|s| s.parse().ok());
        let polling = has("transport=polling");
        Self {
            new_session: !query.split('&').any(|kv| kv.starts_with("sid=")),
            sid,
            websocket: has("transport=websocket")
                && req.headers().contains_key(header::UPGRADE)
                && req.version() == Version::HTTP_11,
            post: polling && req.method() == Method::POST,
            poll: polling && req.method() == Method::GET && sid.is_some(),
        }
    }
}

impl<A: Adapter> RequestRouter<A> {
    pub(super) async fn handle(
        self,
        peer: SocketAddr,
        conn: ConnectionSwitch,
        mut req: Request<Incoming>,
    ) -> Response<Body> {
        let ip = ClientIp(self.client_ip(&req, peer));
        if self.trust_proxy.is_some() && self.connections.max > 0 {
            let counter = &self.connections.counter;
            if !conn.count_against(ip.0, counter, self.connections.max) {
                tracing::info!(ip = %ip.0, "refused a request: MAX_CONNECTIONS_PER_IP reached");
                return closing(&conn, too_many_connections());
            }
        }
        if !req.uri().path().starts_with(SOCKET_IO_PATH) {
            req.extensions_mut().insert(ip);
            return match self.api.oneshot(req.map(Body::new)).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            if !self.allowed_origins.allows(origin) {
                tracing::warn!(
                    ?origin,
                    "refused a Socket.IO connection from an origin not in CLIENT_URL"
                );
                return json_error(StatusCode::FORBIDDEN, "Origin not allowed");
            }
        }
        let kind = EngineRequest::of(&req);
        if kind.new_session {
            if let Err(wait) = self.handshakes.check(ip.0) {
                tracing::info!(ip = %ip.0, "refused a Socket.IO handshake: rate limit");
                crate::metrics::rate_limited("ip", "handshake");
                let mut res = json_error(StatusCode::TOO_MANY_REQUESTS, "Too many connections, retry later");
                res.headers_mut().insert(header::RETRY_AFTER, retry_after(wait));
                return res;
            }
        }
        self.to_engine(req, kind, ip, conn).await
    }

    /// Hands a Socket.IO request to the engine, with the session's
    /// bookkeeping around it (see the module doc).
    async fn to_engine(
        &self,
        req: Request<Incoming>,
        kind: EngineRequest,
        ip: ClientIp,
        conn: ConnectionSwitch,
    ) -> Response<Body> {
        // A request with a `sid` belongs to a session, known here once its
        // socket exists (from its namespace connect on).
        let session = kind.sid.and_then(|sid| self.session(sid));
        let new = kind.new_session.then(|| CutOff::new(&conn));
        if kind.websocket && session.as_ref().is_some_and(|s| !s.may_upgrade()) {
            return json_error(
                StatusCode::BAD_REQUEST,
                "Too many WebSocket upgrades for this session",
            );
        }
        let _posting = match (&session, kind.post) {
            (Some(session), true) => match session.start_post() {
                Some(posting) => {
                    session.outbox().heard_from_client();
                    Some(posting)
                }
                None => {
                    tracing::info!(ip = %ip.0, "refused a polling POST: another one of its session is being read");
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        "Another POST of this session is in progress",
                    );
                }
            },
            _ => None,
        };
        let (req, too_slow) = if kind.post {
            let (parts, body) = req.into_parts();
            let (body, too_slow) = PacedBody::paced(body, self.body_rate);
            (Request::from_parts(parts, body), Some(too_slow))
        } else {
            (req.map(PacedBody::unpaced), None)
        };
        let req = lean_request(req, ip, new.clone());
        let res = match self.socket_io.clone().oneshot(req).await {
            Ok(res) => res.map(Body::new),
            Err(never) => match never {},
        };
        if too_slow.is_some_and(|flag| flag.load(Ordering::Acquire)) {
            tracing::info!(ip = %ip.0, "cut a polling POST whose body arrived too slowly");
            return closing(
                &conn,
                json_error(StatusCode::REQUEST_TIMEOUT, "Request body too slow"),
            );
        }
        if kind.websocket && res.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(session) = session.as_ref().or(new.as_ref()) {
                session.upgrading_on(&conn);
            }
        }
        match session {
            Some(session) if kind.poll => {
                res.map(|body| Body::new(Credited::new(body, session.outbox().clone())))
            }
            _ => res,
        }
    }

    /// The HTTP side of the session `sid`, once its socket exists.
    fn session(&self, sid: Sid) -> Option<CutOff> {
        let socket = self.io.get_socket(sid)?;
        socket.req_parts().extensions.get::<CutOff>().cloned()
    }

    /// The peer address, or with `TRUST_PROXY` the last entry of that header.
    fn client_ip<B>(&self, req: &Request<B>, peer: SocketAddr) -> IpAddr {
        self.trust_proxy
            .as_ref()
            .and_then(|name| req.headers().get(name))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(forwarded_ip)
            .unwrap_or_else(|| peer.ip())
    }
}

/// An address as a proxy writes it in a forwarding header: `1.2.3.4`,
/// `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`.
pub fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// A copy of `req` with fresh copies of only the engine's headers, a copied
/// URI, and no extension but hyper's upgrade handle, the client IP and, for
/// a new session, its [`CutOff`].
fn lean_request<B>(req: Request<B>, ip: ClientIp, cutoff: Option<CutOff>) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    let uri: Uri = parts.uri.to_string().parse().unwrap_or_default();
    let mut lean = Request::new(body);
    *lean.method_mut() = parts.method.clone();
    *lean.uri_mut() = uri;
    *lean.version_mut() = parts.version;
    let kept: Vec<_> = ENGINE_HEADERS
        .into_iter()
        .filter_map(|name| {
            let value = parts.headers.get(&name)?;
            Some((name, HeaderValue::from_bytes(value.as_bytes()).ok()?))
        })
        .collect();
    // Sized to fit: a map grown by its first insert holds room for six.
    let mut headers = HeaderMap::with_capacity(kept.len());
    headers.extend(kept);
    *lean.headers_mut() = headers;
    if let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        lean.extensions_mut().insert(upgrade);
    }
    lean.extensions_mut().insert(ip);
    if let Some(cutoff) = cutoff {
        lean.extensions_mut().insert(cutoff);
    }
    lean
}

pub(super) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    (status, Json(json!({ "error": message }))).into_response()
}

fn too_many_connections() -> Response<Body> {
    json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many connections from this address",
    )
}

/// `res`, after which its connection is closed: `Connection: close` for
/// HTTP/1, and the connection asked to close (HTTP/2 gets a GOAWAY).
fn closing(conn: &ConnectionSwitch, mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    conn.request_close();
    res
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after(wait: std::time::Duration) -> HeaderValue {
    HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_entries_with_or_without_a_port_give_the_address() {
        let ip = |s: &str| forwarded_ip(s).map(|ip| ip.to_string());
        assert_eq!(ip("1.2.3.4").as_deref(), Some("1.2.3.4"));
        assert_eq!(ip(" 1.2.3.4:5678 ").as_deref(), Some("1.2.3.4"));
        assert_eq!(ip("2001:db8::1").as_deref(), Some("2001:db8::1"));
        assert_eq!(ip("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(ip("[2001:db8::1]").as_deref(), Some("2001:db8::1"));
        for bad in [
            "",
            "unknown",
            "1.2.3.4:",
            "[2001:db8::1",
            "1.2.3.4:port",
            "_hidden",
        ] {
            assert_eq!(ip(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn engine_requests_are_told_apart_by_query_method_and_upgrade() {
        let sid = "AAAAAAAAAAAAAAAA";
        let req = |method: Method, query: &str, upgrade: bool| {
            let mut b = Request::builder()
                .method(method)
                .uri(format!("/socket.io/?EIO=4&{query}"));
            if upgrade {
                b = b.header(header::UPGRADE, "websocket");
            }
            EngineRequest::of(&b.body(()).unwrap())
        };
        let ws = req(Method::GET, &format!("transport=websocket&sid={sid}"), true);
        assert!(ws.websocket && ws.sid.is_some() && !ws.post && !ws.poll);
        let no_upgrade_header = req(Method::GET, "transport=websocket", false);
        assert!(!no_upgrade_header.websocket);
        let post = req(Method::POST, &format!("transport=polling&sid={sid}"), false);
        assert!(post.post && !post.poll);
        let poll = req(Method::GET, &format!("transport=polling&sid={sid}"), false);
        assert!(poll.poll && !poll.post);
        let handshake = req(Method::GET, "transport=polling", false);
        assert!(handshake.new_session && !handshake.poll && handshake.sid.is_none());
        let bad_sid = req(Method::GET, "transport=polling&sid=x", false);
        assert!(
            !bad_sid.new_session && bad_sid.sid.is_none(),
            "the engine refuses it; it starts nothing"
        );
    }
}
