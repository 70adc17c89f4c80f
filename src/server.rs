//! Assembly, start and graceful shutdown of one server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::Method;
use engineioxide::service::NotFoundService;
use futures_util::future::{join_all, BoxFuture};
use socketioxide::adapter::Adapter;
use socketioxide::service::SocketIoService;
use socketioxide::{SocketIo, TransportType};
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::cluster;
use crate::config::{AllowedOrigins, Config};
use crate::eviction;
use crate::http::body::MinRate;
use crate::http::cutoff::CutOff;
use crate::http::serve::{self, ConnectionCap, RequestRouter, ServeLimits};
use crate::http::{self, HttpState, Readiness};
use crate::limits::{IpLimiter, Rate};
use crate::quota::{FailureBudget, SessionQuota};
use crate::socket::relay::Relay;
use crate::socket::{self, App, ClusterAdapter, Creations};
use crate::store::redis::driver::ManagedDriver;
use crate::store::redis::{RedisSettings, RedisStore};
use crate::store::{Departures, Limits, Store};

/// How long shutdown waits for sockets' departures to be handled.
const DRAIN_WORKERS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long shutdown waits for the accept loop to let connections finish.
const DRAIN_HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long shutdown lets the WebSockets write their last packets.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Cross-node packets a node may have received and not yet handed to its
/// sockets; past it they are dropped (and counted). Slots are allocated
/// only while a backlog exists.
const ADAPTER_STREAM_BUFFER: usize = 65_536;
/// How long browsers may cache a CORS preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Starts servers.
pub struct Server;

/// A server that is listening; stop it with [`RunningServer::shutdown`].
pub struct RunningServer {
    addr: SocketAddr,
    sockets: Box<dyn SocketLayer>,
    stop: CancellationToken,
    http: JoinHandle<()>,
    /// The eviction sweep and, in a cluster, the heartbeat.
    background: Vec<JoinHandle<()>>,
    workers: TaskTracker,
    readiness: Readiness,
    store: Store,
    drain: Duration,
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Server {
    /// Connects the store (Redis when `REDIS_URL` is set), binds
    /// `HOST:PORT` and serves in the background.
    pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
        let limits = Limits {
            max_sessions: config.max_sessions,
            max_group_members: config.max_group_members,
            max_history_messages: config.max_history_messages,
            max_history_bytes: config.max_history_bytes,
            max_total_history_bytes: config.max_total_history_bytes,
            idle_timeout: config.session_idle_timeout,
            member_timeout: config.session_member_timeout,
            history_page_bytes: crate::store::HISTORY_PAGE_BYTES,
            auth_failures_per_session_per_min: config.auth_failures_per_session_per_min,
            password_kdf: crate::domain::secret::KdfCost::STANDARD,
        };
        crate::metrics::init();
        let workers = TaskTracker::new();
        let creations = Creations {
            rate: Arc::new(IpLimiter::new(Rate::per_minute_or_unlimited(
                config.reserve_rate_per_ip,
            ))),
            quota: SessionQuota::new(config.max_sessions_per_ip),
            failures: FailureBudget::new(config.auth_failures_per_ip_per_min),
        };
        let Some(url) = config.redis_url.clone() else {
            let store = Store::memory(limits);
            let app = App::new(&config, store.clone(), workers.clone(), creations.clone());
            let (service, io) = socket::builder(&config, app).build_svc();
            io.ns("/", socket::connect_handler());
            return Assembly {
                config,
                store,
                service,
                io,
                workers,
                creations,
                cluster: None,
            }
            .start()
            .await;
        };
        config.check_cluster().map_err(anyhow::Error::msg)?;
        let settings = RedisSettings {
            url,
            tls_ca_file: config.redis_tls_ca_file.clone(),
            prefix: config.redis_prefix.clone(),
            node_id: config.node_id.clone(),
            node_timeout: config.node_timeout,
            store_timeout: config.store_timeout,
            cleanup_interval: config.cleanup_interval,
        };
        let (redis, driver) = crate::store::redis::connect(&settings, limits).await?;
        let store = Store::Redis(redis.clone());
        let app = App::new(&config, store.clone(), workers.clone(), creations.clone());
        let adapter = RedisAdapterCtr::new_with_driver(
            driver.clone(),
            RedisAdapterConfig::new()
                .with_prefix(format!("{}-socket.io", config.redis_prefix))
                .with_stream_buffer(ADAPTER_STREAM_BUFFER),
        );
        let (service, io) = socket::builder(&config, app)
            .with_adapter::<ClusterAdapter>(adapter)
            .build_svc();
        io.ns("/", socket::connect_handler())
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to Redis pub/sub (REDIS_URL): {e:?}"))?;
        cluster::join(&redis, &io).await?;
        tracing::info!(
            node = redis.node_id(),
            "cluster mode: sessions and emits shared through Redis"
        );
        Assembly {
            config,
            store,
            service,
            io,
            workers,
            creations,
            cluster: Some((redis, driver)),
        }
        .start()
        .await
    }
}

