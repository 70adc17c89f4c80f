//! The accept loop, and how each connection is served.
//!
//! `axum::serve` has no header-read timeout (slowloris works against it), no
//! connection cap and no idle timeout, so connections are served here with
//! hyper directly:
//!
//! - a semaphore caps open connections (`MAX_CONNECTIONS`; more wait in the
//!   backlog);
//! - without `TRUST_PROXY`, each peer address (an IPv6 one by its /64) may
//!   hold `MAX_CONNECTIONS_PER_IP` connections: one more is closed at once,
//!   before anything is read from it. Its count drops when the TCP
//!   connection closes, also when it lived on as a WebSocket. (Behind a
//!   proxy the request router counts by the forwarded address instead.)
//! - the opening must arrive within `HEADER_READ_TIMEOUT_SECS`
//!   ([`opening_arrives`]), and HTTP/1 headers as well (hyper's timeout);
//! - a connection with no request in flight, and none started or ended, for
//!   `IDLE_CONNECTION_TIMEOUT_SECS` is closed: that is the only bound on an
//!   HTTP/2 connection that sends no request (hyper has none), and the outer
//!   one on an HTTP/1 keep-alive connection. Bytes read do not count as
//!   activity: an HTTP/2 client could keep a connection open for ever with
//!   PING frames. A held long-poll is a request in flight (for up to
//!   `PING_INTERVAL_MS`), and so is an answer until hyper has written it.
//!   A WebSocket leaves hyper after its upgrade; from then on the Engine.IO
//!   heartbeat watches it.
//! - HTTP/2 keep-alive pings find peers that are gone while a request is
//!   in flight;
//! - shutdown is graceful.
//!
//! The idle clock is one timer inside each connection's own task (no second
//! task per connection: memory per idle connection is what the whole
//! server's budget is counted in).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use socketioxide::adapter::Adapter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::CorsLayer;

use super::body::Tracked;
use super::conn::{ConnectionSwitch, CuttableStream};
pub use super::router::{retry_after, ClientIp, ConnectionCap, RequestRouter, SOCKET_IO_PATH};
use crate::limits::AddressSlot;

/// How long shutdown lets open HTTP connections finish.
const GRACEFUL_HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors) before retrying.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How long a connection asked to close (idle, over its cap, a body too
/// slow) may take to finish its answers before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// An HTTP/2 connection that has read nothing for this long is pinged...
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and closed when the ping is not answered within this long: its peer
/// is gone, even with a request in flight.
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// `IDLE_CONNECTION_TIMEOUT_SECS`.
    pub idle_timeout: Duration,
}

/// Whether a new connection sends enough to tell HTTP/1 from HTTP/2 within
/// the header-read timeout. hyper's own timeout starts only once it reads a
/// request, and its version detection waits for the whole 24-byte HTTP/2
/// preface: silent or half-preface connections would otherwise stay open
/// for ever and, `MAX_CONNECTIONS` of them, lock everyone out.
async fn opening_arrives(stream: &TcpStream, within: Duration) -> bool {
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

/// Accepts connections until `stop`, then lets open ones finish for a moment.
pub async fn serve<A: Adapter>(
    listener: TcpListener,
    router: RequestRouter<A>,
    cors: CorsLayer,
    limits: ServeLimits,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    // Behind a proxy every peer is the proxy: the router counts by the
    // forwarded address instead.
    let per_peer =
        (router.trust_proxy.is_none() && router.connections.max > 0).then(|| router.connections.clone());
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
        let slot = match &per_peer {
            None => None,
            Some(cap) => match cap.counter.try_slot(peer.ip(), cap.max) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(ip = %peer.ip(), "closed a connection: MAX_CONNECTIONS_PER_IP reached");
                    continue; // drops the stream unread, and the permit
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            peer,
            slot,
            router: router.clone(),
            cors: cors.clone(),
            builder: builder.clone(),
            limits,
            stop: stop.clone(),
        };
        connections.spawn(async move {
            connection.serve().await;
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(GRACEFUL_HTTP_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("open HTTP connections were dropped at shutdown");
    }
}

/// One accepted connection and what serving it needs.
struct Connection<A: Adapter> {
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<AddressSlot>,
    router: RequestRouter<A>,
    cors: CorsLayer,
    builder: auto::Builder<TokioExecutor>,
    limits: ServeLimits,
    stop: CancellationToken,
}

impl<A: Adapter> Connection<A> {
    async fn serve(self) {
        let Self {
            stream,
            peer,
            slot,
            router,
            cors,
            builder,
            limits,
            stop,
        } = self;
        if !opening_arrives(&stream, limits.header_read_timeout).await {
            return;
        }
        let (stream, conn) = CuttableStream::new(stream, slot);
        let requests = conn.clone();
        let service = tower::ServiceBuilder::new()
            .layer(cors)
            .service(tower::service_fn(move |req| {
                let (router, conn) = (router.clone(), requests.clone());
                let in_flight = conn.request_started();
                async move {
                    let res = router.handle(peer, conn, req).await;
                    Ok::<_, Infallible>(res.map(|body| Body::new(Tracked::new(body, in_flight))))
                }
            }));
        let connection =
            builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
        watch(connection, &conn, limits.idle_timeout, &stop).await;
    }
}

/// Where a connection is in its life, for [`watch`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Asked to close (idle, over its cap, a body too slow): cut if it has
    /// not closed after [`CLOSE_GRACE`].
    Closing,
    /// The server is shutting down: its answers in flight may finish.
    Stopping,
    /// Cut: waiting for hyper to notice.
    Cut,
}

/// Drives `connection` to its end, closing it gracefully when it has been
/// idle for `idle`, when it is asked to close, or when the server stops.
async fn watch<C: GracefulConnection>(
    connection: C,
    conn: &ConnectionSwitch,
    idle: Duration,
    stop: &CancellationToken,
) {
    let mut connection = pin!(connection);
    let mut timer = pin!(tokio::time::sleep(idle));
    let mut phase = Phase::Serving;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = stop.cancelled(), if phase == Phase::Serving => {
                connection.as_mut().graceful_shutdown();
                phase = Phase::Stopping;
            }
            () = conn.close_requested(), if phase == Phase::Serving => {
                connection.as_mut().graceful_shutdown();
                phase = Phase::Closing;
                timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = timer.as_mut(), if matches!(phase, Phase::Serving | Phase::Closing) => {
                if phase == Phase::Closing {
                    conn.kill();
                    phase = Phase::Cut;
                    continue;
                }
                match conn.idle_deadline(idle) {
                    Some(at) => timer.as_mut().reset(at.into()),
                    None => {
                        connection.as_mut().graceful_shutdown();
                        phase = Phase::Closing;
                        timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                }
            }
        }
    }
}
