//! The accept loop and the request router every request passes.
//!
//! `axum::serve` has no header-read timeout (slowloris works against it) and
//! no connection cap, so connections are served here with hyper directly:
//! a semaphore caps open connections, HTTP/1 headers must arrive within
//! `HEADER_READ_TIMEOUT_SECS`, and shutdown is graceful.
//!
//! The request router sends `/socket.io/` requests to socketioxide and the rest
//! to the API router. Socket.IO requests are checked (origin, handshake rate
//! per IP) and then rebuilt from fresh copies of only the headers the engine
//! needs: engineioxide keeps a socket's request parts for the socket's whole
//! life, and hyper's originals are slices of its 16 KB read buffer, which
//! would stay allocated per connection (docs/PROTOCOL.md, "Facts about the stack", point 4).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::{Json, Router};
use engineioxide::service::NotFoundService;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use socketioxide::adapter::Adapter;
use socketioxide::service::SocketIoService;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::cors::CorsLayer;

use super::cutoff::{CutOff, CuttableStream, ConnectionSwitch};
use crate::config::AllowedOrigins;
use crate::limits::IpLimiter;

/// The path socketioxide serves.
pub const SOCKET_IO_PATH: &str = "/socket.io";
/// How long shutdown lets open HTTP connections finish.
const GRACEFUL_HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors) before retrying.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Headers the Engine.IO engine reads; every other header is dropped from
/// Socket.IO requests.
const ENGINE_HEADERS: [HeaderName; 9] = [
    header::HOST,
    header::ORIGIN,
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
];

/// The client's IP, as the API handlers and the Socket.IO connect
/// middleware see it (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Routes every request; cheap to clone.
pub struct RequestRouter<A: Adapter> {
    pub socket_io: SocketIoService<NotFoundService, A>,
    /// To find the session a WebSocket upgrade belongs to.
    pub io: SocketIo<A>,
    pub api: Router,
    pub allowed_origins: Arc<AllowedOrigins>,
    pub trust_proxy: Option<HeaderName>,
    pub handshakes: Arc<IpLimiter>,
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
        }
    }
}

impl<A: Adapter> RequestRouter<A> {
    async fn handle(self, peer: SocketAddr, conn: ConnectionSwitch, mut req: Request<Incoming>) -> Response<Body> {
        let ip = ClientIp(self.client_ip(&req, peer));
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
        if is_new_handshake(req.uri()) {
            if let Err(wait) = self.handshakes.check(ip.0) {
                tracing::info!(ip = %ip.0, "refused a Socket.IO handshake: rate limit");
                crate::metrics::rate_limited("ip", "handshake");
                let mut res = json_error(StatusCode::TOO_MANY_REQUESTS, "Too many connections, retry later");
                res.headers_mut().insert(header::RETRY_AFTER, retry_after(wait));
                return res;
            }
        }
        let cutoff = CutOff::new(&conn);
        if let Some(sid) = upgraded_session(&req) {
            // The session now lives on this connection: cutting it off
            // must cut this one.
            if let Some(socket) = self.io.get_socket(sid) {
                if let Some(session) = socket.req_parts().extensions.get::<CutOff>() {
                    session.upgraded_to(&cutoff);
                }
            }
        }
        let req = lean_request(req, ip, cutoff);
        match self.socket_io.oneshot(req).await {
            Ok(res) => res.map(Body::new),
            Err(never) => match never {},
        }
    }

    /// The peer address, or with `TRUST_PROXY` the last entry of that header.
    fn client_ip(&self, req: &Request<Incoming>, peer: SocketAddr) -> IpAddr {
        self.trust_proxy
            .as_ref()
            .and_then(|name| req.headers().get(name))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| peer.ip())
    }
}

/// A polling handshake or a fresh WebSocket (no `sid` yet) starts a new session.
fn is_new_handshake(uri: &Uri) -> bool {
    !uri.query()
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv.starts_with("sid="))
}

/// The session a WebSocket upgrade request (`transport=websocket` with a
/// `sid`) moves from long-polling.
fn upgraded_session(req: &Request<Incoming>) -> Option<socketioxide::socket::Sid> {
    if !req.headers().contains_key(header::UPGRADE) {
        return None;
    }
    let mut pairs = req.uri().query()?.split('&');
    if !pairs.clone().any(|kv| kv == "transport=websocket") {
        return None;
    }
    pairs.find_map(|kv| kv.strip_prefix("sid="))?.parse().ok()
}

/// A copy of `req` with fresh copies of only the engine's headers, a copied
/// URI, and no extension but hyper's upgrade handle, the client IP and the
/// session's hold on its connection ([`CutOff`]).
fn lean_request(req: Request<Incoming>, ip: ClientIp, cutoff: CutOff) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let uri: Uri = parts.uri.to_string().parse().unwrap_or_default();
    let mut lean = Request::new(body);
    *lean.method_mut() = parts.method.clone();
    *lean.uri_mut() = uri;
    *lean.version_mut() = parts.version;
    for name in ENGINE_HEADERS {
        if let Some(value) = parts.headers.get(&name) {
            if let Ok(copy) = HeaderValue::from_bytes(value.as_bytes()) {
                lean.headers_mut().insert(name, copy);
            }
        }
    }
    if let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        lean.extensions_mut().insert(upgrade);
    }
    lean.extensions_mut().insert(ip);
    lean.extensions_mut().insert(cutoff);
    lean
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    (status, Json(json!({ "error": message }))).into_response()
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after(wait: Duration) -> HeaderValue {
    HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64)
}

/// Whether a new connection sends enough to tell HTTP/1 from HTTP/2 within
/// the header-read timeout. hyper's own timeout starts only once it reads a
/// request, and its version detection waits for the whole 24-byte HTTP/2
/// preface: silent or half-preface connections would otherwise stay open
/// for ever and, `MAX_CONNECTIONS` of them, lock everyone out.
async fn opening_arrives(stream: &tokio::net::TcpStream, within: Duration) -> bool {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// Pause between looks at a partial preface (peeking does not wait for more).
    const PARTIAL_PREFACE_POLL: Duration = Duration::from_millis(10);
    let opening = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] => return true,
                Ok(_) => tokio::time::sleep(PARTIAL_PREFACE_POLL).await,
            }
        }
    };
    tokio::time::timeout(within, opening).await.unwrap_or(false)
}

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Accepts connections until `stop`, then lets open ones finish for a moment.
pub async fn serve<A: Adapter>(
    listener: TcpListener,
    router: RequestRouter<A>,
    cors: CorsLayer,
    limits: ServeLimits,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let door = router.clone();
        let cors = cors.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            if opening_arrives(&stream, limits.header_read_timeout).await {
                let (stream, conn) = CuttableStream::new(stream);
                let service = tower::ServiceBuilder::new()
                    .layer(cors)
                    .service(tower::service_fn(move |req| {
                        let (door, conn) = (door.clone(), conn.clone());
                        async move { Ok::<_, Infallible>(door.handle(peer, conn, req).await) }
                    }));
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
                let _ = watcher.watch(connection.into_owned()).await;
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACEFUL_HTTP_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("open HTTP connections were dropped at shutdown");
    }
}
