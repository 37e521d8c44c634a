//! Peers: a [`Peer`] exposes services and listens ([`Peer::listen`]) or connects
//! ([`Peer::connect`]); either way each connection is a [`RemotePeer`] whose services are reached
//! through [`Interface`]s.
//!
//! Per connection one reader task decodes frames and answers requests (each in its own task, so a
//! slow method does not hold the others), and one writer task sends frames in order. Requests wait
//! for the response with the same id up to the request timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_util::sync::CancellationToken;

use crate::events::{EventBus, Listener, PeerEvent, SubscriptionId};
use crate::service::{Output, Service};
use crate::streams::{ReadableStream, Streams};
use crate::wire::{Definition, JsError, Limits, Packet, PacketIds, PacketType, Value};

/// Settings of a peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer's id (a random UUID when absent).
    pub id: Option<String>,
    /// How long a request waits for its response (Netron: 5 s).
    pub request_timeout: Duration,
    /// How long opening a connection and its handshake may take.
    pub connect_timeout: Duration,
    /// Frame size and nesting limits of incoming packets.
    pub limits: Limits,
    /// Tell connectors they may subscribe to service announcements.
    pub allow_service_events: bool,
    /// Chunks a stream may hold that its reader has not taken yet (Netron: 10,000).
    pub stream_buffer: usize,
    /// Streams one connection may have open at once.
    pub max_streams: usize,
    /// Inactivity limit of streams that are not live (Netron's `streamTimeout`, 60 s).
    pub stream_timeout: Duration,
    /// Requests one connection may have running at once; more are answered with an error.
    pub max_concurrent_requests: usize,
    /// Connections made by [`Peer::connect`] are opened again after they break: at most this many
    /// attempts in a row (`None`: without end; `Some(0)`: never).
    pub max_reconnect_attempts: Option<u32>,
    /// The first delay before reconnecting; it doubles with each failed attempt, up to 30 s, each
    /// delay spread by ±20 % (jitter).
    pub reconnect_delay: Duration,
    /// Connections [`Peer::listen`] serves at once; more are closed as they arrive (counted in
    /// `netron_connections_refused_total`). Connections this peer opens are not counted.
    pub max_connections: usize,
    /// Bytes of frames one connection may have waiting for its socket. A remote peer that sends
    /// requests but does not read the answers reaches it and is disconnected (counted in
    /// `netron_slow_peers_disconnected_total`, logged) instead of growing this peer's memory;
    /// stream writers wait well below it.
    pub max_queued_bytes: usize,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            id: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            allow_service_events: false,
            stream_buffer: 10_000,
            max_streams: 1024,
            stream_timeout: Duration::from_secs(60),
            max_concurrent_requests: 1024,
            max_reconnect_attempts: Some(0),
            reconnect_delay: Duration::from_secs(1),
            max_connections: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What [`Peer::add_task`] does when a task of that name exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOverwrite {
    /// The new function replaces the old one.
    Replace,
    /// The old one stays; the call reports `false`.
    Skip,
    /// The call fails.
    Error,
}

/// Netron's core tasks, answered by every peer.
const CORE_TASKS: [&str; 7] =
    ["abilities", "subscribe", "unsubscribe", "emit", "expose_service", "unexpose_service", "unref_service"];

/// Why a peer operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PeerError {
    /// The remote peer answered with an error.
    #[error("the remote peer answered: {}: {}", .0.name, .0.message)]
    Remote(Box<JsError>),
    /// The remote peer answered with an error value that is not an `Error`.
    #[error("the remote peer answered with an error value: {0:?}")]
    RemoteValue(Box<Value>),
    /// No response within the request timeout.
    #[error("Request timeout exceeded")]
    Timeout,
    /// The connection is closed (or the peer stopped) before the response came.
    #[error("the connection to the remote peer is closed")]
    Closed,
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The remote peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No service matches the query.
    #[error("Unknown service: {0}")]
    UnknownService(String),
    /// A local declaration problem (a service exposed twice, ...).
    #[error("{0}")]
    Local(String),
}

struct Exposed {
    definition: Definition,
}

/// What answers the calls of one definition.
#[derive(Clone)]
enum Served {
    /// A service of this peer: exposed (`parent` `None`), or returned by a method of `parent`.
    Local { service: Arc<Service>, parent: Option<String> },
    /// A service another peer exposed here (the `expose_service` task) under `name`: calls go to
    /// it.
    Proxy { exposer: std::sync::Weak<Connection>, name: String },
}

struct Inner {
    id: String,
    config: PeerConfig,
    ids: PacketIds,
    /// Exposed services by qualified name.
    exposed: RwLock<HashMap<String, Exposed>>,
    /// Every definition this peer serves, by id (changed through [`Inner::definitions_mut`]).
    definitions: RwLock<HashMap<String, Served>>,
    /// Open connections, by remote peer id.
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    /// Cancelled by [`Peer::stop`].
    stopped: CancellationToken,
    /// Local listeners, and the remote peers' subscriptions.
    bus: EventBus,
    /// Typed events.
    events: tokio::sync::broadcast::Sender<PeerEvent>,
    /// Netron's own events, emitted on the bus one at a time in order; at most [`ANNOUNCEMENTS`]
    /// wait (a bus listener that cannot keep up loses the excess, counted and logged).
    announcements: mpsc::Sender<(String, Value)>,
    /// Permits of the connections [`Peer::listen`] serves (`max_connections`).
    slots: Arc<tokio::sync::Semaphore>,
    /// Tasks added with [`Peer::add_task`].
    tasks: RwLock<HashMap<String, Listener>>,
    /// Stream ids this peer writes, process-wide like packet ids.
    stream_ids: PacketIds,
    /// Checks of every call to this peer's services.
    middleware: RwLock<Vec<Arc<dyn crate::middleware::Middleware>>>,
    /// Prometheus metrics.
    metrics: Arc<crate::metrics::Metrics>,
    /// The peer accepts connections (for `/ready`).
    listening: Arc<std::sync::atomic::AtomicBool>,
    /// The fleet this peer belongs to, once discovery is enabled.
    discovery: Mutex<Option<Arc<crate::discovery::Discovery>>>,
}

/// Announcements waiting for the bus at most.
const ANNOUNCEMENTS: usize = 10_000;

impl Inner {
    /// Emits Netron's event `name` with `payload` (in order, after the ones before) and the typed one.
    fn announce(&self, name: &str, payload: Value, event: PeerEvent) {
        let _ = self.events.send(event);
        self.announce_on_bus(name, payload);
    }

    /// Queues Netron's event `name` for the bus; drops it (counted, logged) when the queue is full.
    fn announce_on_bus(&self, name: &str, payload: Value) {
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.announcements.try_send((name.to_owned(), payload))
        {
            self.metrics.announcements_dropped.inc();
            let dropped = self.metrics.announcements_dropped.get();
            if dropped.is_power_of_two() {
                tracing::warn!(
                    event = name,
                    dropped,
                    "the event bus's listeners cannot keep up; events dropped"
                );
            }
        }
    }

    /// Changes the served definitions, keeping the `netron_definitions` gauge in step.
    fn definitions_mut<T>(&self, change: impl FnOnce(&mut HashMap<String, Served>) -> T) -> T {
        let mut definitions = self.definitions.write().unwrap_or_else(|p| p.into_inner());
        let out = change(&mut definitions);
        self.metrics.definitions.set(i64::try_from(definitions.len()).unwrap_or(i64::MAX));
        out
    }
}

/// A Netron peer. Cheap to clone.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

/// A random UUID v4, as Netron's ids.
pub(crate) fn uuid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

