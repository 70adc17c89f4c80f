//! Assembly, start and graceful shutdown of one server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::Method;
use socketioxide::SocketIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::config::{AllowedOrigins, Config};
use crate::domain::store::Limits;
use crate::domain::Store;
use crate::eviction;
use crate::http::serve::{self, Frontdoor, ServeLimits};
use crate::http::{self, HttpState, Readiness};
use crate::limits::{IpLimiter, Rate};
use crate::socket::{self, App};

/// How long shutdown waits for sockets' departures to be handled.
const DRAIN_WORKERS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long shutdown waits for the accept loop to let connections finish.
const DRAIN_HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long browsers may cache a CORS preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Starts servers.
pub struct Server;

/// A server that is listening; stop it with [`RunningServer::shutdown`].
pub struct RunningServer {
    addr: SocketAddr,
    io: SocketIo,
    stop: CancellationToken,
    http: JoinHandle<()>,
    eviction: JoinHandle<()>,
    workers: TaskTracker,
    readiness: Readiness,
    store: Store,
    drain: Duration,
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Server {
    /// Binds `HOST:PORT` and serves in the background.
    pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
        if config.redis_url.is_some() {
            anyhow::bail!(
                "REDIS_URL is set, but this version runs the embedded in-memory store only; unset REDIS_URL"
            );
        }
        let store = Store::new(Limits {
            max_sessions: config.max_sessions,
            max_group_members: config.max_group_members,
            max_history_messages: config.max_history_messages,
            max_history_bytes: config.max_history_bytes,
            max_total_history_bytes: config.max_total_history_bytes,
            idle_timeout: config.session_idle_timeout,
            member_timeout: config.session_member_timeout,
        });
        crate::metrics::init();
        let readiness = Readiness::default();
        let workers = TaskTracker::new();
        let app = App::new(&config, store.clone(), workers.clone());
        let (socket_io, io) = socket::service(&config, app);

        let reservations = Arc::new(IpLimiter::new(per_minute_or_unlimited(
            config.reserve_rate_per_ip,
        )));
        let handshakes = Arc::new(IpLimiter::new(per_minute_or_unlimited(
            config.handshake_rate_per_ip,
        )));
        let api = http::router(HttpState {
            store: store.clone(),
            started: Instant::now(),
            debug: config.debug,
            reservations: reservations.clone(),
            request_timeout: config.api_request_timeout,
            readiness: readiness.clone(),
        })
        .layer(TraceLayer::new_for_http());
        let frontdoor = Frontdoor {
            socket_io,
            api,
            allowed_origins: Arc::new(config.client_origins.clone()),
            trust_proxy: config.trust_proxy.clone(),
            handshakes: handshakes.clone(),
        };

        let listener = listen(SocketAddr::new(config.host, config.port)).with_context(|| {
            format!(
                "cannot listen on {}:{} (check HOST and PORT)",
                config.host, config.port
            )
        })?;
        let addr = listener.local_addr()?;

        let stop = CancellationToken::new();
        let limits = ServeLimits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
        };
        let http = tokio::spawn(serve::serve(
            listener,
            frontdoor,
            cors(&config.client_origins),
            limits,
            stop.clone(),
        ));
        let metrics = match config.metrics_addr {
            Some(addr) => Some(
                crate::metrics::serve(addr, store.clone(), io.clone(), stop.clone())
                    .await
                    .with_context(|| format!("cannot listen on {addr} (check METRICS_ADDR)"))?,
            ),
            None => None,
        };
        let store_handle = store.clone();
        let eviction = tokio::spawn(eviction::run(
            store,
            io.clone(),
            vec![reservations, handshakes],
            config.cleanup_interval,
            stop.clone(),
        ));
        readiness.set_ready();
        Ok(RunningServer {
            addr,
            io,
            stop,
            http,
            eviction,
            workers,
            readiness,
            store: store_handle,
            drain: config.shutdown_drain,
            metrics,
        })
    }
}

/// Pending connections the kernel may queue before `accept`: a join storm
/// (everyone reconnecting after a restart) must not overflow it. The std
/// default is 128; the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn per_minute_or_unlimited(per_min: u32) -> Rate {
    if per_min == 0 {
        Rate::UNLIMITED
    } else {
        Rate::per_minute(per_min)
    }
}

impl RunningServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// The shutdown sequence: `/ready` turns 503 and everything is still
    /// served for `SHUTDOWN_DRAIN_SECS`; then stop accepting; close every socket (clients
    /// get a Socket.IO disconnect, and each departure is announced to whoever
    /// is still connected); wait for the sockets' workers; stop the eviction
    /// task; let open HTTP requests finish. Bounded to a few seconds.
    pub async fn shutdown(self) {
        self.readiness.set_draining();
        tokio::time::sleep(self.drain).await;
        self.stop.cancel();
        self.announce_departures().await;
        if let Err(e) = self.io.local().disconnect().await {
            tracing::warn!(error = %e, "closing sockets failed");
        }
        self.workers.close();
        if timeout(DRAIN_WORKERS_TIMEOUT, self.workers.wait()).await.is_err() {
            tracing::warn!("some sockets were still busy at shutdown");
        }
        let _ = self.eviction.await;
        self.io.close().await;
        let _ = timeout(DRAIN_HTTP_TIMEOUT, self.http).await;
        if let Some((_, task)) = self.metrics {
            let _ = task.await;
        }
        tracing::info!("shut down");
    }
}

impl RunningServer {
    /// Tells every connected member that the others left, before the sockets
    /// close (closing them all at once would leave nobody to tell).
    async fn announce_departures(&self) {
        let timestamp = crate::domain::epoch_ms();
        for departures in self.store.remove_all_members() {
            let room = socket::session_room(&departures.session);
            for (user, display_name, conn) in &departures.members {
                let mut notice = serde_json::json!({ "userId": user, "timestamp": timestamp });
                if let Some(name) = display_name {
                    notice["displayName"] = name.as_ref().into();
                }
                let to_others = match socket::local_socket(&self.io, conn) {
                    Some(member) => member.to(room.clone()),
                    None => self.io.to(room.clone()),
                };
                let _ = to_others.emit("user-left", &notice).await;
            }
        }
    }
}

/// CORS for the API and the Socket.IO endpoint: allowed origins are echoed
/// with credentials allowed, as socket.io-client's `withCredentials` needs.
fn cors(origins: &AllowedOrigins) -> CorsLayer {
    let allow_origin = match origins {
        // A literal `*` cannot be combined with credentials; mirroring is the equivalent.
        AllowedOrigins::Any => AllowOrigin::mirror_request(),
        AllowedOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(CORS_MAX_AGE)
}
