//! The HTTP API: `/health`, `/api/reserve-session`, `/sessions`, and JSON
//! answers for everything else.
//!
//! The rest of the HTTP layer: the accept loop and each connection's life
//! ([`serve`]), the request router in front of the API and socketioxide
//! ([`router`]), one TCP connection's switch and counts ([`conn`]), one
//! Socket.IO session's hold on its connections ([`cutoff`]) and its queued
//! bytes ([`outbox`]), and the bodies the router wraps ([`body`]).

pub mod body;
pub mod conn;
pub mod cutoff;
pub mod error;
pub mod outbox;
pub mod router;
pub mod serve;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::domain::ids::MAX_AUTH_KEY_LEN;
use crate::domain::{epoch_ms, ChatMode, ReserveError, SessionId};
use crate::limits::IpLimiter;
use crate::store::Store;
pub use error::ApiError;
use serve::ClientIp;

/// Largest request body the API reads (a reservation is well under 1 KiB).
pub const MAX_API_BODY_BYTES: usize = 16 * 1024;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub started: Instant,
    pub debug: bool,
    /// Sessions created per client IP per minute (reservations and creators' joins).
    pub reservations: Arc<IpLimiter>,
    /// Live sessions created per client IP.
    pub quota: Arc<crate::quota::SessionQuota>,
    /// Longest an API request may take.
    pub request_timeout: std::time::Duration,
    pub readiness: Readiness,
}

/// Whether a load balancer should send this node traffic (`GET /ready`).
#[derive(Clone, Default)]
pub struct Readiness(Arc<std::sync::atomic::AtomicU8>);

impl Readiness {
    const STARTING: u8 = 0;
    const READY: u8 = 1;
    const DRAINING: u8 = 2;

    pub fn set_ready(&self) {
        self.0.store(Self::READY, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_draining(&self) {
        self.0.store(Self::DRAINING, std::sync::atomic::Ordering::Relaxed);
    }

    /// `None` when ready, else why not.
    fn not_ready(&self) -> Option<&'static str> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            Self::READY => None,
            Self::STARTING => Some("starting"),
            _ => Some("draining"),
        }
    }
}

/// The API routes; everything unmatched answers 404 JSON.
pub fn router(state: HttpState) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/reserve-session", post(reserve_session))
        .route("/sessions", get(sessions))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .with_state(state)
}

/// Answers 408 JSON when a request takes longer than `API_REQUEST_TIMEOUT_SECS`
/// (a body trickled in slowly, for instance).
async fn time_limit(State(state): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// 200 `ok`; 503 `degraded` while a configured Redis cannot be reached
/// (the session counts are then `null`).
async fn health(State(state): State<Arc<HttpState>>) -> Response {
    let sessions = state.store.session_count().await;
    let status = if sessions.is_ok() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let sessions = sessions.ok();
    let body = json!({
        "status": if sessions.is_some() { "ok" } else { "degraded" },
        "uptime": state.started.elapsed().as_secs_f64(),
        "activeSessions": sessions,
        "sessions": sessions,
        "timestamp": epoch_ms(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    (status, Json(body)).into_response()
}

/// 200 when this node should get traffic; 503 while starting or draining.
async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    match state.readiness.not_ready() {
        None => Json(json!({ "status": "ready" })).into_response(),
        Some(why) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": why })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReserveBody {
    session_id: Option<Value>,
    auth_key: Option<Value>,
    chat_mode: Option<Value>,
}

/// Reserves a session. Only `application/json` bodies are read: a web page
/// can POST `text/plain` (and form types) to any site without a CORS
/// preflight, so accepting them would let any page reserve sessions from
/// its visitors' addresses; a JSON body needs the preflight, which CORS
/// refuses to origins not in `CLIENT_URL`.
async fn reserve_session(
    State(state): State<Arc<HttpState>>,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    if let Some(Extension(ClientIp(ip))) = &ip {
        state.reservations.check(*ip).map_err(|wait| {
            crate::metrics::rate_limited("ip", "reserve");
            ApiError::TooManyRequests(wait)
        })?;
    }
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|e| ApiError::from_body_rejection(&e))?;
    let body: ReserveBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReserveBody {
            session_id: None,
            auth_key: None,
            chat_mode: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|_| ApiError::BadRequest("Invalid JSON body".into()))?
    };
    let missing = || ApiError::BadRequest("Missing sessionId or authKey".into());
    let session_id = non_empty(body.session_id).ok_or_else(missing)?;
    let auth_key = non_empty(body.auth_key).ok_or_else(missing)?;
    let session_id = session_id.as_str().and_then(SessionId::parse).ok_or_else(|| {
        ApiError::BadRequest("sessionId must be 1 to 64 characters of A-Z a-z 0-9 _ -".into())
    })?;
    let auth_key = auth_key
        .as_str()
        .filter(|k| k.len() <= MAX_AUTH_KEY_LEN)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "authKey must be a string of at most {MAX_AUTH_KEY_LEN} characters"
            ))
        })?;
    let mode = match body.chat_mode {
        None | Some(Value::Null) => ChatMode::Group,
        Some(m) => m
            .as_str()
            .and_then(ChatMode::parse)
            .ok_or_else(|| ApiError::BadRequest("chatMode must be group, private or password".into()))?,
    };
    let store_error = |e: ReserveError| match e {
        ReserveError::Exists => ApiError::Conflict(e.to_string()),
        ReserveError::Limit | ReserveError::StoreUnavailable => ApiError::Unavailable(e.to_string()),
    };
    // A place in the caller's MAX_SESSIONS_PER_IP, given back unless the
    // session is made.
    let claim = match ip {
        Some(Extension(ClientIp(ip))) => Some(
            state
                .quota
                .claim(ip, &state.store)
                .await
                .map_err(|_| store_error(ReserveError::StoreUnavailable))?
                .ok_or_else(|| {
                    crate::metrics::rate_limited("ip", "sessions");
                    ApiError::SessionQuota(state.quota.max())
                })?,
        ),
        None => None,
    };
    state
        .store
        .reserve(session_id.clone(), auth_key, mode)
        .await
        .map_err(store_error)?;
    if let Some(claim) = claim {
        claim.created(session_id.clone());
    }
    tracing::info!(session = %session_id.log_tag(), mode = mode.as_str(), "session reserved");
    Ok(Json(json!({
        "success": true,
        "sessionId": session_id,
        "chatMode": mode,
        "message": "Session reserved successfully",
    })))
}

/// Whether the body is declared `application/json` (parameters such as
/// `; charset=utf-8` allowed, case ignored).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A value that is present and not `null`, `""` or `false` (as the original's `!x` test).
fn non_empty(v: Option<Value>) -> Option<Value> {
    v.filter(|v| !matches!(v, Value::Null | Value::Bool(false)) && v.as_str() != Some(""))
}

async fn sessions(State(state): State<Arc<HttpState>>) -> Result<Json<Value>, ApiError> {
    if !state.debug {
        return Err(ApiError::NotFound);
    }
    let rows = state
        .store
        .summaries()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!(rows)))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_application_json_with_or_without_parameters_is_json() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("Application/JSON;charset=UTF-8"));
        for other in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/json-patch+json",
        ] {
            assert!(!with(other), "{other}");
        }
        assert!(!is_json(&HeaderMap::new()), "no Content-Type");
    }
}
