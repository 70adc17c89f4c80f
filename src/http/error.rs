//! The one error type of the HTTP API: every refusal is JSON `{"error": …}`.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("Request body too large")]
    PayloadTooLarge,
    #[error("{0}")]
    Unavailable(String),
    #[error("Too many requests, retry later")]
    TooManyRequests(std::time::Duration),
    /// The caller's address holds `MAX_SESSIONS_PER_IP` live sessions.
    #[error("This address already holds {0} live sessions; retry when one has ended")]
    SessionQuota(usize),
    #[error("Request timed out")]
    Timeout,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
}

impl ApiError {
    /// Maps a failure to read the body (too large, or broken) without leaking internals.
    pub fn from_body_rejection(e: &BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge
        } else {
            Self::BadRequest("Could not read the request body".into())
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests(_) | Self::SessionQuota(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status(), Json(json!({ "error": self.to_string() }))).into_response();
        if let Self::TooManyRequests(wait) = self {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, super::router::retry_after(wait));
        }
        res
    }
}