impl Peer {
    /// A peer with `config`.
    pub fn new(config: PeerConfig) -> Self {
        let id = config.id.clone().unwrap_or_else(uuid);
        let (announcements, mut queue) = mpsc::channel::<(String, Value)>(ANNOUNCEMENTS);
        let max_connections = config.max_connections.min(tokio::sync::Semaphore::MAX_PERMITS);
        let inner = Arc::new(Inner {
            id,
            config,
            ids: PacketIds::default(),
            exposed: RwLock::new(HashMap::new()),
            definitions: RwLock::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            stopped: CancellationToken::new(),
            bus: EventBus::default(),
            events: tokio::sync::broadcast::channel(256).0,
            announcements,
            slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            tasks: RwLock::new(HashMap::new()),
            stream_ids: PacketIds::default(),
            discovery: Mutex::new(None),
            middleware: RwLock::new(Vec::new()),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            listening: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some((name, payload)) = queue.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                for result in inner.bus.emit_parallel(&name, vec![payload]).await {
                    if let Err(error) = result {
                        tracing::debug!(event = %name, error = %error.message, "a listener failed");
                    }
                }
            }
        });
        Self { inner }
    }

    pub(crate) fn set_discovery(&self, discovery: Arc<crate::discovery::Discovery>) {
        if let Ok(mut slot) = self.inner.discovery.lock() {
            *slot = Some(discovery);
        }
    }

    pub(crate) fn discovery(&self) -> Option<Arc<crate::discovery::Discovery>> {
        self.inner.discovery.lock().ok().and_then(|d| d.clone())
    }

    /// Emits `name` with `payload` on the bus, in order after the announcements before it.
    pub(crate) fn announce_local(&self, name: &str, payload: Value) {
        self.inner.announce_on_bus(name, payload);
    }

    /// The peer's metrics in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.encode()
    }

    /// Serves `/metrics`, `/health` and `/ready` over HTTP on `address` until the peer stops;
    /// returns the bound address.
    pub async fn serve_metrics(&self, address: &str) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let bound = listener.local_addr()?;
        let (metrics, listening) = (Arc::clone(&self.inner.metrics), Arc::clone(&self.inner.listening));
        tokio::spawn(crate::metrics::serve(listener, metrics, listening, self.inner.stopped.clone()));
        Ok(bound)
    }

    /// Adds a check that every call to this peer's services passes first (in the order added,
    /// before the service's own).
    pub fn use_middleware(&self, middleware: Arc<dyn crate::middleware::Middleware>) {
        if let Ok(mut all) = self.inner.middleware.write() {
            all.push(middleware);
        }
    }

    /// The peer's event bus: local listeners, and what remote peers subscribed to.
    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    /// The peer's typed events (connections, services), from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<PeerEvent> {
        self.inner.events.subscribe()
    }

    /// Adds a task remote peers run with `run_task(name, args)`. Core task names are refused.
    /// Returns `false` when `Skip` kept an existing task.
    pub fn add_task(&self, name: &str, overwrite: TaskOverwrite, task: Listener) -> Result<bool, PeerError> {
        if CORE_TASKS.contains(&name) {
            return Err(PeerError::Local(format!("{name} is one of Netron's core tasks")));
        }
        let mut tasks = self.inner.tasks.write().map_err(|_| PeerError::Local("poisoned".into()))?;
        if tasks.contains_key(name) {
            match overwrite {
                TaskOverwrite::Skip => return Ok(false),
                TaskOverwrite::Error => return Err(PeerError::Local(format!("Task already exists: {name}"))),
                TaskOverwrite::Replace => {}
            }
        }
        tasks.insert(name.to_owned(), task);
        Ok(true)
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Exposes `service` under its qualified name; returns its definition.
    pub fn expose_service(&self, service: Arc<Service>) -> Result<Definition, PeerError> {
        let key = service.qualified_name().to_owned();
        let mut exposed = self.inner.exposed.write().map_err(|_| PeerError::Local("poisoned".into()))?;
        if exposed.contains_key(&key) {
            return Err(PeerError::Local(format!("Service already exposed: {key}")));
        }
        let definition = Definition {
            id: uuid(),
            parent_id: String::new(),
            peer_id: self.inner.id.clone(),
            meta: service.meta(),
        };
        self.inner
            .definitions_mut(|d| d.insert(definition.id.clone(), Served::Local { service, parent: None }));
        exposed.insert(key.clone(), Exposed { definition: definition.clone() });
        drop(exposed);
        let payload = service_event(&definition, &key, &self.inner.id, None, true);
        let event = PeerEvent::ServiceExposed { qualified_name: key, definition_id: definition.id.clone() };
        self.inner.announce("service:expose", payload, event);
        Ok(definition)
    }

    /// Stops exposing the service `qualified_name`; `false` when it was not exposed.
    pub fn conceal_service(&self, qualified_name: &str) -> bool {
        let Ok(mut exposed) = self.inner.exposed.write() else { return false };
        let Some(gone) = exposed.remove(qualified_name) else { return false };
        drop(exposed);
        self.inner.definitions_mut(|d| d.remove(&gone.definition.id));
        let payload = service_event(&gone.definition, qualified_name, &self.inner.id, None, false);
        let event = PeerEvent::ServiceConcealed {
            qualified_name: qualified_name.to_owned(),
            definition_id: gone.definition.id.clone(),
        };
        self.inner.announce("service:unexpose", payload, event);
        true
    }

    /// The qualified names of the exposed services, sorted.
    pub fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.inner.exposed.read().map(|e| e.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        names
    }

    /// Whether `qualified_name` is exposed.
    pub fn has_service(&self, qualified_name: &str) -> bool {
        self.inner.exposed.read().is_ok_and(|e| e.contains_key(qualified_name))
    }

    /// Accepts connections on `address` until [`Peer::stop`]; returns the bound address.
    pub async fn listen(&self, address: &str) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let bound = listener.local_addr()?;
        let inner = Arc::clone(&self.inner);
        inner.listening.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            tracing::warn!(%error, "accepting a peer connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = inner.stopped.cancelled() => return,
                };
                match Arc::clone(&inner.slots).try_acquire_owned() {
                    Ok(slot) => {
                        tokio::spawn(accept(Arc::clone(&inner), stream, slot));
                    }
                    Err(_) => {
                        // Closed at once: the connections served are at `max_connections`.
                        inner.metrics.connections_refused.inc();
                        let refused = inner.metrics.connections_refused.get();
                        if refused.is_power_of_two() {
                            tracing::warn!(
                                refused,
                                max = inner.config.max_connections,
                                "connection refused: the peer serves its maximum"
                            );
                        }
                    }
                }
            }
        });
        Ok(bound)
    }

    /// Connects to the peer listening at `url` (`ws://host:port`), runs the handshake and
    /// `abilities`, and returns the connection. With `max_reconnect_attempts` other than `Some(0)`,
    /// a connection that breaks is opened again in the background (backoff from
    /// `reconnect_delay`, doubling up to 30 s), its subscriptions renewed; calls in flight when it
    /// broke fail with [`PeerError::Closed`].
    pub async fn connect(&self, url: &str) -> Result<RemotePeer, PeerError> {
        let listeners = Arc::new(EventBus::default());
        let connection = open(&self.inner, url, Arc::clone(&listeners)).await?;
        let remote = RemotePeer {
            shared: Arc::new(Remote {
                current: arc_swap::ArcSwap::new(connection),
                services: RwLock::new(HashMap::new()),
                listeners,
                closed_by_us: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        remote.initialize(true).await?;
        if self.inner.config.max_reconnect_attempts != Some(0) {
            tokio::spawn(reconnect(
                Arc::downgrade(&self.inner),
                Arc::downgrade(&remote.shared),
                url.to_owned(),
            ));
        }
        Ok(remote)
    }

    /// Stops listening and closes every connection; calls waiting on them fail with
    /// [`PeerError::Closed`].
    pub async fn stop(&self) {
        self.stop_discovery().await;
        self.inner.listening.store(false, std::sync::atomic::Ordering::Relaxed);
        self.inner.stopped.cancel();
        let connections: Vec<Arc<Connection>> =
            self.inner.connections.lock().map(|c| c.values().cloned().collect()).unwrap_or_default();
        for connection in connections {
            connection.close();
        }
    }
}

/// Opens a connection to `url`: the WebSocket handshake with `?id=`, then the listener's id frame.
async fn open(inner: &Arc<Inner>, url: &str, listeners: Arc<EventBus>) -> Result<Arc<Connection>, PeerError> {
    // `ws://host:port` gets its root path, as the `ws` package sends it (`GET /?id=...`).
    let rooted = match url.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => {
            format!("{}/{}", url.split('?').next().unwrap_or(url), url.find('?').map_or("", |at| &url[at..]))
        }
        _ => url.to_owned(),
    };
    let separator = if rooted.contains('?') { '&' } else { '?' };
    let target = format!("{rooted}{separator}id={}", inner.id);
    let handshake = async {
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(target, Some(ws_config(&inner.config)), true)
                .await
                .map_err(|e| PeerError::Connect(e.to_string()))?;
        // The listener's first frame is a text frame naming it.
        let remote_id = loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let json: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|_| PeerError::Protocol("Invalid handshake".into()))?;
                    match (json["type"].as_str(), json["id"].as_str()) {
                        (Some("id"), Some(id)) => break id.to_owned(),
                        _ => return Err(PeerError::Protocol("Invalid handshake".into())),
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(_)) => return Err(PeerError::Protocol("Invalid handshake".into())),
                Some(Err(e)) => return Err(PeerError::Connect(e.to_string())),
                None => return Err(PeerError::Closed),
            }
        };
        Ok((socket, remote_id))
    };
    let (socket, remote_id) = tokio::time::timeout(inner.config.connect_timeout, handshake)
        .await
        .map_err(|_| PeerError::Connect("the connection and handshake timed out".into()))??;
    Ok(Connection::start(Arc::clone(inner), socket, remote_id, listeners, HashMap::new(), None))
}

