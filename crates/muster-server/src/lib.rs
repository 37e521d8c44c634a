//! The registry server as a library: [`router`] builds the HTTP API over any
//! [`Registry`], [`run`] serves it on a bound listener until a shutdown
//! future completes. The `muster` binary only parses configuration and calls these.
//!
//! Layout:
//! - `v1.rs` — Muster's API under `/v1` (nodes, services, instances with blocking queries);
//! - `watch.rs` — `GET /v1/watch` as server-sent events;
//! - `compat.rs` — the seed-003 routes;
//! - `fanout.rs` — one upstream watch per process, fanned out to SSE clients, blocking queries and
//!   DNS (the hub and its mirror);
//! - `answers.rs` — resolve answers kept as bytes while the store's answer is unchanged;
//! - `dns/` — the DNS interface (A, AAAA, SRV, TXT, PTR, NS over UDP and TCP);
//! - `checks.rs` — active health checks (HTTP or TCP) that set nodes `DOWN` and back `UP`;
//! - `acl/` — callers and their decisions, the tokens this server knows, the `/v1/acl` routes;
//! - `front.rs` — what every request passes through (ACL, limits, metrics) as two services;
//! - `limits.rs` — per-client rates, the `Host` check, CORS preflights;
//! - `serve.rs` — the connection layer (connection cap, request deadlines);
//! - `tls.rs` — TLS and mutual TLS, certificates reloaded when their files change;
//! - `metrics.rs` — the Prometheus page;
//! - `openapi.rs` — the OpenAPI document, with the limits the annotations cannot state;
//! - `error.rs` — the JSON error type and extractors;
//! - `ui/page.html`, `ui/model.js`, `ui/render.js` — the dashboard, one page served at `/ui`.

mod acl;
mod answers;
mod checks;
mod compat;
pub mod dns;
mod error;
mod fanout;
mod front;
mod limits;
mod metrics;
mod openapi;
mod serve;
mod tls;
mod v1;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method};
use axum::routing::{delete, get, post, put};
use muster_core::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use acl::{AclConfig, DeclaredToken, hash_secret};
pub use error::ApiError;
pub use limits::RateLimit;
pub use serve::{MAX_HEADER_BYTES, MAX_URI_LEN};
pub use tls::TlsConfig;

/// Server settings (validated by the binary before they get here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// TTL of nodes registered through `/v1` without one.
    pub default_ttl: Duration,
    /// TTL of instances registered through the seed-003 routes (`HEARTBEAT_TIMEOUT_SECONDS`).
    pub compat_ttl: Duration,
    /// Reported by `/stats` (`CLEANUP_INTERVAL_SECONDS`); expiry itself is event-driven.
    pub cleanup_interval: Duration,
    /// Most active instances of one service (`MAX_INSTANCES_PER_SERVICE`); more answer 409.
    pub max_instances_per_service: usize,
    /// Largest accepted request body, in bytes; larger answer 413.
    pub body_limit: usize,
    /// Origins allowed by CORS (`ALLOWED_ORIGINS`); empty allows none.
    pub allowed_origins: Vec<String>,
    /// Interval of SSE keep-alive comments.
    pub keep_alive: Duration,
    /// Longest `wait` of a blocking query.
    pub max_wait: Duration,
    /// Time allowed for a request's head, from when the connection opens or goes idle (so also
    /// the keep-alive idle timeout).
    pub header_read_timeout: Duration,
    /// Time allowed for a request's body to arrive (408 after it).
    pub request_timeout: Duration,
    /// Most open connections; more are closed at once.
    pub max_connections: usize,
    /// Access control (off by default).
    pub acl: AclConfig,
    /// TLS (plain HTTP when absent).
    pub tls: Option<TlsConfig>,
    /// Per-client request rate (none: unlimited).
    pub rate_limit: Option<RateLimit>,
    /// Host names requests may be addressed to (`Host` header, without the port); empty allows any.
    pub allowed_hosts: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(15),
            compat_ttl: Duration::from_secs(10),
            cleanup_interval: Duration::from_secs(5),
            max_instances_per_service: 1000,
            body_limit: 64 * 1024,
            allowed_origins: vec!["http://localhost:3000".into(), "http://localhost:8080".into()],
            keep_alive: Duration::from_secs(15),
            max_wait: Duration::from_secs(300),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            acl: AclConfig { public_openapi: true, ..AclConfig::default() },
            tls: None,
            rate_limit: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

