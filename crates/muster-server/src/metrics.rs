//! Prometheus metrics, served as text on `GET /metrics`.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as MetricRegistry;

use crate::AppState;

/// Labels of the request histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route pattern (`/v1/nodes/{id}`), not the raw path, so cardinality stays bounded.
    route: &'static str,
    method: &'static str,
    status: u16,
}

/// The route patterns seen so far, as `&'static str` so labels need no allocation per request.
/// Bounded by the router's routes.
fn intern(route: &str) -> &'static str {
    static ROUTES: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());
    if let Some(found) = ROUTES.read().unwrap_or_else(|p| p.into_inner()).iter().find(|r| **r == route) {
        return found;
    }
    let mut routes = ROUTES.write().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = routes.iter().find(|r| **r == route) {
        return found;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    routes.push(leaked);
    leaked
}

fn method_name(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

/// Labels of the DNS query counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    /// The question's type (`A`, `SRV`, ...; `OTHER` for the rest).
    qtype: &'static str,
    /// The answer's code (`NOERROR`, `NXDOMAIN`, ...).
    rcode: &'static str,
    /// `udp` or `tcp`.
    transport: &'static str,
}

/// The question types counted apart (any other is `OTHER`).
pub(crate) const DNS_TYPES: [&str; 10] =
    ["A", "AAAA", "SRV", "TXT", "PTR", "NS", "SOA", "CNAME", "ANY", "OTHER"];
/// The answer codes counted apart, by their value (0..=5); any other is `OTHER`.
pub(crate) const DNS_CODES: [&str; 7] =
    ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER"];
const DNS_TRANSPORTS: [&str; 2] = ["udp", "tcp"];

/// The DNS interface's metrics. A query's counter is found by index in a table filled on first
/// use, so the answer path takes no lock and hashes no labels.
pub(crate) struct DnsMetrics {
    queries: Family<DnsLabels, Counter>,
    counters: Box<[std::sync::OnceLock<Counter>]>,
    truncated: Counter,
    latency: Histogram,
}

impl DnsMetrics {
    fn new() -> Self {
        let cells = DNS_TYPES.len() * DNS_CODES.len() * DNS_TRANSPORTS.len();
        Self {
            queries: Family::default(),
            counters: (0..cells).map(|_| std::sync::OnceLock::new()).collect(),
            truncated: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.000_002, 2.0, 16)),
        }
    }

    /// Counts one answered query: its transport (0 UDP, 1 TCP), question type and answer code (as
    /// indexes into [`DNS_TYPES`] and [`DNS_CODES`]), whether it was truncated, and how long the
    /// answer took to build.
    pub(crate) fn record(
        &self,
        transport: usize,
        qtype: usize,
        rcode: usize,
        truncated: bool,
        took: std::time::Duration,
    ) {
        let (qtype, rcode) = (qtype.min(DNS_TYPES.len() - 1), rcode.min(DNS_CODES.len() - 1));
        let transport = transport.min(1);
        let cell = (transport * DNS_TYPES.len() + qtype) * DNS_CODES.len() + rcode;
        self.counters[cell]
            .get_or_init(|| {
                let labels = DnsLabels {
                    qtype: DNS_TYPES[qtype],
                    rcode: DNS_CODES[rcode],
                    transport: DNS_TRANSPORTS[transport],
                };
                self.queries.get_or_create(&labels).clone()
            })
            .inc();
        if truncated {
            self.truncated.inc();
        }
        self.latency.observe(took.as_secs_f64());
    }
}