/// How long a closing connection's writer may take to send the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The longest wait between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Reconnection delays: from `reconnect_delay`, doubling up to 30 s, each within ±20 % so that the
/// peers a restarted server served do not all come back in the same instant.
fn reconnect_backoff(config: &PeerConfig) -> muster_core::Backoff {
    muster_core::Backoff::new(config.reconnect_delay, MAX_RECONNECT_DELAY, 0.2)
}

/// Opens `remote`'s connection again each time it breaks (unless closed on purpose or the peer
/// stopped), with exponential backoff, up to the attempt limit.
async fn reconnect(inner: std::sync::Weak<Inner>, remote: std::sync::Weak<Remote>, url: String) {
    loop {
        let Some(closed) = remote.upgrade().map(|r| r.current.load().closed.clone()) else { return };
        closed.cancelled().await;
        let Some(config) = inner.upgrade().map(|peer| peer.config.clone()) else { return };
        let mut backoff = reconnect_backoff(&config);
        loop {
            let (Some(peer), Some(shared)) = (inner.upgrade(), remote.upgrade()) else { return };
            if peer.stopped.is_cancelled() || shared.closed_by_us.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let attempts = backoff.failures();
            if peer.config.max_reconnect_attempts.is_some_and(|max| attempts >= max) {
                tracing::warn!(%url, attempts, "giving up reconnecting");
                return;
            }
            let delay = backoff.failed();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = peer.stopped.cancelled() => return,
            }
            match open(&peer, &url, Arc::clone(&shared.listeners)).await {
                Ok(connection) => {
                    let again = RemotePeer { shared };
                    match again.initialize_on(connection, false).await {
                        Ok(()) => {
                            tracing::info!(%url, "reconnected");
                            break;
                        }
                        Err(error) => tracing::debug!(%url, %error, "reconnected but the handshake failed"),
                    }
                }
                Err(error) => {
                    let _ = peer
                        .events
                        .send(PeerEvent::ConnectFailed { url: url.clone(), message: error.to_string() });
                    tracing::debug!(%url, %error, attempts, "reconnecting failed");
                }
            }
        }
    }
}

/// The listener's side of a new connection: the WebSocket handshake (the connector's id from
/// `?id=`), the id frame, then the connection.
async fn accept(inner: Arc<Inner>, stream: tokio::net::TcpStream, slot: tokio::sync::OwnedSemaphorePermit) {
    let mut params = HashMap::new();
    // The signature is tungstenite's handshake callback; its error type is its own.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        params = crate::middleware::query_params(request.uri().query());
        Ok(response)
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config(&inner.config)));
    let mut socket = match tokio::time::timeout(inner.config.connect_timeout, handshake).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => return tracing::debug!(%error, "a WebSocket handshake failed"),
        Err(_) => return tracing::debug!("a WebSocket handshake timed out"),
    };
    let Some(remote_id) = params.remove("id").filter(|id| !id.is_empty()) else {
        tracing::debug!("a peer connected without ?id=; closing");
        let _ = socket.close(None).await;
        return;
    };
    let hello = serde_json::json!({"type": "id", "id": inner.id}).to_string();
    if socket.send(Message::text(hello)).await.is_err() {
        return;
    }
    Connection::start(inner, socket, remote_id, Arc::new(EventBus::default()), params, Some(slot));
}

type Pending = Mutex<HashMap<u32, oneshot::Sender<Result<Value, Value>>>>;

