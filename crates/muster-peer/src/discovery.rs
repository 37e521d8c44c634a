//! Netron peers in the fleet (seed 004's discovery): a listening peer registers itself — its
//! address and the `name@version` of every service it exposes — in a Muster registry (any
//! [`Registry`]: Redis with Netron's keys, the embedded store, ...) through the embedded agent, keeps
//! it current as services are exposed and concealed, and deregisters on stop; a crashed peer
//! expires by TTL. Any peer can then find services, follow the fleet (`node:joined`, `node:left`,
//! `service:available`, `service:unavailable` on its bus), and call a service by name
//! ([`Peer::service`]): instances from the discovery cache, ordered by `muster-balance`'s selector,
//! one connection per remote peer, failing over with its circuit breakers.

use crate::sync::Locked as _;
use std::collections::HashMap;
use std::sync::Arc;

use muster_agent::Agent;
use muster_balance::{BreakerConfig, Endpoint, Failover, FailoverError, Retryable};
use muster_core::{
    Address, DiscoveryEvent, DiscoveryOptions, EventKind, NodeId, NodeInfo, NodeStatus, Registry,
    ServiceInfo, ServiceQuery,
};

use crate::events::PeerEvent;
use crate::peer::{Interface, Peer, PeerError, RemotePeer};
use crate::wire::Value;

impl Retryable for PeerError {
    /// Another instance may answer: the connection failed or closed, the call timed out, or the
    /// peer does not expose the service (any more). An error the service answered is final.
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Closed | Self::Timeout | Self::Connect(_) | Self::UnknownService(_))
    }
}

/// One instance of a service in the fleet: a peer (its node) offering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The peer's node id (its peer id).
    pub id: String,
    /// The service's name.
    pub service: String,
    /// The service's version, when it has one.
    pub version: Option<String>,
    /// Where the peer listens (`ws://` + this).
    pub address: Address,
    /// The service's weight for weighted selection.
    pub weight: Option<u32>,
    /// The node's status: only `UP` instances are called.
    pub status: NodeStatus,
}

impl Instance {
    /// The instances of `node` whose service satisfies `query`.
    fn of<'a>(node: &'a NodeInfo, query: &'a ServiceQuery) -> impl Iterator<Item = Instance> + 'a {
        node.services.iter().filter(|s| query.matches(s)).map(|service| Instance {
            id: node.node_id.to_string(),
            service: service.name.clone(),
            version: service.version.clone(),
            address: node.address.clone(),
            weight: service.weight,
            status: node.status,
        })
    }

    /// The peer's WebSocket URL.
    fn url(&self) -> String {
        format!("ws://{}:{}", self.address.host(), self.address.port())
    }
}

impl Endpoint for Instance {
    fn id(&self) -> &str {
        &self.id
    }

    fn service(&self) -> &str {
        &self.service
    }

    fn weight(&self) -> Option<u32> {
        self.weight
    }

    fn is_up(&self) -> bool {
        self.status == NodeStatus::Up
    }
}

/// One instance's connection, opened once by whichever call needs it first (the others wait for
/// that attempt); a failed attempt leaves it empty for the next call, a closed connection is
/// replaced.
type Slot = Arc<tokio::sync::OnceCell<RemotePeer>>;

/// The discovery part of a peer.
pub(crate) struct Discovery {
    agent: Agent,
    /// Bumped by every change the agent sees: cached instance lists older than it are read again.
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// Interfaces of the instances called by name, by query and node id (looked up without
    /// building a key).
    interfaces: std::sync::Mutex<HashMap<String, HashMap<String, Interface>>>,
    /// Connections to other peers, by node id (one each). The map's lock is held only to find or
    /// add an instance's slot; a connection is opened in its own slot, so an instance that hangs
    /// holds up only the calls that wait for that instance.
    connections: std::sync::Mutex<HashMap<String, Slot>>,
    /// Selector and breakers of calls by name.
    failover: Arc<Failover>,
}

fn service_infos(peer: &Peer) -> Vec<ServiceInfo> {
    peer.service_names()
        .iter()
        .filter_map(|key| match key.split_once('@') {
            Some((name, version)) => ServiceInfo::new(name, Some(version)).ok(),
            None => ServiceInfo::new(key.as_str(), None::<&str>).ok(),
        })
        .collect()
}

