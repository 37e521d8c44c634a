//! The registry server's HTTP wire contract, shared by the server and the client SDK.
//!
//! - [`v1`] — Muster's own API under `/v1` (camelCase JSON, unknown fields rejected).
//! - [`compat`] — the seed-003 registry routes (`/register`, `/heartbeat`, `/resolve/{name}`, ...),
//!   with their exact JSON shapes.
//! - [`acl`] — the access-control routes under `/v1/acl`: bootstrap, tokens, `whoami`.
//! - [`check`] — active health checks a registration asks the registry to run.
//! - [`ErrorBody`] — the one error shape: `{"error": {"code", "message"}}`, plus `timestamp` on the
//!   seed-003 routes.

use serde::{Deserialize, Serialize};

pub mod acl;
pub mod check;
pub mod compat;
pub mod v1;

/// Where `muster serve` listens by default, and so where the CLI and the SDK look for it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3100";
/// The registry's default URL (the CLI's `--registry`, the SDK's `SERVICE_REGISTRY_URL`).
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:3100";

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
    /// ISO-8601 time of the response (seed-003 routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// Every error code the server answers with: one list, stable across versions (new codes may be
/// added; clients treat an unknown code by its HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: a value breaks a rule; the message names the field.
    InvalidInput,
    /// 400: the body is not JSON.
    MalformedJson,
    /// 401: no valid credentials.
    Unauthorized,
    /// 403: the credentials do not grant this.
    Forbidden,
    /// 404: no such node, instance or route.
    NotFound,
    /// 405: the route exists with other methods.
    MethodNotAllowed,
    /// 408: the request body did not arrive in time.
    RequestTimeout,
    /// 409: the write conflicts with the current state.
    Conflict,
    /// 409: a configured limit (instances per service) is reached.
    LimitExceeded,
    /// 413: the body is larger than the limit.
    PayloadTooLarge,
    /// 414: the request target is too long.
    UriTooLong,
    /// 421: the `Host` header names a host this server does not answer for.
    MisdirectedRequest,
    /// 415: the body is not sent as `application/json`.
    UnsupportedMediaType,
    /// 429: too many requests.
    TooManyRequests,
    /// 431: the request headers are too large.
    HeadersTooLarge,
    /// 500: a fault of the server.
    Internal,
    /// 503: the store is unreachable.
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status every answer with this code has.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidInput | Self::MalformedJson => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict | Self::LimitExceeded => 409,
            Self::PayloadTooLarge => 413,
            Self::UriTooLong => 414,
            Self::MisdirectedRequest => 421,
            Self::UnsupportedMediaType => 415,
            Self::TooManyRequests => 429,
            Self::HeadersTooLarge => 431,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    /// The wire name (`invalid_input`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::MalformedJson => "malformed_json",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::MisdirectedRequest => "misdirected_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::Conflict => "conflict",
            Self::LimitExceeded => "limit_exceeded",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooManyRequests => "too_many_requests",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The machine-readable code and the human-readable message of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, one of [`ErrorCode`] (kept as text so a client reads codes added later).
    #[schema(value_type = ErrorCode)]
    pub code: String,
    /// What to do about it, naming the offending field.
    pub message: String,
}

/// Formats milliseconds since the epoch as ISO-8601 UTC with milliseconds
/// (`2023-12-01T10:00:00.000Z`), as the seed-003 registry does.
pub fn iso8601(ms: u64) -> String {
    Iso8601(ms).to_string()
}

/// [`iso8601`] as a `Display` value: written straight into a response, no string in between.
#[derive(Debug, Clone, Copy)]
pub struct Iso8601(pub u64);

impl std::fmt::Display for Iso8601 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0;
        let secs = ms / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
        // Civil from days (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z", ms % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_701_424_800_000), "2023-12-01T10:00:00.000Z");
        assert_eq!(iso8601(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorBody {
            error: ErrorDetail { code: "not_found".into(), message: "node `x` not found".into() },
            timestamp: None,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"not_found","message":"node `x` not found"}}"#
        );
    }
}

/// Parses a duration written as a number and a unit: `250ms`, `30s`, `5m`, `1h` (a bare number is
/// seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 30s or 5m"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    ms.map(std::time::Duration::from_millis).ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 minutes").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