struct Connection {
    peer: Arc<Inner>,
    remote_id: String,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    closed: CancellationToken,
    /// Events the remote peer subscribed to here: the bus listener forwarding each.
    forwarded: Mutex<HashMap<String, SubscriptionId>>,
    /// Listeners of the remote peer's events (its `emit` tasks); kept across reconnections.
    remote_listeners: Arc<EventBus>,
    /// The query parameters the remote peer connected with (listener side).
    params: HashMap<String, String>,
    /// Counted in the open-connections gauge (until closed).
    counted: std::sync::atomic::AtomicBool,
    /// Streams the remote peer writes to this one.
    streams: Arc<Streams>,
    /// Frames queued for the writer and not sent yet (stream writers wait while it is high).
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Their bytes: over `max_queued_bytes` the remote peer is not reading and is disconnected.
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Definitions of services returned by methods to this remote peer, by instance (one per
    /// instance); they are served until it unrefs them or the connection closes.
    stubs: Mutex<HashMap<usize, String>>,
    /// Definitions of this peer's services exposed on the remote peer through this connection
    /// ([`RemotePeer::expose_service`]); served until the connection closes.
    lent: Mutex<Vec<String>>,
    /// The connection's place among those [`Peer::listen`] serves; released when it closes.
    slot: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    /// Signalled by the writer after each frame.
    drained: Arc<tokio::sync::Notify>,
    /// Requests running now.
    running: Arc<tokio::sync::Semaphore>,
}

impl Connection {
    fn start<S>(
        peer: Arc<Inner>,
        socket: tokio_tungstenite::WebSocketStream<S>,
        remote_id: String,
        remote_listeners: Arc<EventBus>,
        params: HashMap<String, String>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Arc<Self>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = socket.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let closed = peer.stopped.child_token();
        let connection = Arc::new(Self {
            peer: Arc::clone(&peer),
            remote_id: remote_id.clone(),
            out,
            pending: Mutex::new(HashMap::new()),
            closed: closed.clone(),
            forwarded: Mutex::new(HashMap::new()),
            remote_listeners,
            params,
            counted: std::sync::atomic::AtomicBool::new(true),
            streams: Arc::new(Streams::new(peer.config.stream_buffer, peer.config.max_streams)),
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            queued_bytes: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            stubs: Mutex::new(HashMap::new()),
            lent: Mutex::new(Vec::new()),
            slot: Mutex::new(slot),
            drained: Arc::new(tokio::sync::Notify::new()),
            running: Arc::new(tokio::sync::Semaphore::new(peer.config.max_concurrent_requests.max(1))),
        });
        if let Ok(mut connections) = peer.connections.lock() {
            connections.insert(remote_id.clone(), Arc::clone(&connection));
        }
        peer.metrics.connections.inc();
        let payload = Value::object([("peerId", Value::str(&remote_id))]);
        peer.announce("peer:connect", payload, PeerEvent::Connected { peer_id: remote_id });
        let writer_closed = closed.clone();
        let (queued, queued_bytes, drained) = (
            Arc::clone(&connection.queued),
            Arc::clone(&connection.queued_bytes),
            Arc::clone(&connection.drained),
        );
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = outgoing.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    () = writer_closed.cancelled() => {
                        // A remote peer that does not read gets no more than a moment for it.
                        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(None))).await;
                        break;
                    }
                };
                let size = message.len();
                // A write blocked on a peer that does not read ends when the connection closes.
                let sent = tokio::select! {
                    sent = sink.send(message) => sent.is_ok(),
                    () = writer_closed.cancelled() => false,
                };
                queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                queued_bytes.fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
                drained.notify_waiters();
                if !sent {
                    break;
                }
            }
            // Dropping the queue frees what was still waiting in it.
            writer_closed.cancel();
        });
        let reader = Arc::clone(&connection);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = stream.next() => message,
                    () = reader.closed.cancelled() => break,
                };
                match message {
                    Some(Ok(Message::Binary(frame))) => reader.receive(&frame),
                    Some(Ok(Message::Text(text))) => tracing::debug!(text = %text, "text frame ignored"),
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(error)) => {
                        // An oversized frame, broken framing, a reset: this connection ends, the
                        // peer keeps serving the others.
                        tracing::info!(remote = %reader.remote_id, %error, "closing a peer connection");
                        break;
                    }
                    Some(Ok(_)) => {}
                }
            }
            reader.close();
        });
        connection
    }

    /// Ends the connection: pending requests fail, its subscriptions end, the definitions it was
    /// handed or lent are no longer served, the peer forgets it.
    fn close(&self) {
        if self.counted.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.peer.metrics.connections.dec();
        }
        self.closed.cancel();
        drop(self.slot.lock().unwrap_or_else(|p| p.into_inner()).take());
        let handed: Vec<String> =
            self.stubs.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, id)| id).collect();
        let lent = std::mem::take(&mut *self.lent.lock().unwrap_or_else(|p| p.into_inner()));
        self.peer.definitions_mut(|definitions| {
            for id in handed.iter().chain(&lent) {
                definitions.remove(id);
            }
        });
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
        self.streams.close_all("the connection closed");
        self.drop_proxies();
        self.drained.notify_waiters();
        if let Ok(mut forwarded) = self.forwarded.lock() {
            for (_, id) in forwarded.drain() {
                self.peer.bus.unsubscribe(id);
            }
        }
        // Only this connection's entry: a newer connection of the same peer stays.
        let known = self.peer.connections.lock().is_ok_and(|mut connections| {
            let mine = connections.get(&self.remote_id).is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), self));
            mine && connections.remove(&self.remote_id).is_some()
        });
        if known {
            let payload = Value::object([("peerId", Value::str(&self.remote_id))]);
            self.peer.announce(
                "peer:disconnect",
                payload,
                PeerEvent::Disconnected { peer_id: self.remote_id.clone() },
            );
        }
    }

    /// Services the remote peer exposed here go with its connection.
    fn drop_proxies(&self) {
        let gone: Vec<String> = self
            .peer
            .exposed
            .read()
            .map(|e| {
                e.iter()
                    .filter(|(_, x)| x.definition.peer_id == self.remote_id)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        for name in gone {
            let removed = self.peer.exposed.write().ok().and_then(|mut e| e.remove(&name));
            if let Some(exposed) = removed {
                self.peer.definitions_mut(|d| d.remove(&exposed.definition.id));
            }
        }
    }

    /// Queues `packet` for the writer.
    fn send(&self, packet: &Packet) {
        self.send_sized(packet);
    }

    /// Queues `packet` for the writer; returns its size in bytes. A remote peer with more than
    /// `max_queued_bytes` waiting for its socket is not reading: it is disconnected.
    fn send_sized(&self, packet: &Packet) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        if self.closed.is_cancelled() {
            return 0;
        }
        match packet.encode() {
            Ok(bytes) => {
                let size = bytes.len();
                let waiting = self.queued_bytes.fetch_add(size, Relaxed) + size;
                if waiting > self.peer.config.max_queued_bytes {
                    self.queued_bytes.fetch_sub(size, Relaxed);
                    self.peer.metrics.slow_peers_disconnected.inc();
                    tracing::warn!(remote = %self.remote_id, waiting, "a peer does not read what it is sent; disconnecting it");
                    self.close();
                    return 0;
                }
                self.queued.fetch_add(1, Relaxed);
                if self.out.send(Message::binary(bytes)).is_err() {
                    self.queued.fetch_sub(1, Relaxed);
                    self.queued_bytes.fetch_sub(size, Relaxed);
                }
                size
            }
            Err(error) => {
                tracing::warn!(%error, "a packet cannot be written");
                0
            }
        }
    }

    /// One frame from the remote peer.
    fn receive(self: &Arc<Self>, frame: &[u8]) {
        let max = self.peer.config.limits.max_frame;
        if frame.len() > max {
            return self.refuse_oversized(frame, max);
        }
        let packet = match Packet::decode(frame, self.peer.config.limits) {
            Ok(packet) => packet,
            Err(error) => {
                return tracing::debug!(remote = %self.remote_id, %error, "an undecodable frame was dropped");
            }
        };
        if !packet.impulse {
            let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&packet.id));
            if let Some(waiter) = waiter {
                let _ = waiter.send(if packet.error { Err(packet.data) } else { Ok(packet.data) });
            }
            return;
        }
        match packet.kind {
            PacketType::Get | PacketType::Set | PacketType::Call | PacketType::Task => {
                let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() else {
                    tracing::debug!(remote = %self.remote_id, "too many requests at once; refused");
                    let busy = JsError::new("Too many concurrent requests; retry later");
                    return self.send(&packet.response(Err(Value::Error(Box::new(busy)))));
                };
                let connection = Arc::clone(self);
                let (service, method) = self.labels(&packet);
                let span = tracing::debug_span!("netron.call", %service, %method, peer = %self.remote_id);
                let task = async move {
                    let started = tokio::time::Instant::now();
                    let outcome = connection.serve(&packet).await;
                    let metrics = &connection.peer.metrics;
                    metrics.duration.observe(started.elapsed().as_secs_f64());
                    let status = if outcome.is_ok() { "ok" } else { "error" };
                    metrics
                        .calls
                        .get_or_create(&crate::metrics::CallLabels { service, method, status })
                        .inc();
                    match outcome {
                        Ok(Output::Value(value)) => connection.send(&packet.response(Ok(value))),
                        Ok(Output::Service(_)) => {
                            // `serve` turns returned services into definitions; nothing else arrives here.
                            let error = JsError::new("a service cannot be sent here");
                            connection.send(&packet.response(Err(Value::Error(Box::new(error)))));
                        }
                        Ok(Output::Stream(items)) => {
                            // The reply names the stream first; the chunks follow it.
                            let stream_id = connection.peer.stream_ids.next();
                            let reference = crate::wire::StreamReference {
                                stream_id,
                                writable: true,
                                live: true,
                                peer_id: connection.remote_id.clone(),
                            };
                            connection
                                .send(&packet.response(Ok(Value::StreamReference(Box::new(reference)))));
                            drop(permit);
                            connection.pipe(stream_id, items).await;
                        }
                        Err(error) => connection.send(&packet.response(Err(Value::Error(Box::new(error))))),
                    }
                };
                tokio::spawn(tracing::Instrument::instrument(task, span));
            }
            PacketType::Stream => {
                self.peer
                    .metrics
                    .stream_bytes
                    .get_or_create(&crate::metrics::Direction { direction: "received" })
                    .inc_by(frame.len() as u64);
                let (id, index) = packet.stream.unwrap_or_default();
                self.streams.chunk(id, index, packet.data, packet.eos);
            }
            PacketType::StreamError | PacketType::StreamClose => {
                let id = match packet.data.get("streamId") {
                    Some(Value::Int(id)) => u32::try_from(*id).unwrap_or(0),
                    Some(Value::Float(id)) => *id as u32,
                    _ => 0,
                };
                let why =
                    packet.data.get("message").or_else(|| packet.data.get("reason")).and_then(Value::as_str);
                self.streams.fail(id, why.unwrap_or("the stream was closed by its writer").to_owned());
            }
            PacketType::Ping => tracing::debug!(remote = %self.remote_id, "ping ignored, as Netron does"),
        }
    }

    /// A frame over `max_frame` (and within what the WebSocket layer reads): a request is answered
    /// with a Netron error naming the limit, anything else is dropped; the connection stays.
    fn refuse_oversized(&self, frame: &[u8], max: usize) {
        let request = Packet::header(frame).filter(|(_, kind, impulse)| {
            *impulse
                && matches!(kind, PacketType::Get | PacketType::Set | PacketType::Call | PacketType::Task)
        });
        tracing::info!(remote = %self.remote_id, size = frame.len(), max, "a frame over the limit was refused");
        if let Some((id, kind, _)) = request {
            let error = JsError::new(format!(
                "Payload too large: the request is {} bytes, this peer accepts at most {max}",
                frame.len()
            ));
            self.send(
                &Packet::request(id, kind, Value::Undefined).response(Err(Value::Error(Box::new(error)))),
            );
        }
    }

    /// The metric labels of a request: the service's qualified name (`task` for tasks) and the
    /// member or task name.
    fn labels(&self, packet: &Packet) -> (String, String) {
        let Value::Array(items) = &packet.data else { return ("unknown".into(), "unknown".into()) };
        let text = |i: usize| items.get(i).and_then(Value::as_str).unwrap_or("unknown").to_owned();
        if packet.kind == PacketType::Task {
            return ("task".into(), text(0));
        }
        let service = self.peer.definitions.read().ok().and_then(|d| match d.get(&text(0)) {
            Some(Served::Local { service, .. }) => Some(service.qualified_name().to_owned()),
            Some(Served::Proxy { .. }) => Some("proxied".to_owned()),
            None => None,
        });
        (service.unwrap_or_else(|| "unknown".into()), text(1))
    }

    /// Writes `items` as stream `stream_id`: a chunk per item, then the end; an item that fails
    /// sends STREAM_ERROR. Waits while many frames are queued for the socket (backpressure inside
    /// the process; Netron has none on the wire).
    async fn pipe(
        &self,
        stream_id: u32,
        mut items: futures::stream::BoxStream<'static, Result<Value, JsError>>,
    ) {
        const HIGH_WATER: usize = 256;
        let mut index = 0u32;
        loop {
            while self.backlogged(HIGH_WATER) && !self.closed.is_cancelled() {
                let drained = self.drained.notified();
                if !self.backlogged(HIGH_WATER) {
                    break;
                }
                drained.await;
            }
            let next = tokio::select! {
                next = items.next() => next,
                () = self.closed.cancelled() => return,
            };
            let id = self.peer.ids.next();
            match next {
                Some(Ok(value)) => {
                    let sent = self.send_sized(&Packet::chunk(id, stream_id, index, value, true, false));
                    let direction = crate::metrics::Direction { direction: "sent" };
                    self.peer.metrics.stream_bytes.get_or_create(&direction).inc_by(sent as u64);
                }
                Some(Err(error)) => {
                    let data = Value::object([
                        ("streamId", Value::Int(i64::from(stream_id))),
                        ("message", Value::str(error.message)),
                    ]);
                    return self.send(&Packet::request(id, PacketType::StreamError, data));
                }
                None => return self.send(&Packet::chunk(id, stream_id, index, Value::Null, true, true)),
            }
            index = index.wrapping_add(1);
        }
    }

    /// More than `frames` frames, or more than a quarter of `max_queued_bytes`, wait for the
    /// socket: a stream writer waits before queueing more.
    fn backlogged(&self, frames: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.queued.load(Relaxed) > frames
            || self.queued_bytes.load(Relaxed) > self.peer.config.max_queued_bytes / 4
    }

    /// Answers one request: the middleware first (every kind: calls, reads and writes of
    /// properties — of this peer's services or of ones proxied here — and tasks, core ones
    /// included), then the service, the proxied peer or the task.
    async fn serve(self: &Arc<Self>, packet: &Packet) -> Result<Output, JsError> {
        let Value::Array(items) = &packet.data else { return Err(JsError::new("Invalid packet")) };
        let text =
            |i: usize| items.get(i).and_then(Value::as_str).ok_or_else(|| JsError::new("Invalid packet"));
        if packet.kind == PacketType::Task {
            let name = text(0)?;
            self.check(None, "", name, packet.kind, &items[1..])?;
            return self.run_task(name, items[1..].to_vec()).await.map(Output::Value);
        }
        let (def_id, member) = (text(0)?, text(1)?);
        let served = self
            .peer
            .definitions
            .read()
            .ok()
            .and_then(|d| d.get(def_id).cloned())
            .ok_or_else(|| JsError::new(format!("Unknown definition: {def_id}.")))?;
        let args = match packet.kind {
            PacketType::Get => &[][..],
            _ => items.get(2..).unwrap_or_default(),
        };
        let service = match served {
            Served::Local { service, .. } => service,
            Served::Proxy { exposer, name } => {
                self.check(None, &name, member, packet.kind, args)?;
                // A service another peer exposed here: the request goes to it as it came.
                let exposer = exposer
                    .upgrade()
                    .ok_or_else(|| JsError::new(format!("Unknown definition: {def_id}.")))?;
                return match exposer.request(packet.kind, packet.data.clone()).await {
                    Ok(value) => Ok(Output::Value(value)),
                    Err(PeerError::Remote(error)) => Err(*error),
                    Err(other) => Err(JsError::new(other.to_string())),
                };
            }
        };
        self.check(Some(&service), service.qualified_name(), member, packet.kind, args)?;
        let output = match packet.kind {
            PacketType::Get => service.get(member).map(Output::Value)?,
            PacketType::Set => {
                service.set(member, items.get(2).cloned().unwrap_or(Value::Undefined))?;
                Output::Value(Value::Undefined)
            }
            _ => service.call(member, args.to_vec()).await?,
        };
        match output {
            Output::Service(returned) => {
                Ok(Output::Value(Value::Definition(Box::new(self.stub(returned, def_id)))))
            }
            other => Ok(other),
        }
    }

    /// Runs the peer's middleware, then `service`'s own, on one request. Checks are synchronous:
    /// they read the settings in place, nothing is copied per request.
    fn check(
        &self,
        service: Option<&Service>,
        name: &str,
        member: &str,
        kind: PacketType,
        args: &[Value],
    ) -> Result<(), JsError> {
        let info = crate::middleware::CallInfo {
            peer_id: &self.remote_id,
            params: &self.params,
            service: name,
            member,
            kind,
            args,
        };
        let guards = self.peer.middleware.read();
        let own = service.into_iter().flat_map(Service::middleware);
        for guard in guards.iter().flat_map(|g| g.iter()).chain(own) {
            guard.check(&info)?;
        }
        Ok(())
    }

    /// The definition of a service returned by a method of `parent` (the same for the same
    /// instance).
    fn stub(&self, service: Arc<Service>, parent: &str) -> Definition {
        let key = Arc::as_ptr(&service) as *const () as usize;
        let mut stubs = self.stubs.lock().unwrap_or_else(|p| p.into_inner());
        let meta = service.meta();
        if let Some(id) = stubs.get(&key)
            && self.peer.definitions.read().is_ok_and(|d| d.contains_key(id))
        {
            return Definition {
                id: id.clone(),
                parent_id: parent.to_owned(),
                peer_id: self.peer.id.clone(),
                meta,
            };
        }
        let definition =
            Definition { id: uuid(), parent_id: parent.to_owned(), peer_id: self.peer.id.clone(), meta };
        stubs.insert(key, definition.id.clone());
        self.peer.definitions_mut(|d| {
            d.insert(definition.id.clone(), Served::Local { service, parent: Some(parent.to_owned()) })
        });
        definition
    }

    /// Drops a returned service's definition and those returned from it (never an exposed one).
    fn unref(&self, id: &str) {
        self.peer.definitions_mut(|definitions| self.unref_in(definitions, id));
    }

    fn unref_in(&self, definitions: &mut HashMap<String, Served>, id: &str) {
        let mut gone = vec![id.to_owned()];
        let mut i = 0;
        while i < gone.len() {
            let current = gone[i].clone();
            if matches!(definitions.get(&current), Some(Served::Local { parent: Some(_), .. })) {
                definitions.remove(&current);
                let children: Vec<String> = definitions
                    .iter()
                    .filter(|(_, served)| matches!(served, Served::Local { parent: Some(p), .. } if *p == current))
                    .map(|(child, _)| child.clone())
                    .collect();
                gone.extend(children);
            }
            i += 1;
        }
        self.stubs.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, stub| definitions.contains_key(stub));
    }

    /// The core tasks, then the added ones.
    async fn run_task(self: &Arc<Self>, name: &str, args: Vec<Value>) -> Result<Value, JsError> {
        match name {
            "abilities" => {
                let services = self
                    .peer
                    .exposed
                    .read()
                    .map(|exposed| {
                        let mut entries: Vec<(Value, Value)> = exposed
                            .iter()
                            .map(|(key, e)| {
                                (Value::str(key), Value::Definition(Box::new(e.definition.clone())))
                            })
                            .collect();
                        entries.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
                        entries
                    })
                    .unwrap_or_default();
                Ok(Value::object([
                    ("services", Value::Map(services)),
                    ("allowServiceEvents", Value::Bool(self.peer.config.allow_service_events)),
                ]))
            }
            "subscribe" => {
                let event = args
                    .first()
                    .and_then(Value::as_str)
                    .ok_or_else(|| JsError::new("subscribe: no event name"))?;
                let mut forwarded = self.forwarded.lock().map_err(|_| JsError::new("poisoned"))?;
                if !forwarded.contains_key(event) {
                    let weak = Arc::downgrade(self);
                    let name = event.to_owned();
                    let id = self.peer.bus.subscribe(
                        event,
                        crate::events::listener(move |args| {
                            let weak = weak.clone();
                            let name = name.clone();
                            async move {
                                let Some(connection) = weak.upgrade() else { return Ok(Value::Undefined) };
                                let sent = crate::metrics::Direction { direction: "sent" };
                                connection.peer.metrics.events.get_or_create(&sent).inc();
                                let mut data = vec![Value::str("emit"), Value::str(&name)];
                                data.extend(args);
                                connection
                                    .request(PacketType::Task, Value::Array(data))
                                    .await
                                    .map_err(|e| JsError::new(e.to_string()))
                            }
                        }),
                    );
                    forwarded.insert(event.to_owned(), id);
                }
                Ok(Value::Undefined)
            }
            "unsubscribe" => {
                let event = args.first().and_then(Value::as_str).unwrap_or_default();
                let removed = self.forwarded.lock().ok().and_then(|mut f| f.remove(event));
                if let Some(id) = removed {
                    self.peer.bus.unsubscribe(id);
                }
                Ok(Value::Undefined)
            }
            "emit" => {
                let mut args = args.into_iter();
                let event = match args.next() {
                    Some(Value::Str(event)) => event,
                    _ => return Err(JsError::new("emit: no event name")),
                };
                let received = crate::metrics::Direction { direction: "received" };
                self.peer.metrics.events.get_or_create(&received).inc();
                for result in self.remote_listeners.emit_parallel(&event, args.collect()).await {
                    result?;
                }
                Ok(Value::Undefined)
            }
            "unref_service" => {
                if let Some(id) = args.first().and_then(Value::as_str) {
                    self.unref(id);
                }
                Ok(Value::Undefined)
            }
            "expose_service" => {
                // Another peer publishes its service here; calls to it are forwarded to that peer.
                let meta = args.into_iter().next().unwrap_or(Value::Undefined);
                let name = meta.get("name").and_then(Value::as_str).map(str::to_owned);
                let Some(name) = name.filter(|n| !n.is_empty()) else {
                    return Err(JsError::new("expose_service: the definition has no name"));
                };
                let mut exposed = self.peer.exposed.write().map_err(|_| JsError::new("poisoned"))?;
                if exposed.contains_key(&name) {
                    return Err(JsError::new(format!("Service already exposed: {name}")));
                }
                let definition = Definition {
                    id: uuid(),
                    parent_id: String::new(),
                    peer_id: self.remote_id.clone(),
                    meta,
                };
                self.peer.definitions_mut(|d| {
                    d.insert(
                        definition.id.clone(),
                        Served::Proxy { exposer: Arc::downgrade(self), name: name.clone() },
                    )
                });
                exposed.insert(name.clone(), Exposed { definition: definition.clone() });
                drop(exposed);
                let payload = service_event(&definition, &name, &self.peer.id, Some(&self.remote_id), true);
                let event =
                    PeerEvent::ServiceExposed { qualified_name: name, definition_id: definition.id.clone() };
                self.peer.announce("service:expose", payload, event);
                Ok(Value::Definition(Box::new(definition)))
            }
            "unexpose_service" => {
                let name = args.first().and_then(Value::as_str).unwrap_or_default().to_owned();
                let proxied =
                    self.peer.exposed.read().ok().and_then(|e| e.get(&name).map(|x| x.definition.clone()));
                let Some(definition) = proxied.filter(|d| d.peer_id == self.remote_id) else {
                    return Err(JsError::new(format!("Unknown service: {name}")));
                };
                if let Ok(mut exposed) = self.peer.exposed.write() {
                    exposed.remove(&name);
                }
                self.peer.definitions_mut(|d| d.remove(&definition.id));
                let payload = service_event(&definition, &name, &self.peer.id, Some(&self.remote_id), false);
                let event = PeerEvent::ServiceConcealed {
                    qualified_name: name,
                    definition_id: definition.id.clone(),
                };
                self.peer.announce("service:unexpose", payload, event);
                Ok(Value::str(definition.id))
            }
            other => {
                let task = self.peer.tasks.read().ok().and_then(|t| t.get(other).cloned());
                match task {
                    Some(task) => task(args).await,
                    None => Err(JsError::new(format!("Task not found: {other}"))),
                }
            }
        }
    }

    /// Sends a request and waits for its response.
    async fn request(&self, kind: PacketType, data: Value) -> Result<Value, PeerError> {
        if self.closed.is_cancelled() {
            return Err(PeerError::Closed);
        }
        let id = self.peer.ids.next();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, tx);
        }
        self.send(&Packet::request(id, kind, data));
        enum Outcome {
            Answer(Result<Value, Value>),
            Closed,
            Timeout,
        }
        let outcome = tokio::select! {
            answer = tokio::time::timeout(self.peer.config.request_timeout, rx) => match answer {
                Ok(Ok(answer)) => Outcome::Answer(answer),
                Ok(Err(_)) => Outcome::Closed,
                Err(_) => Outcome::Timeout,
            },
            () = self.closed.cancelled() => Outcome::Closed,
        };
        if !matches!(outcome, Outcome::Answer(_))
            && let Ok(mut pending) = self.pending.lock()
        {
            pending.remove(&id);
        }
        match outcome {
            Outcome::Answer(Ok(value)) => Ok(value),
            Outcome::Answer(Err(Value::Error(error))) => Err(PeerError::Remote(error)),
            Outcome::Answer(Err(other)) => Err(PeerError::RemoteValue(Box::new(other))),
            Outcome::Closed => Err(PeerError::Closed),
            Outcome::Timeout => Err(PeerError::Timeout),
        }
    }
}

