//! Limits at the edge: per-client request rates, the `Host` header check, and CORS preflights
//! answered as Express's `cors()` answers them.
//!
//! - Rate: a token bucket per client — the token's name when the request carries a valid token,
//!   otherwise the client's IP address — refilled at `per_second`, holding `burst`. A request
//!   beyond it answers 429 with `Retry-After` (whole seconds). `/health` and `/ready` are exempt.
//! - Hosts: with a list of allowed host names, a request whose `Host` (without the port) is not in
//!   it answers 421 — a web page on another origin that rebinds its DNS name to 127.0.0.1 cannot
//!   reach a loopback registry through the victim's browser.
//! - CORS: preflights of allowed origins answer 204 with the request's headers reflected, and
//!   `X-Muster-Index` is exposed to scripts.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use muster_api::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::{ApiError, AppState};

/// A per-client request rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests a client may send at once after being quiet.
    pub burst: u32,
}

/// Who a rate applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    /// A valid token, by name.
    Token(Arc<str>),
    /// Anyone else, by address.
    Address(IpAddr),
}

/// The per-client buckets.
pub(crate) struct Limiter {
    buckets: DefaultKeyedRateLimiter<ClientKey>,
    clock: DefaultClock,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Option<Arc<Self>> {
        let per_second = NonZeroU32::new(limit.per_second)?;
        let burst = NonZeroU32::new(limit.burst).unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Some(Arc::new(Self {
            buckets: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }))
    }

    /// `Ok` when `key` may send a request now; otherwise how long until it may.
    pub(crate) fn check(&self, key: &ClientKey) -> Result<(), Duration> {
        self.buckets.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets clients whose buckets are full again, every minute, so memory follows the clients
    /// active now rather than every client ever seen.
    pub(crate) async fn prune(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
                () = shutdown.cancelled() => return,
            }
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
    }
}

/// The 429 answer.
pub(crate) fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = ApiError::new(
        ErrorCode::TooManyRequests,
        format!("too many requests from this client; retry in {seconds} s"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The client's address, as the connection layer recorded it.
pub(crate) fn client_address(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(address)| address.ip())
}

/// Refuses (421) a request for a host name the server does not serve, when a list is set.
pub(crate) fn check_host(state: &AppState, request: &Request) -> Result<(), ApiError> {
    let allowed = &state.config().allowed_hosts;
    if allowed.is_empty() {
        return Ok(());
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or_default();
    if host_allowed(allowed, host) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::MisdirectedRequest,
            format!(
                "this server does not answer for host {host:?}; its allowed hosts are a setting (--allowed-hosts)"
            ),
        ))
    }
}

/// Whether `host` (`name`, `name:port`, `[v6]:port`) names one of `allowed` (compared without the
/// port, ignoring case; `*` allows any).
fn host_allowed(allowed: &[String], host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(inside, _)| inside),
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    allowed.iter().any(|a| a == "*" || a.trim_matches(['[', ']']).eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn hosts_compare_without_port_and_case() {
        let allowed = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "[::1]".to_owned()];
        for host in ["localhost", "LOCALHOST:3100", "127.0.0.1:3100", "[::1]:3100", "[::1]"] {
            assert!(host_allowed(&allowed, host), "{host}");
        }
        for host in ["evil.example", "evil.example:3100", "localhost.evil:3100", "", "127.0.0.2"] {
            assert!(!host_allowed(&allowed, host), "{host}");
        }
        assert!(host_allowed(&["*".to_owned()], "anything"));
    }

    #[test]
    fn buckets_refuse_beyond_the_burst_and_name_the_wait() {
        let limiter = Limiter::new(RateLimit { per_second: 1, burst: 3 }).unwrap();
        let key = ClientKey::Address(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..3 {
            limiter.check(&key).unwrap();
        }
        let wait = limiter.check(&key).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Other clients have their own buckets.
        limiter.check(&ClientKey::Token("ci".into())).unwrap();
        assert!(Limiter::new(RateLimit { per_second: 0, burst: 5 }).is_none());
        let response = too_many(Duration::from_millis(1500));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
