//! Assembly, start and graceful shutdown of one server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::Method;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
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
use crate::http::{self, HttpState};
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
        })
        .layer(TraceLayer::new_for_http());
        let frontdoor = Frontdoor {
            socket_io,
            api,
            allowed_origins: Arc::new(config.client_origins.clone()),
            trust_proxy: config.trust_proxy.clone(),
            handshakes: handshakes.clone(),
        };

        let listener = TcpListener::bind((config.host, config.port))
            .await
            .with_context(|| {
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
        let eviction = tokio::spawn(eviction::run(
            store,
            io.clone(),
            vec![reservations, handshakes],
            config.cleanup_interval,
            stop.clone(),
        ));
        Ok(RunningServer {
            addr,
            io,
            stop,
            http,
            eviction,
            workers,
        })
    }
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

    /// The shutdown sequence: stop accepting; close every socket (clients
    /// get a Socket.IO disconnect, and each departure is announced to whoever
    /// is still connected); wait for the sockets' workers; stop the eviction
    /// task; let open HTTP requests finish. Bounded to a few seconds.
    pub async fn shutdown(self) {
        self.stop.cancel();
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
