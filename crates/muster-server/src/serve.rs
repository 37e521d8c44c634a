//! The connection layer: accepts connections up to a cap, bounds how long a client may take to
//! send a request, and hands requests to the router.
//!
//! - `max_connections`: a connection beyond the cap is closed at once (the client sees the
//!   connection end and may retry) instead of waiting in the kernel's backlog.
//! - `header_read_timeout` (hyper's timer): a request's head must arrive within it, counted from
//!   when the connection opens or goes idle after a response — so it is also the keep-alive idle
//!   timeout. Slow-header clients and idle connections are closed.
//! - `request_timeout`: the body must arrive within it (408 otherwise); an announced
//!   `Content-Length` above the body limit answers 413 before any of the body is read.
//! - Limits hyper does not answer in JSON are checked first here: a request target over
//!   [`MAX_URI_LEN`] answers 414, headers over [`MAX_HEADER_BYTES`] answer 431.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use muster_api::ErrorCode;
use tokio::sync::Semaphore;

use crate::tls::Tls;
use crate::{ApiError, AppState};
use tower::Layer;

/// Longest request target (path and query) answered with JSON 414.
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Most bytes of request headers (names and values) answered with JSON 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves `app` on `listener` until `shutdown`, then stops accepting and waits for the open
/// connections to finish their requests.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    state: &AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = state.config();
    let tls = match &config.tls {
        Some(tls) => {
            let tls = Arc::new(Tls::load(tls.clone()).map_err(std::io::Error::other)?);
            state.inner.tasks.spawn(Arc::clone(&tls).watch(state.inner.shutdown.clone()));
            Some(tls)
        }
        None => None,
    };
    let handshake_timeout = config.header_read_timeout;
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout).keep_alive(true);
    // Under TLS, head and body go out in one buffer: one record and one write per response
    // instead of one per part.
    builder.writev(tls.is_none());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or a connection reset before it was accepted: keep
                    // serving the connections already open.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            state.inner.metrics.refused_connections.inc();
            tracing::debug!("connection refused: at the connection limit");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = CountedWrites { inner: stream, writes: state.inner.metrics.socket_writes.clone() };
        // Each request carries the client's address (for rate limits by address).
        let service = hyper_util::service::TowerToHyperService::new(
            tower::util::MapRequestLayer::new(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                request
            })
            .layer(app.clone()),
        );
        match &tls {
            None => {
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                state.inner.tasks.spawn(async move {
                    let _ = connection.await;
                    drop(permit);
                });
            }
            Some(tls) => {
                // The handshake runs in the connection's task, bounded like a request head.
                let acceptor = tls.acceptor();
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                state.inner.tasks.spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ =
                                watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    state.shutdown();
    graceful.shutdown().await;
    // Every other task of the server ends on the shutdown token: wait for them, so that nothing
    // (a health check's verdict, a token reload) still writes to the store once this returns.
    state.inner.tasks.close();
    if tokio::time::timeout(TASKS_GRACE, state.inner.tasks.wait()).await.is_err() {
        tracing::warn!(left = state.inner.tasks.len(), "server tasks still running after the shutdown");
    }
    Ok(())
}

/// How long [`serve`] waits for the server's tasks after its connections closed.
const TASKS_GRACE: Duration = Duration::from_secs(10);

/// Checks the request's size limits and reads its body within `request_timeout`.
pub(crate) async fn bound_request<F, Fut>(state: &AppState, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let config = state.config();
    let target_len = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > MAX_URI_LEN {
        return ApiError::new(
            ErrorCode::UriTooLong,
            format!("the request target is {target_len} bytes long; the limit is {MAX_URI_LEN}"),
        )
        .into_response();
    }
    let header_bytes: usize =
        request.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("the request headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"),
        )
        .into_response();
    }
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > config.body_limit as u64) {
        return too_large(config.body_limit).into_response();
    }
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    if announced.unwrap_or(0) == 0 && !chunked {
        return next(request).await;
    }
    let (parts, body) = request.into_parts();
    let limit = config.body_limit;
    let read = async move {
        let mut stream = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(ErrorCode::MalformedJson, format!("reading the body failed: {e}"))
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    match tokio::time::timeout(config.request_timeout, read).await {
        Ok(Ok(bytes)) => next(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(error)) => error.into_response(),
        Err(_) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the request body did not arrive within {:?}", config.request_timeout),
        )
        .into_response(),
    }
}

/// A client socket that counts its writes (`muster_http_socket_writes_total`): hyper sends a
/// response's head and body in one vectored write, and a test holds it to that.
struct CountedWrites {
    inner: tokio::net::TcpStream,
    writes: prometheus_client::metrics::counter::Counter,
}

impl tokio::io::AsyncRead for CountedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if written.is_ready() {
            self.writes.inc();
        }
        written
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if written.is_ready() {
            self.writes.inc();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}
