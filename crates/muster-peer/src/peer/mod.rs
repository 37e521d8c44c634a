//! Peers: a [`Peer`] exposes services and listens ([`Peer::listen`]) or connects
//! ([`Peer::connect`]); either way each connection is a [`RemotePeer`] whose services are reached
//! through [`Interface`]s.
//!
//! Per connection one reader task decodes frames and answers requests (each in its own task, so a
//! slow method does not hold the others), and one writer task sends frames in order. Requests wait
//! for the response with the same id up to the request timeout.

//!
//! The module's files, by responsibility: `config.rs` (settings), `error.rs` (`PeerError`),
//! this file (the `Peer` API and the state its connections share), `connect.rs` (opening,
//! accepting and reopening connections), `connection.rs` (one connection's socket: reader, writer,
//! requests and their responses), `dispatch.rs` (answering a request: middleware, services,
//! proxies, returned sub-services), `tasks.rs` (Netron's core tasks and the added ones),
//! `remote.rs` (`RemotePeer` and `Interface`, the caller's side).

mod config;
mod connect;
mod connection;
mod dispatch;
mod error;
mod remote;
mod tasks;

pub use config::{PeerConfig, TaskOverwrite};
pub use error::PeerError;
pub use remote::{Interface, RemotePeer};

use crate::sync::{Locked as _, ReadWrite as _};
use connect::{accept, open, reconnect, reconnect_backoff};
use connection::Connection;
use remote::Remote;
use tasks::CORE_TASKS;

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
use crate::wire::{Definition, JsError, Packet, PacketIds, PacketType, Value};

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

/// What every clone of a [`Peer`] and every connection task shares. The locks are std's, each
/// guarding one map and never held across an `.await` (a guard is taken, the map read or changed,
/// the guard dropped before any I/O), so a slow remote peer never holds up another's calls; the
/// maps are split so that the hot path — a call looking up its definition — contends only with
/// exposures and concealments, not with connections coming and going.
struct Inner {
    /// The peer's id, sent in every handshake.
    id: String,
    config: PeerConfig,
    /// Request ids this peer writes (process-wide, so ids from two peers in one process differ).
    ids: PacketIds,
    /// Exposed services by qualified name. An `RwLock`: read for the service names (a peer's
    /// registration, `has_service`) and remote unexposures, written only when a service is exposed
    /// or concealed.
    exposed: RwLock<HashMap<String, Exposed>>,
    /// Every definition this peer serves, by id (changed through [`Inner::definitions_mut`]). An
    /// `RwLock`: read by every incoming call, written when services come and go.
    definitions: RwLock<HashMap<String, Served>>,
    /// Open connections, by remote peer id. A `Mutex`: every use changes or copies the map
    /// (connect, disconnect, stop), none is a read worth sharing.
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
    /// The fleet this peer belongs to, once discovery is enabled (held by its trait: this module
    /// does not depend on discovery's). A `Mutex` around an `Option`: set once, taken at `stop`.
    membership: Mutex<Option<Arc<dyn Membership>>>,
}

/// The fleet a peer joined (`discovery.rs` implements it). The peer holds it by this trait, so
/// the dependency runs one way: discovery uses the peer, the peer knows only that it may belong to
/// a fleet it must leave when it stops.
pub(crate) trait Membership: Send + Sync + 'static {
    /// Leaves the fleet: deregisters and closes the connections made by name.
    fn leave(&self) -> futures::future::BoxFuture<'_, ()>;

    /// Itself, for its owner to downcast.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
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
        let mut definitions = self.definitions.writing();
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
            membership: Mutex::new(None),
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

    /// Joins this peer to a fleet (discovery); [`Peer::stop`] leaves it.
    pub(crate) fn set_membership(&self, membership: Arc<dyn Membership>) {
        *self.inner.membership.locked() = Some(membership);
    }

    /// The fleet this peer joined, if any.
    pub(crate) fn membership(&self) -> Option<Arc<dyn Membership>> {
        self.inner.membership.locked().clone()
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
        {
            let mut all = self.inner.middleware.writing();
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
            return Err(PeerError::CoreTask(name.to_owned()));
        }
        let mut tasks = self.inner.tasks.writing();
        if tasks.contains_key(name) {
            match overwrite {
                TaskOverwrite::Skip => return Ok(false),
                TaskOverwrite::Error => return Err(PeerError::TaskExists(name.to_owned())),
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
        let mut exposed = self.inner.exposed.writing();
        if exposed.contains_key(&key) {
            return Err(PeerError::ServiceExists(key));
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
        let mut exposed = self.inner.exposed.writing();
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
        let mut names: Vec<String> = self.inner.exposed.reading().keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether `qualified_name` is exposed.
    pub fn has_service(&self, qualified_name: &str) -> bool {
        self.inner.exposed.reading().contains_key(qualified_name)
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
        let reconnecting = self.inner.config.max_reconnect_attempts != Some(0);
        let backoff = if reconnecting { Some(reconnect_backoff(&self.inner.config)?) } else { None };
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
        if let Some(backoff) = backoff {
            tokio::spawn(reconnect(
                Arc::downgrade(&self.inner),
                Arc::downgrade(&remote.shared),
                url.to_owned(),
                backoff,
            ));
        }
        Ok(remote)
    }

    /// Stops listening and closes every connection; calls waiting on them fail with
    /// [`PeerError::Closed`].
    pub async fn stop(&self) {
        if let Some(membership) = self.membership() {
            membership.leave().await;
        }
        self.inner.listening.store(false, std::sync::atomic::Ordering::Relaxed);
        self.inner.stopped.cancel();
        let connections: Vec<Arc<Connection>> = self.inner.connections.locked().values().cloned().collect();
        for connection in connections {
            connection.close();
        }
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