pub(crate) struct StateInner {
    /// The store.
    registry: Arc<dyn Registry>,
    /// Settings.
    config: ServerConfig,
    /// When the server started (for `uptime`).
    started: tokio::time::Instant,
    /// Counters and histograms (also behind `/stats`).
    metrics: metrics::Metrics,
    /// Cancelled at shutdown: ends watch streams and the change feed.
    shutdown: CancellationToken,
    /// Every task the server starts (the change feed, health checks, token and rate-limit upkeep,
    /// DNS, connections): [`run`] waits for them after the shutdown, so nothing still writes to
    /// the store when the caller shuts it down.
    tasks: TaskTracker,
    /// The one upstream watch, fanned out to SSE clients and blocking queries.
    hub: fanout::Hub,
    /// Access control.
    acl: Arc<acl::Acl>,
    /// Per-client request rates.
    limiter: Option<Arc<limits::Limiter>>,
    /// Resolve answers kept as bytes.
    answers: answers::Answers,
    /// Watch events as JSON, written once for every watcher.
    serialized: watch::Serialized,
}

impl AppState {
    /// State over `registry`. Spawns the task that follows the registry's changes (one watch for
    /// every SSE client and blocking query; it also counts expiries for `/stats`).
    pub fn new(registry: Arc<dyn Registry>, config: ServerConfig) -> Self {
        Self::build(registry, config, None)
    }

    /// State over `registry` with ACL tokens kept in `tokens` (with access control on; the
    /// configuration's declared tokens are known either way).
    pub fn with_token_store(
        registry: Arc<dyn Registry>,
        config: ServerConfig,
        tokens: Arc<dyn muster_core::acl::TokenStore>,
    ) -> Self {
        Self::build(registry, config, Some(tokens))
    }

    fn build(
        registry: Arc<dyn Registry>,
        config: ServerConfig,
        tokens: Option<Arc<dyn muster_core::acl::TokenStore>>,
    ) -> Self {
        let metrics = metrics::Metrics::new();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let hub =
            fanout::Hub::start(Arc::clone(&registry), shutdown.clone(), metrics.expiries.clone(), &tasks);
        tasks.spawn(checks::run(
            Arc::clone(&registry),
            hub.clone(),
            shutdown.clone(),
            metrics.health_checks.clone(),
            tasks.clone(),
        ));
        let acl = Arc::new(acl::Acl::new(config.acl.clone(), tokens));
        if acl.enabled() {
            tasks.spawn(Arc::clone(&acl).follow(shutdown.clone()));
        }
        let limiter = config.rate_limit.and_then(limits::Limiter::new);
        if let Some(limiter) = &limiter {
            tasks.spawn(Arc::clone(limiter).prune(shutdown.clone()));
        }
        Self {
            inner: Arc::new(StateInner {
                registry,
                config,
                started: tokio::time::Instant::now(),
                metrics,
                shutdown,
                tasks,
                hub,
                acl,
                limiter,
                answers: answers::Answers::default(),
                serialized: watch::Serialized::default(),
            }),
        }
    }

    fn registry(&self) -> &dyn Registry {
        &*self.inner.registry
    }

    /// True while the store pauses expiry (self-preservation); false for stores without it.
    fn preserving(&self) -> bool {
        self.registry().self_preservation().is_some_and(|p| p.is_preserving())
    }

    fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    fn uptime_secs(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }

    fn count_registration(&self) {
        self.inner.metrics.registrations.inc();
    }

    fn count_heartbeat(&self) {
        self.inner.metrics.heartbeats.inc();
    }

    /// Whether the server speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.inner.config.tls.is_some()
    }

    /// Ends watch streams and background work (called when shutdown begins).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }
}

/// The dashboard: one page, every asset inside it (no network beyond this server). Public under
/// access control: the page holds no data; what it shows comes from the API with the token typed
/// into it.
async fn ui() -> impl axum::response::IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                 base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
}