/// What a [`RemotePeer`]'s clones share: the current connection (replaced on reconnection), the
/// remote peer's services, and the listeners of its events.
struct Remote {
    current: arc_swap::ArcSwap<Connection>,
    services: RwLock<HashMap<String, Definition>>,
    listeners: Arc<EventBus>,
    /// [`RemotePeer::disconnect`] was called: no reconnection.
    closed_by_us: std::sync::atomic::AtomicBool,
}

/// A connection to a remote peer. Cheap to clone.
#[derive(Clone)]
pub struct RemotePeer {
    shared: Arc<Remote>,
}

impl std::fmt::Debug for RemotePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePeer").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl RemotePeer {
    fn connection(&self) -> Arc<Connection> {
        self.shared.current.load_full()
    }

    /// After a connection opens: `abilities` (the remote peer's services), following its service
    /// announcements when it allows it, and — after a reconnection — the subscriptions again.
    async fn initialize(&self, first: bool) -> Result<(), PeerError> {
        self.initialize_on(self.connection(), first).await
    }

    /// Reads the services of the peer behind `connection` (the `abilities` task), then makes it
    /// the current connection — so that nobody sees a new connection with the old peer's
    /// services — and renews the subscriptions (`first`: starts following its exposures).
    async fn initialize_on(&self, connection: Arc<Connection>, first: bool) -> Result<(), PeerError> {
        let allow = connection.peer.config.allow_service_events;
        let abilities = Value::object([("allowServiceEvents", Value::Bool(allow))]);
        let request = Value::Array(vec![Value::str("abilities"), abilities]);
        let answer = connection.request(PacketType::Task, request).await?;
        let services = match answer.get("services") {
            Some(Value::Map(entries)) => entries
                .iter()
                .filter_map(|(key, value)| match (key, value) {
                    (Value::Str(name), Value::Definition(definition)) => {
                        Some((name.clone(), (**definition).clone()))
                    }
                    _ => None,
                })
                .collect(),
            _ => HashMap::new(),
        };
        if let Ok(mut known) = self.shared.services.write() {
            *known = services;
        }
        self.shared.current.store(connection);
        if !first {
            for pattern in self.shared.listeners.patterns() {
                self.run_task("subscribe", vec![Value::str(&pattern)]).await?;
            }
            return Ok(());
        }
        // Follow the listener's services as it exposes and conceals them, when it allows it.
        if answer.get("allowServiceEvents") == Some(&Value::Bool(true)) {
            let weak = Arc::downgrade(&self.shared);
            let exposed = crate::events::listener(move |args| {
                let weak = weak.clone();
                async move {
                    let payload = args.first();
                    if let (Some(shared), Some(name), Some(Value::Definition(definition))) = (
                        weak.upgrade(),
                        payload.and_then(|p| p.get("qualifiedName")).and_then(Value::as_str),
                        payload.and_then(|p| p.get("definition")),
                    ) && let Ok(mut services) = shared.services.write()
                    {
                        services.insert(name.to_owned(), (**definition).clone());
                    }
                    Ok(Value::Undefined)
                }
            });
            self.subscribe("service:expose", exposed).await?;
            let weak = Arc::downgrade(&self.shared);
            let concealed = crate::events::listener(move |args| {
                let weak = weak.clone();
                async move {
                    if let (Some(shared), Some(name)) = (
                        weak.upgrade(),
                        args.first().and_then(|p| p.get("qualifiedName")).and_then(Value::as_str),
                    ) && let Ok(mut services) = shared.services.write()
                    {
                        services.remove(name);
                    }
                    Ok(Value::Undefined)
                }
            });
            self.subscribe("service:unexpose", concealed).await?;
        }
        Ok(())
    }

    /// The remote peer's id.
    pub fn id(&self) -> String {
        self.connection().remote_id.clone()
    }

    /// The qualified names of the remote peer's services, sorted.
    pub fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.shared.services.read().map(|s| s.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        names
    }

    /// The service matching `query`: `name@1.2.3` exactly; `name` — the unversioned one, else the
    /// highest version (as Netron); or `name@^1` — the highest version meeting the requirement.
    pub fn query_interface(&self, query: &str) -> Result<Interface, PeerError> {
        let services = self.shared.services.read().map_err(|_| PeerError::Closed)?;
        let unknown = || PeerError::UnknownService(query.to_owned());
        if let Some(definition) = services.get(query) {
            return Ok(self.interface(definition.clone()));
        }
        let (name, requirement) = match query.split_once('@') {
            Some((name, requirement)) => {
                (name, Some(semver::VersionReq::parse(requirement).map_err(|_| unknown())?))
            }
            None => (query, None),
        };
        let best = services
            .iter()
            .filter_map(|(key, definition)| {
                let version = semver::Version::parse(key.strip_prefix(name)?.strip_prefix('@')?).ok()?;
                requirement.as_ref().is_none_or(|r| r.matches(&version)).then_some((version, definition))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .ok_or_else(unknown)?;
        Ok(self.interface(best.1.clone()))
    }

    fn interface(&self, definition: Definition) -> Interface {
        Interface { remote: self.clone(), definition }
    }

    /// Runs task `name` on the remote peer.
    pub async fn run_task(&self, name: &str, args: Vec<Value>) -> Result<Value, PeerError> {
        let mut data = vec![Value::str(name)];
        data.extend(args);
        self.connection().request(PacketType::Task, Value::Array(data)).await
    }

    /// Listens to the remote peer's events matching `event` (`*` is a wildcard): the first
    /// listener of a pattern sends Netron's `subscribe` task; the remote peer then sends each
    /// emission as an `emit` task. Subscriptions are renewed after a reconnection.
    pub async fn subscribe(&self, event: &str, listener: Listener) -> Result<SubscriptionId, PeerError> {
        let first = self.shared.listeners.pattern_count(event) == 0;
        let id = self.shared.listeners.subscribe(event, listener);
        if first && let Err(error) = self.run_task("subscribe", vec![Value::str(event)]).await {
            self.shared.listeners.unsubscribe(id);
            return Err(error);
        }
        Ok(id)
    }

    /// Ends a subscription made with [`RemotePeer::subscribe`]; the last one of a pattern sends
    /// `unsubscribe`.
    pub async fn unsubscribe(&self, event: &str, id: SubscriptionId) -> Result<(), PeerError> {
        if self.shared.listeners.unsubscribe(id) && self.shared.listeners.pattern_count(event) == 0 {
            self.run_task("unsubscribe", vec![Value::str(event)]).await?;
        }
        Ok(())
    }

    /// Publishes `service` on the remote peer (Netron's `expose_service` task): the remote peer
    /// lists it under its bare name and forwards calls to it here.
    pub async fn expose_service(&self, service: Arc<Service>) -> Result<Definition, PeerError> {
        match self.run_task("expose_service", vec![service.meta()]).await? {
            Value::Definition(definition) => {
                let connection = self.connection();
                connection.peer.definitions_mut(|d| {
                    d.insert(definition.id.clone(), Served::Local { service, parent: None })
                });
                connection.lent.lock().unwrap_or_else(|p| p.into_inner()).push(definition.id.clone());
                Ok(*definition)
            }
            other => Err(PeerError::Protocol(format!("expose_service answered {other:?}"))),
        }
    }

    /// Withdraws a service published with [`RemotePeer::expose_service`].
    pub async fn unexpose_service(&self, name: &str) -> Result<(), PeerError> {
        let answer = self.run_task("unexpose_service", vec![Value::str(name)]).await?;
        if let Some(id) = answer.as_str() {
            let connection = self.connection();
            connection.peer.definitions_mut(|d| d.remove(id));
            connection.lent.lock().unwrap_or_else(|p| p.into_inner()).retain(|lent| lent != id);
        }
        Ok(())
    }

    /// Whether the connection is open now.
    pub fn is_connected(&self) -> bool {
        !self.connection().closed.is_cancelled()
    }

    /// Closes the connection (for good: no reconnection).
    pub fn disconnect(&self) {
        self.shared.closed_by_us.store(true, std::sync::atomic::Ordering::Relaxed);
        self.connection().close();
    }
}

/// A remote service: calls, property reads and writes.
#[derive(Clone, Debug)]
pub struct Interface {
    remote: RemotePeer,
    definition: Definition,
}

impl Interface {
    /// The service's definition.
    pub fn definition(&self) -> &Definition {
        &self.definition
    }

    /// Whether the connection it is reached over is open.
    pub fn is_connected(&self) -> bool {
        self.remote.is_connected()
    }

    /// Calls `method` with `args`.
    pub async fn call(&self, method: &str, args: Vec<Value>) -> Result<Value, PeerError> {
        let mut data = vec![Value::str(&self.definition.id), Value::str(method)];
        data.extend(args);
        self.remote.connection().request(PacketType::Call, Value::Array(data)).await
    }

    /// Calls `method` with typed arguments (a tuple for several) and a typed result.
    pub async fn call_as<A: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        args: A,
    ) -> Result<R, PeerError> {
        crate::convert::typed_call(method, args, |args| self.call(method, args)).await
    }

    /// Calls `method`, which returns a stream, and reads it: chunks in order until the end.
    pub async fn call_stream(&self, method: &str, args: Vec<Value>) -> Result<ReadableStream, PeerError> {
        let result = self.call(method, args).await?;
        self.call_stream_from(result)
            .map_err(|_| PeerError::Protocol(format!("{method} answered something other than a stream")))
    }

    /// The reader of the stream a call answered with (its `StreamReference`).
    pub fn call_stream_from(&self, result: Value) -> Result<ReadableStream, PeerError> {
        match result {
            Value::StreamReference(reference) => {
                let connection = self.remote.connection();
                Ok(connection.streams.reader(
                    reference.stream_id,
                    reference.live,
                    connection.peer.config.stream_timeout,
                ))
            }
            other => Err(PeerError::Protocol(format!("{other:?} is not a stream"))),
        }
    }

    /// Calls `method`, which returns another service, and returns its interface.
    pub async fn call_interface(&self, method: &str, args: Vec<Value>) -> Result<Interface, PeerError> {
        match self.call(method, args).await? {
            Value::Definition(definition) => {
                Ok(Interface { remote: self.remote.clone(), definition: *definition })
            }
            other => Err(PeerError::Protocol(format!("{method} answered {other:?}, not a service"))),
        }
    }

    /// Releases a service returned by a method (Netron's `unref_service`): the remote peer drops
    /// it and those returned from it. Exposed services stay.
    pub async fn release(self) -> Result<(), PeerError> {
        self.remote.run_task("unref_service", vec![Value::str(&self.definition.id)]).await.map(drop)
    }

    /// Reads property `name`.
    pub async fn get(&self, name: &str) -> Result<Value, PeerError> {
        let data = Value::Array(vec![Value::str(&self.definition.id), Value::str(name)]);
        self.remote.connection().request(PacketType::Get, data).await
    }

    /// Writes property `name`.
    pub async fn set(&self, name: &str, value: Value) -> Result<(), PeerError> {
        let data = Value::Array(vec![Value::str(&self.definition.id), Value::str(name), value]);
        self.remote.connection().request(PacketType::Set, data).await.map(drop)
    }
}

