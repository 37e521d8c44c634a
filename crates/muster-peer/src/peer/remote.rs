//! The caller's side of a connection: `RemotePeer` (its services, tasks, events, exposures) and
//! `Interface` (one remote service).

use super::*;
use crate::sync::ReadWrite as _;

/// What a [`RemotePeer`]'s clones share: the current connection (replaced on reconnection), the
/// remote peer's services, and the listeners of its events.
pub(super) struct Remote {
    pub(super) current: arc_swap::ArcSwap<Connection>,
    pub(super) services: RwLock<HashMap<String, Definition>>,
    pub(super) listeners: Arc<EventBus>,
    /// [`RemotePeer::disconnect`] was called: no reconnection.
    pub(super) closed_by_us: std::sync::atomic::AtomicBool,
}

/// A connection to a remote peer. Cheap to clone.
#[derive(Clone)]
pub struct RemotePeer {
    pub(super) shared: Arc<Remote>,
}

impl std::fmt::Debug for RemotePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePeer").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl RemotePeer {
    pub(super) fn connection(&self) -> Arc<Connection> {
        self.shared.current.load_full()
    }

    /// After a connection opens: `abilities` (the remote peer's services), following its service
    /// announcements when it allows it, and — after a reconnection — the subscriptions again.
    pub(super) async fn initialize(&self, first: bool) -> Result<(), PeerError> {
        self.initialize_on(self.connection(), first).await
    }

    /// Reads the services of the peer behind `connection` (the `abilities` task), then makes it
    /// the current connection — so that nobody sees a new connection with the old peer's
    /// services — and renews the subscriptions (`first`: starts following its exposures).
    pub(super) async fn initialize_on(
        &self,
        connection: Arc<Connection>,
        first: bool,
    ) -> Result<(), PeerError> {
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
        {
            let mut known = self.shared.services.writing();
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
                    ) {
                        shared.services.writing().insert(name.to_owned(), (**definition).clone());
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
                    ) {
                        shared.services.writing().remove(name);
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
        let mut names: Vec<String> = self.shared.services.reading().keys().cloned().collect();
        names.sort();
        names
    }

    /// The service matching `query`: `name@1.2.3` exactly; `name` — the unversioned one, else the
    /// highest version (as Netron); or `name@^1` — the highest version meeting the requirement.
    pub fn query_interface(&self, query: &str) -> Result<Interface, PeerError> {
        let services = self.shared.services.reading();
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

    pub(super) fn interface(&self, definition: Definition) -> Interface {
        Interface { remote: self.clone(), definition: Arc::new(definition) }
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
                connection.lent.locked().push(definition.id.clone());
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
            connection.lent.locked().retain(|lent| lent != id);
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
    /// Shared: an interface is cloned into every task that calls through it, and a definition
    /// (the whole `meta` tree) is far larger than a pointer.
    definition: Arc<Definition>,
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
        let mut data = Vec::with_capacity(2 + args.len());
        data.extend([Value::str(&self.definition.id), Value::str(method)]);
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
                Ok(Interface { remote: self.remote.clone(), definition: Arc::from(definition) })
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
