//! Refuses Socket.IO handshakes and WebSocket upgrades from origins that
//! `CLIENT_URL` does not allow. Browsers do not apply CORS to WebSockets, so
//! without this any page could open a socket with the user's cookies.
//! Requests without an `Origin` header (curl, native clients) pass.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::AllowedOrigins;

/// The path socketioxide serves.
pub const SOCKET_IO_PATH: &str = "/socket.io";

pub async fn guard(State(allowed): State<Arc<AllowedOrigins>>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with(SOCKET_IO_PATH) {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            if !allowed.allows(origin) {
                tracing::warn!(origin = ?origin, "refused a Socket.IO connection from an origin not in CLIENT_URL");
                let body = Json(json!({ "error": "Origin not allowed" }));
                return (StatusCode::FORBIDDEN, body).into_response();
            }
        }
    }
    next.run(req).await
}