/// The payload of Netron's `service:expose` (with the definition) or `service:unexpose` (with its
/// id): `{name, version, qualifiedName, peerId[, remotePeerId], definition | defId}`.
fn service_event(
    definition: &Definition,
    qualified_name: &str,
    peer_id: &str,
    remote_peer_id: Option<&str>,
    exposed: bool,
) -> Value {
    let text = |key: &str| definition.meta.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut fields = vec![
        ("name".to_owned(), Value::Str(text("name"))),
        ("version".to_owned(), Value::Str(text("version"))),
        ("qualifiedName".to_owned(), Value::str(qualified_name)),
        ("peerId".to_owned(), Value::str(peer_id)),
    ];
    if let Some(remote) = remote_peer_id {
        fields.push(("remotePeerId".to_owned(), Value::str(remote)));
    }
    fields.push(if exposed {
        ("definition".to_owned(), Value::Definition(Box::new(definition.clone())))
    } else {
        ("defId".to_owned(), Value::str(&definition.id))
    });
    Value::Object(fields)
}

/// WebSocket limits from the peer's settings: no message or frame beyond the packet limit.
/// The WebSocket layer reads messages up to twice `max_frame`, so that a request over the limit
/// can still be answered with an error (see [`Limits::max_frame`]).
fn ws_config(config: &PeerConfig) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let read = config.limits.max_frame.saturating_mul(2);
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(read))
        .max_frame_size(Some(read))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reconnections back off as the rest of the project does: doubling from the first delay,
    /// spread by jitter, never over the maximum.
    #[test]
    fn reconnect_delays_double_with_jitter_up_to_the_maximum() {
        let config = PeerConfig { reconnect_delay: Duration::from_millis(100), ..PeerConfig::default() };
        let backoff = reconnect_backoff(&config);
        let firsts: std::collections::HashSet<Duration> = (0..64).map(|_| backoff.delay(1)).collect();
        assert!(firsts.len() > 1, "the first delay is jittered");
        for first in &firsts {
            assert!((80..=120).contains(&first.as_millis()), "{first:?} is within 20 % of 100 ms");
        }
        assert_eq!(backoff.nominal(4), Duration::from_millis(800));
        for _ in 0..64 {
            assert!(backoff.delay(30) <= MAX_RECONNECT_DELAY, "never over 30 s");
        }
    }
}
