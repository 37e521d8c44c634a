//! The one HTTP error type: every failure becomes `{"error": {"code", "message"}}` with a fitting
//! status (plus `timestamp` on the seed-003 routes).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_api::{ErrorBody, ErrorCode, ErrorDetail, iso8601};
use muster_core::{ErrorKind, time::now_ms};

/// An error answered over HTTP.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    status: StatusCode,
    /// Stable machine-readable code.
    code: ErrorCode,
    /// What to do about it.
    message: String,
    /// Add the seed-003 `timestamp` field.
    compat: bool,
}

impl ApiError {
    /// An error with a code (which decides the HTTP status) and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self { status, code, message: message.into(), compat: false }
    }

    /// 400 with code `invalid_input`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// 404 with code `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// Marks the error as answered on a seed-003 route (adds `timestamp`).
    #[must_use]
    pub fn compat(mut self) -> Self {
        self.compat = true;
        self
    }

    /// The HTTP status.
    /// The machine-readable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message for a person.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<muster_core::Error> for ApiError {
    fn from(error: muster_core::Error) -> Self {
        let code = match error.kind() {
            ErrorKind::InvalidInput => ErrorCode::InvalidInput,
            ErrorKind::NotFound => ErrorCode::NotFound,
            ErrorKind::Conflict => ErrorCode::Conflict,
            ErrorKind::LimitExceeded => ErrorCode::LimitExceeded,
            ErrorKind::Unavailable => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        let answer = Self::new(code, error.message().to_owned());
        if answer.status.is_server_error() {
            tracing::warn!(%error, "request failed");
        }
        answer
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(inner) if inner.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(ErrorCode::PayloadTooLarge, "the request body is too large")
            }
            JsonRejection::JsonDataError(inner) => Self::new(
                ErrorCode::InvalidInput,
                format!("the body does not fit: {}", humanize(&inner.body_text())),
            ),
            other => Self::new(
                ErrorCode::MalformedJson,
                format!("the body is not valid JSON: {}", humanize(&other.body_text())),
            ),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid(format!("the query string does not fit: {}", humanize(&rejection.body_text())))
    }
}

/// A deserializer's message as a person reads it: no Rust type names, no framework prefix.
pub(crate) fn humanize(message: &str) -> String {
    let message = message
        .split_once("the target type: ")
        .or_else(|| message.split_once("Failed to deserialize query string: "))
        .or_else(|| message.split_once("Failed to parse the request body as JSON: "))
        .map_or(message, |(_, rest)| rest);
    let mut words: Vec<String> = Vec::new();
    let mut tokens = message.split(' ').peekable();
    while let Some(token) = tokens.next() {
        let word = match token {
            "struct" | "enum" => {
                // `struct InstanceRequest` → `an object`; `enum NodeStatus` → `one of the listed values`.
                let name = tokens.next().unwrap_or_default();
                let tail: String = name.chars().skip_while(|c| c.is_alphanumeric() || *c == '_').collect();
                let what = if token == "struct" { "a JSON object" } else { "one of the allowed values" };
                format!("{what}{tail}")
            }
            "with" if tokens.peek().is_some_and(|t| t.chars().all(|c| c.is_ascii_digit())) => {
                // `with 4 elements`: how a type is laid out, not what to send.
                tokens.next();
                tokens.next();
                continue;
            }
            other => {
                let core = other.trim_end_matches([',', ';', ':', '.']);
                let tail = &other[core.len()..];
                let plain = match core {
                    "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "a whole number",
                    "f32" | "f64" => "a number",
                    "sequence" => "a list",
                    "map" => "an object",
                    _ => core,
                };
                format!("{plain}{tail}")
            }
        };
        words.push(word);
    }
    words.join(" ")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.as_str().to_owned(), message: self.message },
            timestamp: self.compat.then(|| iso8601(now_ms())),
        };
        let refused = matches!(self.code, ErrorCode::Unauthorized | ErrorCode::Forbidden)
            .then(|| Refused(Arc::from(body.error.message.as_str())));
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(refused) = refused {
            response.extensions_mut().insert(refused);
        }
        response
    }
}

/// Carried by a 401/403 response: why access was refused (never a secret), for the audit log.
#[derive(Debug, Clone)]
pub(crate) struct Refused(pub(crate) Arc<str>);

/// `Json` whose rejections are [`ApiError`]s. A body that reads is decoded directly; only a body
/// that does not is decoded again through `axum::Json`, whose message names the field at fault
/// (tracking the path costs on every request otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let plain_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !plain_json {
            // Anything else gets axum's own answer (other JSON media types, or a refusal).
            let axum::Json(value) = axum::Json::<T>::from_request(request, state).await?;
            return Ok(Self(value));
        }
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(JsonRejection::from)?;
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(Self(value)),
            Err(_) => Err(axum::Json::<T>::from_bytes(&bytes)
                .err()
                .map_or_else(|| Self::Rejection::invalid("the JSON body does not fit"), ApiError::from)),
        }
    }
}

/// `Query` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub T);

#[cfg(test)]
mod tests {
    use super::humanize;

    #[test]
    fn messages_name_no_rust_types() {
        let cases = [
            (
                "Failed to deserialize the JSON body into the target type: invalid length 0, expected struct InstanceRequest with 4 elements at line 1 column 2",
                "invalid length 0, expected a JSON object at line 1 column 2",
            ),
            (
                "Failed to deserialize the JSON body into the target type: port: invalid type: string \"x\", expected u16 at line 1 column 10",
                "port: invalid type: string \"x\", expected a whole number at line 1 column 10",
            ),
            (
                "invalid type: sequence, expected struct RegisterRequest",
                "invalid type: a list, expected a JSON object",
            ),
            (
                "status: unknown variant `X`, expected enum NodeStatus",
                "status: unknown variant `X`, expected one of the allowed values",
            ),
        ];
        for (raw, human) in cases {
            assert_eq!(humanize(raw), human);
        }
    }
}
