//! The one HTTP error type: every failure becomes `{"error": {"code", "message"}}` with a fitting
//! status (plus `timestamp` on the seed-003 routes).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_api::{ErrorBody, ErrorDetail, iso8601};
use muster_core::{ErrorKind, time::now_ms};

/// An error answered over HTTP.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    status: StatusCode,
    /// Stable machine-readable code.
    code: &'static str,
    /// What to do about it.
    message: String,
    /// Add the seed-003 `timestamp` field.
    compat: bool,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), compat: false }
    }

    /// 400 with code `invalid_input`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 404 with code `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Marks the error as answered on a seed-003 route (adds `timestamp`).
    #[must_use]
    pub fn compat(mut self) -> Self {
        self.compat = true;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<muster_core::Error> for ApiError {
    fn from(error: muster_core::Error) -> Self {
        let (status, code) = match error.kind() {
            ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_input"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::LimitExceeded => (StatusCode::CONFLICT, "limit_exceeded"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::warn!(%error, "request failed");
        }
        Self::new(status, code, error.message().to_owned())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(inner) if inner.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", inner.body_text())
            }
            JsonRejection::JsonDataError(inner) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_input", inner.body_text())
            }
            other => Self::new(StatusCode::BAD_REQUEST, "malformed_json", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_owned(), message: self.message },
            timestamp: self.compat.then(|| iso8601(now_ms())),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// `Json` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct ApiJson<T>(pub T);

/// `Query` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub T);
