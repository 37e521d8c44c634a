//! A service called by name across the fleet ([`Peer::service`]): the instances discovery lists,
//! kept until discovery sees a change, the interface last called on each, and calls that fail over
//! from one instance to the next.

use std::sync::Arc;

use muster_balance::{Endpoint, Failover, FailoverError};
use muster_core::ServiceQuery;

use super::{Discovery, Instance, Slot};
use crate::peer::{Interface, Peer, PeerError, RemotePeer};
use crate::sync::Locked as _;
use crate::wire::Value;

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
    pub(super) fn new(
        peer: Peer,
        query: ServiceQuery,
        text: &str,
        discovery: Arc<Discovery>,
        failover: Arc<Failover>,
    ) -> Self {
        let named =
            Named { query, text: text.to_owned(), cached: arc_swap::ArcSwap::from_pointee((0, Vec::new())) };
        Self { peer, discovery, failover, named: Arc::new(named) }
    }

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