impl Peer {
    /// Joins the fleet of `registry`. With `address` (the host:port other peers reach this one at,
    /// usually its listen address) the peer registers as a node (id: the peer's id) providing its
    /// exposed services and follows its exposures; without, it only discovers (client mode).
    pub async fn enable_discovery(
        &self,
        registry: Arc<dyn Registry>,
        mut options: DiscoveryOptions,
        address: Option<Address>,
    ) -> Result<(), PeerError> {
        options.client_mode = address.is_none();
        let node_id = NodeId::new(self.id())?;
        // Events about this node too: its own exposures change what its named services resolve.
        let mut builder =
            Agent::builder_shared(registry).options(options).node_id(node_id).filter_own_events(false);
        builder = builder
            .address(address.unwrap_or_else(|| Address::parse("127.0.0.1:1").expect("a valid address")));
        for service in service_infos(self) {
            builder = builder.service(service);
        }
        let agent = builder.build()?;
        // Fleet events on the bus, as seed 004 names them.
        let bus_peer = self.clone();
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let changed = Arc::clone(&generation);
        // Its own node's changes too: a listener learns when this peer's exposures reach the
        // fleet (`service:available` once the registry has them), as other peers learn it.
        agent.on_event(move |event| {
            changed.fetch_add(1, std::sync::atomic::Ordering::Release);
            for (name, payload) in fleet_events(event) {
                bus_peer.announce_local(name, payload);
            }
        });
        agent.start().await?;
        let discovery = Arc::new(Discovery {
            agent,
            generation,
            interfaces: std::sync::Mutex::new(HashMap::new()),
            connections: std::sync::Mutex::new(HashMap::new()),
            failover: Arc::new(Failover::new(
                Box::new(muster_balance::select::RoundRobin::default()),
                BreakerConfig::default(),
            )),
        });
        self.set_membership(Arc::clone(&discovery) as Arc<dyn crate::peer::Membership>);
        // Registration follows exposure.
        let mut events = self.events();
        let peer = self.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(PeerEvent::ServiceExposed { .. } | PeerEvent::ServiceConcealed { .. }) => {
                        if let Err(error) = discovery.agent.update_services(service_infos(&peer)).await {
                            tracing::warn!(%error, "updating the registered services failed");
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(())
    }

    fn discovery_or_err(&self) -> Result<Arc<Discovery>, PeerError> {
        self.discovery().ok_or(PeerError::DiscoveryOff)
    }

    /// Active nodes providing a service matching `query` (`name`, `name@1.2.0`, `name@^1`).
    pub async fn find_service(&self, query: &str) -> Result<Vec<Arc<NodeInfo>>, PeerError> {
        let query = ServiceQuery::parse(query).map_err(PeerError::from)?;
        self.discovery_or_err()?.agent.resolve(&query).await.map_err(PeerError::from)
    }

    /// Active nodes providing any version of the service `name`.
    pub async fn find_all_services(&self, name: &str) -> Result<Vec<Arc<NodeInfo>>, PeerError> {
        self.find_service(name).await
    }

    /// Every active node of the fleet.
    pub async fn get_active_nodes(&self) -> Result<Vec<NodeInfo>, PeerError> {
        self.discovery_or_err()?.agent.get_active_nodes().await.map_err(PeerError::from)
    }

    /// The service `query` by name anywhere in the fleet: each call goes to an instance chosen
    /// round-robin, over one connection per remote peer, failing over to the next instance when
    /// one cannot answer (the peer's circuit breakers, shared by its named services).
    pub fn service(&self, query: &str) -> Result<NamedService, PeerError> {
        let discovery = self.discovery_or_err()?;
        let failover = Arc::clone(&discovery.failover);
        self.named(query, discovery, failover)
    }

    /// [`Peer::service`] with another of `muster-balance`'s selectors (random, smooth weighted,
    /// least outstanding) and breakers of its own.
    pub fn service_with(
        &self,
        query: &str,
        selector: Box<dyn muster_balance::select::Selector>,
        breakers: BreakerConfig,
    ) -> Result<NamedService, PeerError> {
        self.named(query, self.discovery_or_err()?, Arc::new(Failover::new(selector, breakers)))
    }

    fn named(
        &self,
        query: &str,
        discovery: Arc<Discovery>,
        failover: Arc<Failover>,
    ) -> Result<NamedService, PeerError> {
        let parsed = ServiceQuery::parse(query).map_err(PeerError::from)?;
        Ok(NamedService {
            peer: self.clone(),
            discovery,
            failover,
            named: Arc::new(Named {
                query: parsed,
                text: query.to_owned(),
                cached: arc_swap::ArcSwap::from_pointee((0, Vec::new())),
            }),
        })
    }

    /// The fleet this peer joined, when it enabled discovery.
    fn discovery(&self) -> Option<Arc<Discovery>> {
        self.membership()?.into_any().downcast::<Discovery>().ok()
    }
}

impl crate::peer::Membership for Discovery {
    /// Deregisters (when registered) and closes the connections made by name.
    fn leave(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.agent.stop().await {
                tracing::warn!(%error, "deregistering failed; the node expires by its TTL");
            }
            let slots: Vec<Slot> = self.connections.locked().drain().map(|(_, slot)| slot).collect();
            for remote in slots.iter().filter_map(|slot| slot.get()) {
                remote.disconnect();
            }
        })
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// Seed 004's fleet events for one registry change.
fn fleet_events(event: &DiscoveryEvent) -> Vec<(&'static str, Value)> {
    let node = &event.node;
    let services = |list: &[ServiceInfo]| -> Vec<Value> {
        list.iter()
            .map(|s| {
                Value::str(match &s.version {
                    Some(v) => format!("{}@{v}", s.name),
                    None => s.name.clone(),
                })
            })
            .collect()
    };
    let node_payload = || {
        Value::object([
            ("nodeId", Value::str(node.node_id.as_str())),
            ("address", Value::str(node.address.as_str())),
            ("services", Value::Array(services(&node.services))),
        ])
    };
    let service_payload = |name: Value| {
        Value::object([
            ("service", name),
            ("nodeId", Value::str(node.node_id.as_str())),
            ("address", Value::str(node.address.as_str())),
        ])
    };
    let mut out = Vec::new();
    match event.kind {
        EventKind::Registered => {
            out.push(("node:joined", node_payload()));
            out.extend(
                services(&node.services).into_iter().map(|s| ("service:available", service_payload(s))),
            );
        }
        EventKind::Deregistered => {
            out.push(("node:left", node_payload()));
            out.extend(
                services(&node.services).into_iter().map(|s| ("service:unavailable", service_payload(s))),
            );
        }
        EventKind::Updated => {
            let now = services(&node.services);
            let before = event.previous_services.as_deref().map(services).unwrap_or_else(|| now.clone());
            out.extend(
                now.iter()
                    .filter(|s| !before.contains(s))
                    .map(|s| ("service:available", service_payload(s.clone()))),
            );
            out.extend(
                before
                    .iter()
                    .filter(|s| !now.contains(s))
                    .map(|s| ("service:unavailable", service_payload(s.clone()))),
            );
        }
    }
    out
}

/// A service called by name across the fleet (see [`Peer::service`]).
#[derive(Clone)]
pub struct NamedService {
    peer: Peer,
    discovery: Arc<Discovery>,
    failover: Arc<Failover>,
    /// Shared: a named service is cloned into every task that calls through it, and its query
    /// (a name and a version range) and text would otherwise be copied each time.
    named: Arc<Named>,
}

/// What a [`NamedService`] and its clones share.
struct Named {
    query: ServiceQuery,
    text: String,
    /// The instances as of a discovery generation (read again after any change).
    cached: arc_swap::ArcSwap<(u64, Vec<Listed>)>,
}

/// An instance of a named service's list, with the interface last called on it: a call finds it
/// here, with no lock or lookup (the peer-wide map behind [`NamedService::interface`] is the slow
/// path, for a new list or a closed connection).
struct Listed {
    instance: Instance,
    interface: arc_swap::ArcSwapOption<Interface>,
}

impl Endpoint for Listed {
    fn id(&self) -> &str {
        self.instance.id()
    }

    fn service(&self) -> &str {
        self.instance.service()
    }

    fn weight(&self) -> Option<u32> {
        self.instance.weight()
    }

    fn is_up(&self) -> bool {
        self.instance.is_up()
    }
}

impl std::fmt::Debug for NamedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedService").field("query", &self.named.text).finish_non_exhaustive()
    }
}

