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
use muster_balance::{BreakerConfig, Endpoint, Failover, Retryable};
use muster_core::{
    Address, DiscoveryEvent, DiscoveryOptions, EventKind, NodeId, NodeInfo, NodeStatus, Registry,
    ServiceInfo, ServiceQuery,
};

use crate::events::PeerEvent;
use crate::peer::{Interface, Peer, PeerError, RemotePeer};
use crate::wire::Value;

mod named;
pub use named::NamedService;

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

impl Discovery {
    /// A node left the fleet: the connection opened to it for calls by name is closed (kept, it
    /// would be opened again and again once the peer's process is gone) and its interfaces are
    /// forgotten. Named services read their instance lists again after the change.
    fn forget(&self, node_id: &str) {
        let slot = self.connections.locked().remove(node_id);
        if let Some(remote) = slot.as_deref().and_then(tokio::sync::OnceCell::get) {
            remote.disconnect();
        }
        for of_query in self.interfaces.locked().values_mut() {
            of_query.remove(node_id);
        }
    }
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
        // Set once the discovery below exists (the handler is registered before it is built).
        let this: Arc<std::sync::OnceLock<std::sync::Weak<Discovery>>> = Arc::default();
        let of_handler = Arc::clone(&this);
        // Its own node's changes too: a listener learns when this peer's exposures reach the
        // fleet (`service:available` once the registry has them), as other peers learn it.
        agent.on_event(move |event| {
            changed.fetch_add(1, std::sync::atomic::Ordering::Release);
            if event.kind == EventKind::Deregistered
                && let Some(discovery) = of_handler.get().and_then(std::sync::Weak::upgrade)
            {
                discovery.forget(event.node.node_id.as_str());
            }
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
        let _ = this.set(Arc::downgrade(&discovery));
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
        Ok(NamedService::new(self.clone(), parsed, query, discovery, failover))
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
