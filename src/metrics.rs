//! Prometheus metrics, served on their own listener (`METRICS_ADDR`), never
//! on the public port.
//!
//! Every family is in one table, [`FAMILIES`]: its name, type, help text and
//! the label values known in advance. At start-up each is described (its
//! `# HELP` line) and each known series is set to zero, so a fresh server
//! exports every family before anything happened. To add a family or a label
//! value, add it there (and to the README's metrics table).
//!
//! Counters and the latency histogram are recorded where things happen
//! (through the `metrics` facade); gauges of state (sockets, sessions,
//! members, history bytes) and the process figures (`process_*`, from
//! `/proc`) are read at scrape time, so they can never drift.

mod process;

pub use process::PROCESS_FAMILIES;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics::Label;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use socketioxide::adapter::Adapter;
use socketioxide::{SocketIo, TransportType};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::error::STORE_UNAVAILABLE;
use crate::socket::events::{incoming, internal};
use crate::store::Store;

/// Buckets of `chat_event_duration_seconds`: from 50 µs to 1 s.
const EVENT_DURATION_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.25, 1.0,
];

/// The type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As the text format's `# TYPE` line says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Labels and their known values; a series for every combination.
pub type Labels = &'static [(&'static str, &'static [&'static str])];

/// One metric family.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The series zeroed at start-up: for each entry, every combination of
    /// its labels' values. [`PLAIN`] is one series without labels; no entry
    /// at all, series that only appear when set.
    pub series: &'static [Labels],
}

/// One series without labels.
const PLAIN: &[Labels] = &[&[]];

const fn counter(name: &'static str, help: &'static str, series: &'static [Labels]) -> Family {
    Family {
        name,
        kind: Kind::Counter,
        help,
        series,
    }
}

const fn gauge(name: &'static str, help: &'static str, series: &'static [Labels]) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        help,
        series,
    }
}

const fn histogram(name: &'static str, help: &'static str, series: &'static [Labels]) -> Family {
    Family {
        name,
        kind: Kind::Histogram,
        help,
        series,
    }
}

/// Every event a socket's worker handles and times.
const EVENTS: &[&str] = &[
    incoming::JOIN_SESSION,
    incoming::SEND_MESSAGE,
    incoming::GET_PUBLIC_KEYS,
    incoming::SAVE_PUBLIC_KEY,
    incoming::SET_SESSION_KEY,
    incoming::FILE_DOWNLOADED,
    incoming::TYPING,
    incoming::STOPPED_TYPING,
    incoming::LEAVE_SESSION,
    internal::UNKNOWN,
    // Last: not sent by a client (see RATE_LIMITED_EVENTS).
    internal::DISCONNECT,
];

/// The events with a per-socket rate limit: every one a client sends
/// (all of [`EVENTS`] but the disconnect, which is last).
const RATE_LIMITED_EVENTS: &[&str] = match EVENTS.split_last() {
    Some((_, sent_by_clients)) => sent_by_clients,
    None => &[],
};
/// The codes of `session-error` (`JoinError::code`).
const SESSION_ERROR_CODES: &[&str] = &[
    "INVALID_PAYLOAD",
    "SESSION_NOT_FOUND",
    "INVALID_KEY",
    "INVALID_PASSWORD",
    "SESSION_NOT_ACTIVE",
    "SESSION_FULL",
    "SESSION_LIMIT",
    "RATE_LIMITED",
    "ALREADY_CONNECTED",
    "SESSION_EXPIRED",
    STORE_UNAVAILABLE,
];

/// The codes of `event-error` (`EventError::code`, and the rate limit's).
const EVENT_ERROR_CODES: &[&str] = &[
    "INVALID_PAYLOAD",
    "NOT_IN_SESSION",
    "NOT_ALLOWED",
    "UNKNOWN_RECIPIENT",
    "UNKNOWN_EVENT",
    "RATE_LIMITED",
    "STORE_FULL",
    STORE_UNAVAILABLE,
];