/// Every metric the server exports.
pub(crate) struct Metrics {
    registry: MetricRegistry,
    pub(crate) registrations: Counter,
    pub(crate) heartbeats: Counter,
    pub(crate) expiries: Counter,
    pub(crate) health_checks: Counter,
    pub(crate) store_errors: Counter,
    pub(crate) watchers: Gauge,
    pub(crate) refused_connections: Counter,
    pub(crate) socket_writes: Counter,
    self_preservation: Gauge,
    held_back: Gauge,
    /// Follows the store's own total (read at each scrape).
    channel_publish_failures: Counter,
    active_nodes: Gauge,
    active_services: Gauge,
    requests: Family<RequestLabels, Histogram>,
    pub(crate) dns: DnsMetrics,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = MetricRegistry::with_prefix("muster");
        let metrics = Self {
            registrations: Counter::default(),
            heartbeats: Counter::default(),
            expiries: Counter::default(),
            health_checks: Counter::default(),
            store_errors: Counter::default(),
            watchers: Gauge::default(),
            refused_connections: Counter::default(),
            socket_writes: Counter::default(),
            self_preservation: Gauge::default(),
            held_back: Gauge::default(),
            channel_publish_failures: Counter::default(),
            active_nodes: Gauge::default(),
            active_services: Gauge::default(),
            requests: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 16))),
            dns: DnsMetrics::new(),
            registry: MetricRegistry::default(),
        };
        registry.register("registrations", "Registrations accepted", metrics.registrations.clone());
        registry.register("heartbeats", "Heartbeats accepted", metrics.heartbeats.clone());
        registry.register("expiries", "Nodes removed because their TTL ran out", metrics.expiries.clone());
        registry.register(
            "health_checks",
            "Active health checks this process ran (one process per fleet runs them)",
            metrics.health_checks.clone(),
        );
        registry.register(
            "store_errors",
            "Requests that failed because the store did",
            metrics.store_errors.clone(),
        );
        registry.register("watchers", "Open watch streams", metrics.watchers.clone());
        registry.register(
            "refused_connections",
            "Connections closed at once because the server was at its connection limit",
            metrics.refused_connections.clone(),
        );
        registry.register(
            "http_socket_writes",
            "Writes to client sockets (HTTP, before TLS): one per response on the hot routes",
            metrics.socket_writes.clone(),
        );
        registry.register(
            "self_preservation",
            "1 while expiry is paused because too many nodes would expire at once",
            metrics.self_preservation.clone(),
        );
        registry.register(
            "self_preservation_held_back",
            "Nodes whose expiry self-preservation held back so far (each once per pause)",
            metrics.held_back.clone(),
        );
        registry.register(
            "store_channel_publish_failures",
            "Changes the store wrote but could not announce on its pub/sub channel (Redis: a user without PUBLISH); the writes stand, readers of the channel missed them",
            metrics.channel_publish_failures.clone(),
        );
        registry.register("active_nodes", "Active nodes", metrics.active_nodes.clone());
        registry.register("active_services", "Services with active nodes", metrics.active_services.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries answered, by question type, answer code and transport",
            metrics.dns.queries.clone(),
        );
        registry.register(
            "dns_truncated",
            "DNS answers over UDP truncated to the records that fit (TC set)",
            metrics.dns.truncated.clone(),
        );
        registry.register(
            "dns_answer_duration_seconds",
            "Time to build a DNS answer from the received query (kept answers included)",
            metrics.dns.latency.clone(),
        );
        Self { registry, ..metrics }
    }
}

/// Records the latency and status of every request.
pub(crate) async fn track<F, Fut>(state: &AppState, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |m| intern(m.as_str()));
    let method = method_name(request.method());
    let started = tokio::time::Instant::now();
    let response = next(request).await;
    let status = response.status();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        state.inner.metrics.store_errors.inc();
    }
    state
        .inner
        .metrics
        .requests
        .get_or_create(&RequestLabels { route, method, status: status.as_u16() })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = &state.inner.metrics;
    let preservation = state.registry().self_preservation();
    metrics.self_preservation.set(i64::from(preservation.is_some_and(|p| p.is_preserving())));
    let held_back = preservation.map_or(0, |p| p.held_back_total());
    metrics.held_back.set(i64::try_from(held_back).unwrap_or(i64::MAX));
    let refused = state.registry().channel().map_or(0, |c| c.publish_failures_total());
    metrics.channel_publish_failures.inner().fetch_max(refused, std::sync::atomic::Ordering::Relaxed);
    // Counted from the hub's mirror (the active nodes, indexed by service): a scrape copies nothing.
    let (nodes, services) =
        state.inner.hub.with_mirror(|mirror| (mirror.len(), mirror.service_names().count()));
    metrics.active_nodes.set(i64::try_from(nodes).unwrap_or(i64::MAX));
    metrics.active_services.set(i64::try_from(services).unwrap_or(i64::MAX));
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &metrics.registry) {
        Ok(()) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Decrements the watcher gauge when a watch stream ends.
pub(crate) struct WatcherGuard(pub(crate) Arc<crate::StateInner>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.metrics.watchers.dec();
    }
}