/// The dashboard: one document, its CSS inline in `ui/page.html` and its script in two files —
/// `ui/model.js` (the live model, the URL, filters and tables) and `ui/render.js` (the views, the
/// watch, the figures) — joined at compile time.
const DASHBOARD: &str = concat!(
    include_str!("ui/page.html"),
    "<script>\n",
    include_str!("ui/model.js"),
    include_str!("ui/render.js"),
    "</script>\n</body>\n</html>\n"
);

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let origins: Vec<HeaderValue> =
        state.config().allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
        .expose_headers([axum::http::HeaderName::from_static(v1::INDEX_HEADER)]);
    let routes = Router::new()
        .route("/v1/nodes", post(v1::register_generated).get(v1::list_nodes))
        .route(
            "/v1/nodes/{id}",
            put(v1::register_with_id).get(v1::get_node).patch(v1::update_node).delete(v1::deregister_node),
        )
        .route("/v1/nodes/{id}/heartbeat", put(v1::heartbeat))
        .route("/v1/services", get(v1::list_services))
        .route("/v1/services/{name}/instances", get(v1::instances))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/acl/bootstrap", post(acl::routes::bootstrap))
        .route("/v1/acl/tokens", post(acl::routes::create_token).get(acl::routes::list_tokens))
        .route("/v1/acl/tokens/{name}", delete(acl::routes::delete_token))
        .route("/v1/acl/whoami", get(acl::routes::whoami))
        .route("/register", post(compat::register))
        .route("/heartbeat", post(compat::heartbeat))
        .route("/resolve/{name}", get(compat::resolve))
        .route("/services", get(compat::services))
        .route("/services/{name}/instances", delete(compat::remove_instance))
        .route("/stats", get(compat::stats))
        .route("/ui", get(ui))
        .route("/ui/", get(ui))
        .route("/", get(|| async { axum::response::Redirect::temporary("/ui") }))
        .route("/health", get(compat::health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(front::EdgeLayer(state.clone()))
        .with_state(state.clone());
    let limited = tower::Layer::layer(&DefaultBodyLimit::max(state.config().body_limit), routes);
    Router::new().fallback_service(front::Front::new(state, cors, limited))
}

/// `GET /ready`: 200 when the store answers, 503 (an error body) otherwise.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "The store answers", body = muster_api::v1::ReadyResponse)))]
async fn ready(State(state): State<AppState>) -> Result<axum::Json<muster_api::v1::ReadyResponse>, ApiError> {
    let revision = state.registry().current_revision().await.map_err(|error| {
        ApiError::new(
            muster_api::ErrorCode::Unavailable,
            format!("the store does not answer: {}", error.message()),
        )
    })?;
    Ok(axum::Json(muster_api::v1::ReadyResponse {
        status: "ready".into(),
        revision,
        self_preservation: state.preserving(),
    }))
}

/// The OpenAPI description of every route, generated from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Muster registry API", description = "Service discovery and registration."),
    paths(
        v1::register_generated,
        v1::register_with_id,
        v1::heartbeat,
        v1::get_node,
        v1::update_node,
        v1::deregister_node,
        v1::list_nodes,
        v1::list_services,
        v1::instances,
        watch::watch,
        acl::routes::bootstrap,
        acl::routes::create_token,
        acl::routes::list_tokens,
        acl::routes::delete_token,
        acl::routes::whoami,
        compat::register,
        compat::heartbeat,
        compat::resolve,
        compat::services,
        compat::stats,
        compat::health,
        compat::remove_instance,
        ready,
        metrics::metrics,
        openapi,
    ),
    components(schemas(muster_api::v1::ResyncData, muster_core::EventKind, muster_core::DeregisterReason))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document")))]
async fn openapi() -> axum::Json<&'static serde_json::Value> {
    axum::Json(openapi::document())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the API is under /v1 (see the README)")
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        muster_api::ErrorCode::MethodNotAllowed,
        format!("{} does not take {method}; see /openapi.json for its methods", uri.path()),
    )
}

/// Checks that the TLS files can be used (the message names the file at fault).
pub fn check_tls(config: &TlsConfig) -> Result<(), String> {
    tls::Tls::load(config.clone()).map(drop)
}

/// Serves `router(state)` on `listener` until `shutdown` completes, then stops accepting, ends
/// watch streams and finishes in-flight requests.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    serve::serve(listener, app, &state, shutdown).await
}