/// Every family this server exports, but the process figures
/// ([`PROCESS_FAMILIES`], read at each scrape).
pub const FAMILIES: &[Family] = &[
    gauge(
        "chat_sockets",
        "Connected Socket.IO sockets of this node, by transport.",
        &[&[("transport", &["websocket", "polling"])]],
    ),
    // Set at every scrape: by mode on one node, mode="all" in cluster mode.
    gauge(
        "chat_sessions",
        "Live sessions by mode (group, private, password); in cluster mode one series mode=\"all\" for the whole cluster.",
        &[],
    ),
    gauge(
        "chat_members",
        "Connected members of all sessions (in cluster mode: those connected to this node).",
        PLAIN,
    ),
    gauge(
        "chat_history_bytes",
        "History bytes held (compare with MAX_TOTAL_HISTORY_BYTES); in cluster mode, of the whole cluster.",
        PLAIN,
    ),
    counter("chat_joins_total", "Accepted join-session events.", PLAIN),
    counter("chat_messages_total", "Accepted send-message events.", PLAIN),
    counter(
        "chat_deliveries_total",
        "new-message deliveries (a message to a room of 4 is 3).",
        PLAIN,
    ),
    counter(
        "chat_received_bytes_total",
        "Socket.IO event payload bytes received.",
        PLAIN,
    ),
    counter(
        "chat_sent_bytes_total",
        "Socket.IO event payload bytes sent (once per recipient).",
        PLAIN,
    ),
    counter(
        "chat_session_errors_total",
        "session-error answers sent, by code.",
        &[&[("code", SESSION_ERROR_CODES)]],
    ),
    counter(
        "chat_event_errors_total",
        "event-error answers sent, by code.",
        &[&[("code", EVENT_ERROR_CODES)]],
    ),
    counter(
        "chat_rate_limited_total",
        "Refusals by a rate limit: per socket by event; per client IP by handshake, reserve, create (a creator's join), sessions (MAX_SESSIONS_PER_IP) or auth (wrong keys and passwords).",
        &[
            &[("scope", &["socket"]), ("what", RATE_LIMITED_EVENTS)],
            &[("scope", &["ip"]), ("what", &["handshake", "reserve", "create", "sessions", "auth"])],
        ],
    ),
    counter(
        "chat_evictions_total",
        "Sessions evicted: idle, or expired with members connected.",
        &[&[("reason", &["idle", "expired"])]],
    ),
    counter(
        "chat_forced_disconnects_total",
        "Sockets the server cut off, by reason (slow_consumer: more than MAX_BUFFERED_BYTES_PER_SOCKET waiting, or history not read; silent: a member's socket that missed a ping interval while another joined as it; dead_node: members of a dead node removed, once per reaping; heartbeat_lapsed: this node's clients reconnected after its heartbeat lapsed).",
        &[&[(
            "reason",
            &["slow_consumer", "flood", "queue_full", "silent", "dead_node", "heartbeat_lapsed"],
        )]],
    ),
    counter(
        "chat_broadcasts_incomplete_total",
        "Room broadcasts that some socket's full buffer did not take.",
        PLAIN,
    ),
    counter(
        "chat_store_unavailable_total",
        "Redis calls that failed or timed out (cluster mode).",
        PLAIN,
    ),
    counter(
        "chat_cross_node_emit_failures_total",
        "Room emits that could not be published to the other nodes (cluster mode; this node's sockets still got them).",
        PLAIN,
    ),
    histogram(
        "chat_event_duration_seconds",
        "Time to handle one Socket.IO event, by event.",
        &[&[("event", EVENTS)]],
    ),
];

impl Family {
    /// The label sets of every series zeroed at start-up.
    pub fn known_series(&self) -> Vec<Vec<(&'static str, &'static str)>> {
        self.series
            .iter()
            .flat_map(|labels| combinations(labels))
            .collect()
    }
}

/// Every combination of `labels`' values.
fn combinations(labels: Labels) -> Vec<Vec<(&'static str, &'static str)>> {
    let mut out = vec![Vec::new()];
    for &(name, values) in labels {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |&value| {
                    let mut set = prefix.clone();
                    set.push((name, value));
                    set
                })
            })
            .collect();
    }
    out
}

/// Describes every family and sets each known series to zero.
fn register_all() {
    for family in FAMILIES {
        let name = family.name;
        match family.kind {
            Kind::Counter => metrics::describe_counter!(name, family.help),
            Kind::Gauge => metrics::describe_gauge!(name, family.help),
            Kind::Histogram => metrics::describe_histogram!(name, family.help),
        }
        for series in family.known_series() {
            let labels: Vec<Label> = series
                .into_iter()
                .map(|(k, v)| Label::from_static_parts(k, v))
                .collect();
            match family.kind {
                Kind::Counter => metrics::counter!(name, labels).absolute(0),
                Kind::Gauge => metrics::gauge!(name, labels).set(0.0),
                // Registered: exported with zero counts until recorded.
                Kind::Histogram => drop(metrics::histogram!(name, labels)),
            }
        }
    }
}

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
        } else {
            register_all();
        }
        handle
    })
}

/// Installs the recorder and registers every family, so that counters are
/// recorded from the start and every family is exported before first use.
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
    let mut text = handle.render();
    process::render(&mut text);
    text
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
