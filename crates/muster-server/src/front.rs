//! What every request passes through, as two hand-written services rather than a stack of
//! layers: each `Router::layer` or `from_fn` step boxes and clones the rest of the stack per request
//! (17 to 30 heap allocations each, counted in `tests/costs.rs`).
//!
//! - [`Front`], before routing: the request id (`X-Request-Id`, kept when the client sent one,
//!   otherwise `<random prefix>-<counter>`, echoed on the response), the `Host` check (421), and
//!   CORS — only requests that carry an `Origin` (and every `OPTIONS`) go through the CORS layer
//!   (others cannot be cross-origin; they get its `Vary` all the same), with allowed preflights
//!   answered 204.
//! - [`Edge`], after routing (the route's pattern labels the metrics): metrics outermost (every
//!   answer is timed and counted), then the request bounds (414/431/413/408), then access control.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{Cors, CorsLayer};

use crate::{AppState, acl, limits, metrics, serve};

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The `Vary` the CORS layer puts on its answers, put on the others too.
const VARY_CORS: HeaderValue =
    HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers");

/// The steps before routing, around `inner` (the router).
#[derive(Clone)]
pub(crate) struct Front<S> {
    state: AppState,
    ids: RequestIds,
    inner: S,
    /// `inner` behind the CORS layer, for requests with an `Origin`.
    cors: Cors<S>,
}

impl<S: Clone> Front<S> {
    pub(crate) fn new(state: AppState, cors: CorsLayer, inner: S) -> Self {
        Self { state, ids: RequestIds::new(), cors: cors.layer(inner.clone()), inner }
    }
}

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> BoxFuture {
        let id = match request.headers().get(REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.next();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        if let Err(refused) = limits::check_host(&self.state, &request) {
            let mut response = refused.into_response();
            response.headers_mut().insert(REQUEST_ID, id);
            return Box::pin(std::future::ready(Ok(response)));
        }
        let cross_origin = request.headers().contains_key(header::ORIGIN);
        let preflight = cross_origin
            && request.method() == Method::OPTIONS
            && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        // The CORS layer answers every OPTIONS itself (with or without an Origin), as it always did.
        if cross_origin || request.method() == Method::OPTIONS {
            let cors = self.cors.clone();
            Box::pin(async move {
                let Ok(mut response) = cors.oneshot(request).await;
                if preflight && response.status() == StatusCode::OK {
                    // Express's cors() answers an allowed preflight 204 with no body.
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                }
                response.headers_mut().entry(REQUEST_ID).or_insert(id);
                Ok(response)
            })
        } else {
            let inner = self.inner.clone();
            Box::pin(async move {
                let Ok(mut response) = inner.oneshot(request).await;
                // What the CORS layer says on every answer: it depends on these request headers,
                // so a cache must not hand this one to a cross-origin request.
                response.headers_mut().append(header::VARY, VARY_CORS);
                response.headers_mut().entry(REQUEST_ID).or_insert(id);
                Ok(response)
            })
        }
    }
}

/// Request ids `<random prefix>-<counter>`: unique per server run, without a random-number syscall
/// or a formatted string per request.
#[derive(Clone)]
struct RequestIds {
    /// Random per process start, so ids of two runs do not collide.
    prefix: u64,
    /// Next sequence number.
    next: Arc<AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        let prefix = (muster_core::time::now_ms() ^ u64::from(std::process::id()) << 20) & 0xffff_ffff;
        Self { prefix, next: Arc::new(AtomicU64::new(1)) }
    }

    fn next(&self) -> HeaderValue {
        use std::io::Write;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Formatted into a buffer on the stack: 8 + 1 + 16 hex digits at most.
        let mut buffer = [0u8; 25];
        let mut out = &mut buffer[..];
        let _ = write!(out, "{:08x}-{n:x}", self.prefix);
        let len = 25 - out.len();
        HeaderValue::from_bytes(&buffer[..len]).expect("hex digits and a dash are a valid header value")
    }
}

/// Adds [`Edge`] to every route (it needs the matched route, so it runs after routing).
#[derive(Clone)]
pub(crate) struct EdgeLayer(pub(crate) AppState);

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge { state: self.0.clone(), inner }
    }
}

/// The server's own steps around a route: metrics, request bounds, access control.
#[derive(Clone)]
pub(crate) struct Edge<S> {
    state: AppState,
    inner: S,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> BoxFuture {
        let (state, inner) = (self.state.clone(), self.inner.clone());
        Box::pin(async move {
            let response = metrics::track(&state, request, |request| {
                serve::bound_request(&state, request, |request| {
                    acl::authenticate(&state, request, |request| async move {
                        let Ok(response) = inner.oneshot(request).await;
                        response
                    })
                })
            })
            .await;
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_hex_prefix_dash_counter() {
        let ids = RequestIds { prefix: 0xab, next: Arc::new(AtomicU64::new(0x1f)) };
        assert_eq!(ids.next(), "000000ab-1f");
        assert_eq!(ids.next(), "000000ab-20");
        let ids = RequestIds { prefix: 0xffff_ffff, next: Arc::new(AtomicU64::new(u64::MAX)) };
        assert_eq!(ids.next(), "ffffffff-ffffffffffffffff");
        let ids = RequestIds { prefix: 1, next: Arc::new(AtomicU64::new(0)) };
        assert_eq!(ids.next(), "00000001-0");
    }
}