impl NamedService {
    /// The instances that may answer now.
    pub async fn instances(&self) -> Result<Vec<Instance>, PeerError> {
        Ok(self.current().await?.1.iter().map(|listed| listed.instance.clone()).collect())
    }

    /// The instance list, read again only when discovery saw a change since.
    async fn current(&self) -> Result<Arc<(u64, Vec<Listed>)>, PeerError> {
        let generation = self.discovery.generation.load(std::sync::atomic::Ordering::Acquire);
        let cached = self.named.cached.load_full();
        if cached.0 == generation && !cached.1.is_empty() {
            return Ok(cached);
        }
        let nodes = self.discovery.agent.resolve(&self.named.query).await.map_err(PeerError::from)?;
        let instances: Vec<Listed> = nodes
            .iter()
            .flat_map(|node| Instance::of(node, &self.named.query))
            .map(|instance| Listed { instance, interface: arc_swap::ArcSwapOption::empty() })
            .collect();
        let fresh = Arc::new((generation, instances));
        self.named.cached.store(Arc::clone(&fresh));
        Ok(fresh)
    }

    /// The connection to the peer behind `instance` (opened once, reused while open).
    async fn remote(&self, instance: &Instance) -> Result<RemotePeer, PeerError> {
        let slot = {
            let mut connections = self.discovery.connections.locked();
            let slot = connections.entry(instance.id.clone()).or_default();
            if slot.get().is_some_and(|remote| !remote.is_connected()) {
                *slot = Slot::default();
            }
            Arc::clone(slot)
        };
        let url = instance.url();
        let remote = slot.get_or_try_init(|| self.peer.connect(&url)).await?;
        Ok(remote.clone())
    }

