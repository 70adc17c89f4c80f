//! Prometheus metrics, served on their own listener (`METRICS_ADDR`), never
//! on the public port.
//!
//! Counters and the latency histogram are recorded where things happen
//! (through the `metrics` facade); gauges of state (sockets, sessions,
//! members, history bytes) are read from the store and socketioxide at
//! scrape time, so they can never drift.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use socketioxide::adapter::Adapter;
use socketioxide::{SocketIo, TransportType};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Buckets of `chat_event_duration_seconds`: from 50 µs to 1 s.
const EVENT_DURATION_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.25, 1.0,
];

/// The process's recorder; installed once, shared by every server in the process.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("chat_event_duration_seconds".into()),
                &EVENT_DURATION_BUCKETS,
            )
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder was installed first; /metrics will be empty");
        }
        handle
    })
}

/// Installs the recorder, so that counters are recorded from the start.
pub fn init() {
    handle();
}

/// An accepted message, and to how many sockets it went.
pub fn message_relayed(deliveries: usize) {
    metrics::counter!("chat_messages_total").increment(1);
    metrics::counter!("chat_deliveries_total").increment(deliveries as u64);
}

/// Socket.IO event payload bytes received.
pub fn bytes_in(n: usize) {
    metrics::counter!("chat_received_bytes_total").increment(n as u64);
}

/// Socket.IO event payload bytes sent (once per recipient).
pub fn bytes_out(n: usize) {
    metrics::counter!("chat_sent_bytes_total").increment(n as u64);
}

pub fn join_accepted() {
    metrics::counter!("chat_joins_total").increment(1);
}

pub fn session_error(code: &'static str) {
    metrics::counter!("chat_session_errors_total", "code" => code).increment(1);
}

pub fn event_error(code: &'static str) {
    metrics::counter!("chat_event_errors_total", "code" => code).increment(1);
}

/// A refusal by a rate limit; `scope` is `socket` or `ip`.
pub fn rate_limited(scope: &'static str, what: &'static str) {
    metrics::counter!("chat_rate_limited_total", "scope" => scope, "what" => what).increment(1);
}

/// Sessions evicted; `reason` is `idle` or `expired` (members were still connected).
pub fn evicted(reason: &'static str, n: usize) {
    metrics::counter!("chat_evictions_total", "reason" => reason).increment(n as u64);
}

/// A socket the server cut off: `slow_consumer`, `flood` or `queue_full`.
pub fn forced_disconnect(reason: &'static str) {
    metrics::counter!("chat_forced_disconnects_total", "reason" => reason).increment(1);
}

/// A room broadcast that some socket's full buffer did not take.
pub fn broadcast_incomplete() {
    metrics::counter!("chat_broadcasts_incomplete_total").increment(1);
}

/// A room emit that could not be published to the other nodes (cluster
/// mode); this node's sockets got it.
pub fn cross_node_emit_failed() {
    metrics::counter!("chat_cross_node_emit_failures_total").increment(1);
}

/// How long one event took to handle.
pub fn event_handled(event: &'static str, took: Duration) {
    metrics::histogram!("chat_event_duration_seconds", "event" => event).record(took.as_secs_f64());
}

/// A Redis call failed or timed out (cluster mode).
pub fn store_unavailable() {
    metrics::counter!("chat_store_unavailable_total").increment(1);
}

/// Counts this node's sockets by transport: `(websocket, polling)`.
pub type SocketCounter = Arc<dyn Fn() -> (usize, usize) + Send + Sync>;

/// A [`SocketCounter`] over socketioxide's local sockets.
pub fn socket_counter<A: Adapter>(io: SocketIo<A>) -> SocketCounter {
    Arc::new(move || {
        let (mut websocket, mut polling) = (0usize, 0usize);
        for socket in io.sockets() {
            match socket.transport_type() {
                TransportType::Websocket => websocket += 1,
                TransportType::Polling => polling += 1,
            }
        }
        (websocket, polling)
    })
}

#[derive(Clone)]
struct Sources {
    store: Store,
    sockets: SocketCounter,
}

/// The text exposition of every metric, with state gauges read now.
async fn render(sources: &Sources) -> String {
    let (websocket, polling) = (sources.sockets)();
    metrics::gauge!("chat_sockets", "transport" => "websocket").set(websocket as f64);
    metrics::gauge!("chat_sockets", "transport" => "polling").set(polling as f64);
    // A store that cannot be read leaves the gauges at their last values.
    if let Ok(stats) = sources.store.stats().await {
        if stats.sessions_by_mode.is_empty() {
            metrics::gauge!("chat_sessions", "mode" => "all").set(stats.sessions as f64);
        }
        for (mode, n) in stats.sessions_by_mode {
            metrics::gauge!("chat_sessions", "mode" => mode.as_str()).set(n as f64);
        }
        metrics::gauge!("chat_members").set(stats.members as f64);
        metrics::gauge!("chat_history_bytes").set(stats.history_bytes as f64);
    }
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

async fn scrape(State(sources): State<Sources>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&sources).await,
    )
}

/// Binds the metrics listener; serves `GET /metrics` until `stop`.
pub async fn serve(
    addr: SocketAddr,
    store: Store,
    sockets: SocketCounter,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Sources { store, sockets });
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "metrics listener failed");
        }
    });
    Ok((bound, task))
}