/// Everything [`Server::start`] built that depends on the adapter.
struct Assembly<A: Adapter> {
    config: Config,
    store: Store,
    service: SocketIoService<NotFoundService, A>,
    io: SocketIo<A>,
    workers: TaskTracker,
    creations: Creations,
    cluster: Option<(RedisStore, ManagedDriver)>,
}

impl<A: Adapter> Assembly<A> {
    async fn start(self) -> anyhow::Result<RunningServer> {
        let Self {
            config,
            store,
            service,
            io,
            workers,
            creations,
            cluster,
        } = self;
        let readiness = Readiness::default();
        let (router, limiters) = request_router(&config, &store, service, &io, &readiness, &creations);
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
            idle_timeout: config.idle_connection_timeout,
        };
        let http = tokio::spawn(serve::serve(
            listener,
            router,
            cors(&config.client_origins),
            limits,
            stop.clone(),
        ));
        let metrics = match config.metrics_addr {
            Some(addr) => Some(
                crate::metrics::serve(
                    addr,
                    store.clone(),
                    crate::metrics::socket_counter(io.clone()),
                    stop.clone(),
                )
                .await
                .with_context(|| format!("cannot listen on {addr} (check METRICS_ADDR)"))?,
            ),
            None => None,
        };
        let mut background = vec![tokio::spawn(eviction::run(
            store.clone(),
            io.clone(),
            limiters,
            creations.clone(),
            config.cleanup_interval,
            stop.clone(),
        ))];
        if let Some((redis, driver)) = cluster {
            background.push(tokio::spawn(cluster::run(
                redis,
                driver,
                io.clone(),
                stop.clone(),
            )));
        }
        readiness.set_ready();
        Ok(RunningServer {
            addr,
            sockets: Box::new(io),
            stop,
            http,
            background,
            workers,
            readiness,
            store,
            drain: config.shutdown_drain,
            metrics,
        })
    }
}

/// The request router in front of socketioxide and the API, and the per-IP
/// limiters it and the API use (pruned by the eviction task).
fn request_router<A: Adapter>(
    config: &Config,
    store: &Store,
    service: SocketIoService<NotFoundService, A>,
    io: &SocketIo<A>,
    readiness: &Readiness,
    creations: &Creations,
) -> (RequestRouter<A>, Vec<Arc<IpLimiter>>) {
    let reservations = creations.rate.clone();
    let handshakes = Arc::new(IpLimiter::new(Rate::per_minute_or_unlimited(
        config.handshake_rate_per_ip,
    )));
    let api = http::router(HttpState {
        store: store.clone(),
        started: Instant::now(),
        debug: config.debug,
        reservations: reservations.clone(),
        quota: creations.quota.clone(),
        request_timeout: config.api_request_timeout,
        readiness: readiness.clone(),
    })
    // A 503 from `/ready` while draining is expected, not an error: API
    // failures are traced at `debug`, like the requests themselves.
    .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)));
    let router = RequestRouter {
        socket_io: service,
        io: io.clone(),
        api,
        allowed_origins: Arc::new(config.client_origins.clone()),
        trust_proxy: config.trust_proxy.clone(),
        handshakes: handshakes.clone(),
        connections: ConnectionCap {
            counter: Arc::default(),
            max: config.max_connections_per_ip,
        },
        body_rate: MinRate::new(config.body_min_rate, config.body_rate_window),
    };
    (router, vec![reservations, handshakes])
}