    /// The interface of the service at `instance`, kept while its connection is open.
    async fn interface(&self, instance: &Instance) -> Result<Interface, PeerError> {
        let known = self
            .discovery
            .interfaces
            .locked()
            .get(&self.named.text)
            .and_then(|of_query| of_query.get(&instance.id))
            .cloned();
        if let Some(interface) = known.filter(Interface::is_connected) {
            return Ok(interface);
        }
        let interface = self.remote(instance).await?.query_interface(&self.named.text)?;
        {
            let mut interfaces = self.discovery.interfaces.locked();
            let of_query = interfaces.entry(self.named.text.clone()).or_default();
            of_query.insert(instance.id.clone(), interface.clone());
        }
        Ok(interface)
    }

    /// The interface of `listed`: the one last called on it while its connection is open.
    async fn listed_interface(&self, listed: &Listed) -> Result<Interface, PeerError> {
        if let Some(interface) = &*listed.interface.load()
            && interface.is_connected()
        {
            return Ok(Interface::clone(interface));
        }
        let interface = self.interface(&listed.instance).await?;
        listed.interface.store(Some(Arc::new(interface.clone())));
        Ok(interface)
    }

    /// Runs `request` on the interface of one instance after another, in the selector's order,
    /// until one answers (see [`muster_balance::failover`]).
    async fn on_an_instance<T, F, Fut>(&self, request: F) -> Result<T, PeerError>
    where
        F: Fn(Interface) -> Fut,
        Fut: std::future::Future<Output = Result<T, PeerError>>,
    {
        let current = self.current().await?;
        let request = &request;
        let outcome = self
            .failover
            .call(self.named.query.name(), &current.1, |instance| async move {
                request(self.listed_interface(instance).await?).await
            })
            .await;
        outcome.map_err(failover_error)
    }

    /// Calls `method` on an instance, failing over to the next when one cannot answer.
    pub async fn call(&self, method: &str, args: Vec<Value>) -> Result<Value, PeerError> {
        self.on_an_instance(|interface| {
            let args = args.clone();
            async move { interface.call(method, args).await }
        })
        .await
    }

    /// Calls `method`, which returns a stream, on an instance (failing over like
    /// [`NamedService::call`] until one answers) and reads the stream from it.
    pub async fn call_stream(
        &self,
        method: &str,
        args: Vec<Value>,
    ) -> Result<crate::ReadableStream, PeerError> {
        self.on_an_instance(|interface| {
            let args = args.clone();
            async move { interface.call_stream(method, args).await }
        })
        .await
    }

    /// Calls `method`, which returns a service, on an instance (failing over like
    /// [`NamedService::call`] until one answers): the sub-interface lives on the instance that
    /// answered, over its connection, until released.
    pub async fn call_interface(&self, method: &str, args: Vec<Value>) -> Result<Interface, PeerError> {
        self.on_an_instance(|interface| {
            let args = args.clone();
            async move { interface.call_interface(method, args).await }
        })
        .await
    }

    /// [`NamedService::call`] with typed arguments and result.
    pub async fn call_as<A: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        args: A,
    ) -> Result<R, PeerError> {
        crate::convert::typed_call(method, args, |args| self.call(method, args)).await
    }

    /// The circuit state of one instance (by node id).
    pub fn circuit_state(&self, instance_id: &str) -> muster_balance::CircuitState {
        self.failover.circuit_state(self.named.query.name(), instance_id)
    }
}

/// A failover's outcome as the peer's error.
fn failover_error(error: FailoverError<PeerError>) -> PeerError {
    match error {
        FailoverError::Failed(error) => error,
        FailoverError::Exhausted { last, .. } => last,
        FailoverError::NoInstances(service) | FailoverError::AllCircuitsOpen(service) => {
            PeerError::UnknownService(service)
        }
        FailoverError::Registry(never) => match never {},
    }
}
