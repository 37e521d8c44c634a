//! Prometheus metrics of a peer, and an optional small HTTP endpoint with `/metrics`, `/health`
//! and `/ready` (seed 004's Kubernetes probes on a metrics port).
//!
//! - `netron_calls_total{service, method, status}` and `netron_call_duration_seconds` — requests
//!   this peer answered (GET, SET, CALL, TASK; `service` is the definition's qualified name, or
//!   `task` for tasks);
//! - `netron_connections` — open connections; `netron_connections_refused_total` — connections
//!   closed on arrival because the peer served `max_connections`;
//! - `netron_slow_peers_disconnected_total` — connections closed because the remote peer did not
//!   read what it was sent (`max_queued_bytes`);
//! - `netron_definitions` — service definitions served (exposed, proxied, returned by methods);
//! - `netron_announcements_dropped_total` — events the local bus's listeners could not keep up with;
//! - `netron_stream_bytes_total{direction}` — stream chunk frames sent and received;
//! - `netron_events_total{direction}` — `emit` tasks sent to subscribers and received;
//! - `netron_frames_written_total` and `netron_socket_writes_total` — frames sent and the socket
//!   writes that carried them (frames ready together go in one write: their ratio is the batching).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub(crate) service: String,
    pub(crate) method: String,
    pub(crate) status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Direction {
    pub(crate) direction: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) calls: Family<CallLabels, Counter>,
    pub(crate) duration: Histogram,
    pub(crate) connections: Gauge,
    pub(crate) connections_refused: Counter,
    pub(crate) slow_peers_disconnected: Counter,
    pub(crate) definitions: Gauge,
    pub(crate) announcements_dropped: Counter,
    pub(crate) stream_bytes: Family<Direction, Counter>,
    pub(crate) events: Family<Direction, Counter>,
    pub(crate) frames_written: Counter,
    pub(crate) socket_writes: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("netron");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("calls", "Requests answered, by service, method and status", calls.clone());
        let duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register("call_duration_seconds", "Time to answer a request", duration.clone());
        let connections = Gauge::default();
        registry.register("connections", "Open connections", connections.clone());
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed on arrival: the peer served its maximum",
            connections_refused.clone(),
        );
        let slow_peers_disconnected = Counter::default();
        registry.register(
            "slow_peers_disconnected",
            "Connections closed because the remote peer did not read what it was sent",
            slow_peers_disconnected.clone(),
        );
        let definitions = Gauge::default();
        registry.register("definitions", "Service definitions served", definitions.clone());
        let announcements_dropped = Counter::default();
        registry.register(
            "announcements_dropped",
            "Events dropped because the local bus's listeners could not keep up",
            announcements_dropped.clone(),
        );
        let stream_bytes = Family::<Direction, Counter>::default();
        registry.register("stream_bytes", "Bytes of stream chunk frames, by direction", stream_bytes.clone());
        let events = Family::<Direction, Counter>::default();
        registry.register("events", "Remote events (emit tasks), by direction", events.clone());
        let frames_written = Counter::default();
        registry.register("frames_written", "Frames written to sockets", frames_written.clone());
        let socket_writes = Counter::default();
        registry.register(
            "socket_writes",
            "Socket writes (flushes), each carrying the frames that were ready together",
            socket_writes.clone(),
        );
        Self {
            registry,
            calls,
            duration,
            connections,
            connections_refused,
            slow_peers_disconnected,
            definitions,
            announcements_dropped,
            stream_bytes,
            events,
            frames_written,
            socket_writes,
        }
    }

    /// The text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut body = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut body, &self.registry);
        body
    }
}

/// Serves `/metrics`, `/health` (always 200) and `/ready` (200 once the peer listens, 503 before)
/// on `listener` until the peer stops.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    listening: Arc<std::sync::atomic::AtomicBool>,
    stopped: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/health", get(|| async { (StatusCode::OK, "{\"status\":\"healthy\"}") }))
        .route(
            "/ready",
            get(move || {
                let ready = listening.load(std::sync::atomic::Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "{\"status\":\"ready\"}")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"not listening\"}")
                    }
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned()).await
}