/// What shutdown needs from socketioxide, whichever adapter runs.
trait SocketLayer: Send + Sync {
    fn announce(&self, departures: Vec<Departures>) -> BoxFuture<'_, ()>;
    fn disconnect_all(&self) -> BoxFuture<'_, ()>;
    fn close(&self) -> BoxFuture<'_, ()>;
    /// The HTTP side of the socket `sid` on this node.
    #[cfg(feature = "test-hooks")]
    fn session(&self, sid: &str) -> Option<CutOff>;
    /// Cuts the socket `sid` off as the server cuts off a slow consumer.
    #[cfg(feature = "test-hooks")]
    fn cut_off(&self, sid: &str) -> bool;
}

impl<A: Adapter> SocketLayer for SocketIo<A> {
    fn announce(&self, departures: Vec<Departures>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            Relay::new(self.clone(), false)
                .announce_departures(departures)
                .await
        })
    }

    fn disconnect_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let queued_since = std::time::Instant::now();
            let mut closing = Vec::new();
            for socket in self.local().sockets() {
                let websocket = socket.transport_type() == TransportType::Websocket;
                let cutoff = socket.req_parts().extensions.get::<CutOff>().cloned();
                let told = socket.clone().disconnect().is_ok();
                match cutoff {
                    // Its disconnect packet is queued: the WebSocket is
                    // closed once the packet is written.
                    Some(cutoff) if websocket && told => closing.push(cutoff.finish(queued_since)),
                    // No room left in its buffer: it stopped reading.
                    Some(cutoff) if !told => cutoff.cut(),
                    // Polling: the packet goes out with the pending poll,
                    // which the HTTP shutdown lets finish.
                    _ => {}
                }
            }
            if timeout(FLUSH_TIMEOUT, join_all(closing)).await.is_err() {
                tracing::debug!("some WebSockets were still closing at shutdown");
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(SocketIo::close(self))
    }

    #[cfg(feature = "test-hooks")]
    fn session(&self, sid: &str) -> Option<CutOff> {
        let socket = self.get_socket(sid.parse().ok()?)?;
        socket.req_parts().extensions.get::<CutOff>().cloned()
    }

    #[cfg(feature = "test-hooks")]
    fn cut_off(&self, sid: &str) -> bool {
        let Some(socket) = sid.parse().ok().and_then(|sid| self.get_socket(sid)) else {
            return false;
        };
        crate::socket::relay::cut_off(&socket);
        true
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

impl RunningServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Test hook: the outbox of the socket `sid` (its Engine.IO sid) on this node.
    #[cfg(feature = "test-hooks")]
    pub fn outbox(&self, sid: &str) -> Option<Arc<crate::http::outbox::Outbox>> {
        self.sockets.session(sid).map(|s| s.outbox().clone())
    }

    /// Test hook: cuts the socket `sid` off as the server cuts off a slow
    /// consumer; `false` when there is no such socket on this node.
    #[cfg(feature = "test-hooks")]
    pub fn cut_off(&self, sid: &str) -> bool {
        self.sockets.cut_off(sid)
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// The shutdown sequence: `/ready` turns 503 and everything is still
    /// served for `SHUTDOWN_DRAIN_SECS`; then stop accepting and stop the
    /// background tasks (eviction, heartbeat); remove this
    /// node's members and announce their departures to whoever stays (on
    /// this node or, in a cluster, any other); close every socket; wait for
    /// the sockets' workers; let open HTTP requests finish. Bounded to a
    /// few seconds.
    pub async fn shutdown(self) {
        self.readiness.set_draining();
        tokio::time::sleep(self.drain).await;
        self.stop.cancel();
        // The heartbeat must be over before this node's entry is removed,
        // or a beat in flight would write it back.
        for task in self.background {
            let _ = task.await;
        }
        match self.store.remove_local_members().await {
            Ok(departures) => self.sockets.announce(departures).await,
            Err(_) => tracing::warn!(
                "Redis unavailable at shutdown: the other nodes will remove this node's members \
                 when its heartbeat expires"
            ),
        }
        self.sockets.disconnect_all().await;
        self.workers.close();
        if timeout(DRAIN_WORKERS_TIMEOUT, self.workers.wait()).await.is_err() {
            tracing::warn!("some sockets were still busy at shutdown");
        }
        // Joins handled while the sockets were closing re-added members.
        if let Ok(late) = self.store.remove_local_members().await {
            self.sockets.announce(late).await;
        }
        self.sockets.close().await;
        let _ = timeout(DRAIN_HTTP_TIMEOUT, self.http).await;
        if let Some((_, task)) = self.metrics {
            let _ = task.await;
        }
        tracing::info!("shut down");
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
