//! The embedded discovery agent: everything a service process needs to be found and to find others,
//! over any [`Registry`].
//!
//! An [`Agent`] owns one node identity (id, address, services). [`Agent::start`] registers it (the
//! first heartbeat is awaited) and then heartbeats every `heartbeat_interval`; a failed heartbeat is
//! retried with exponential backoff and jitter and never stops the loop. [`Agent::stop`] stops the
//! loop, deregisters the node and closes the watch. In client mode the agent never registers but can
//! still discover and watch.
//!
//! While running, the agent follows the registry's watch stream to keep a [`DiscoveryCache`] current
//! and to call the handlers registered with [`Agent::on_event`]. After a gap in the stream (a store
//! outage, or a watcher that fell behind) the cache is rebuilt from a snapshot and handlers receive
//! the net changes, so no change goes unseen.
//!
//! Layout: `lib.rs` holds the agent and its lifecycle; `builder.rs` the builder (identity, services,
//! options, validated once); `tasks.rs` the background work (heartbeats with retries, the watch loop
//! feeding the cache and handlers); `cache.rs` the local cache; `handlers.rs` the event-handler
//! registry.

mod builder;
mod cache;
mod handlers;
mod tasks;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use muster_core::{
    Address, DeregisterReason, DiscoveryEvent, DiscoveryOptions, Error, ErrorKind, HeartbeatOutcome,
    Metadata, NodeId, NodeInfo, NodeStatus, NodeUpdate, Registry, Result, RetryPolicy, ServiceInfo,
    ServiceQuery, WatchStart,
};
use tokio::sync::{Mutex, OnceCell};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use builder::{AgentBuilder, detect_address};
pub use cache::DiscoveryCache;
pub use handlers::EventSubscription;
use handlers::Handlers;

/// The address [`detect_address`] gives when neither `HOST` nor `PORT` is set (Titan's default).
pub const DEFAULT_ADDRESS: &str = "localhost:3000";
/// Prefix of generated node ids.
pub const DEFAULT_NODE_ID_PREFIX: &str = "muster";

/// The embedded discovery agent. Cheap to clone; clones share one node.
///
/// Dropping every clone without calling [`Agent::stop`] stops the background tasks without
/// deregistering: the node then expires after its TTL, as if the process had crashed.
#[derive(Clone)]
pub struct Agent {
    /// Shared state; background tasks hold it too.
    inner: Arc<Inner>,
    /// Cancels the background tasks when the last handle is dropped.
    _guard: Arc<tokio_util::sync::DropGuard>,
}

/// Where the agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// Built, not started.
    Created,
    /// Heartbeating (unless in client mode) and watching.
    Running,
    /// Stopped; cannot start again.
    Stopped,
}

/// This agent's own node as it will be written on the next heartbeat.
#[derive(Debug, Clone)]
struct OwnNode {
    node_id: NodeId,
    address: Address,
    services: Vec<ServiceInfo>,
    metadata: Metadata,
    status: NodeStatus,
}

struct Inner {
    /// The store.
    registry: Arc<dyn Registry>,
    /// Validated options.
    options: DiscoveryOptions,
    /// Backoff for heartbeat and deregistration retries.
    retry: RetryPolicy,
    /// Backoff for reopening the watch: from 100 ms (or the heartbeat interval, if shorter) up to
    /// the heartbeat interval, so the cache is never behind by much more than one interval.
    reconnect: muster_core::Backoff,
    /// Whether handlers skip events about our own node.
    filter_own_events: bool,
    /// Our node; read by the synchronous getters, written under `write_lock`.
    own: RwLock<OwnNode>,
    /// Serializes every write of our node so concurrent updates cannot overwrite each other.
    write_lock: Mutex<()>,
    /// True after a successful heartbeat, false after deregistration.
    registered: AtomicBool,
    /// Start/stop state; held across `start` so two starts cannot race.
    lifecycle: Mutex<Lifecycle>,
    /// Completes once `stop` has finished; concurrent `stop` calls await the same run.
    stopped: OnceCell<()>,
    /// Stops the heartbeat loop and the watch task.
    cancel: CancellationToken,
    /// Owns the background tasks.
    tasks: TaskTracker,
    /// Event handlers.
    handlers: Arc<Handlers>,
    /// The watch-fed local view.
    cache: Arc<DiscoveryCache>,
}

impl Agent {
    /// Starts configuring an agent over `registry`, with the Titan defaults.
    pub fn builder(registry: impl Registry) -> AgentBuilder {
        Self::builder_shared(Arc::new(registry))
    }

    /// Like [`Agent::builder`] for a registry already shared behind an `Arc`.
    pub fn builder_shared(registry: Arc<dyn Registry>) -> AgentBuilder {
        AgentBuilder::new(registry)
    }

    // ----- lifecycle -------------------------------------------------------------------------

    /// Registers the node (awaiting the first heartbeat, with retries), then heartbeats every
    /// interval and follows the watch stream. In client mode only the watch runs.
    ///
    /// Starting a running agent does nothing. Fails with a `Conflict` error after [`Agent::stop`],
    /// and with the heartbeat's error when every attempt of the first heartbeat failed (the agent
    /// then stays unstarted and `start` may be called again).
    pub async fn start(&self) -> Result<()> {
        let inner = &self.inner;
        let mut lifecycle = inner.lifecycle.lock().await;
        match *lifecycle {
            Lifecycle::Running => return Ok(()),
            Lifecycle::Stopped => return Err(stopped_error()),
            Lifecycle::Created if inner.cancel.is_cancelled() => return Err(stopped_error()),
            Lifecycle::Created => {}
        }
        if !inner.options.client_mode {
            inner.heartbeat_now().await?;
        }
        // Open the watch before returning, so every change after `start` reaches the handlers.
        let stream = match inner.registry.watch(WatchStart::Snapshot).await {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::warn!(%error, "watch failed; retrying in the background");
                None
            }
        };
        inner.tasks.spawn(Arc::clone(inner).watch_loop(stream));
        if !inner.options.client_mode {
            inner.tasks.spawn(Arc::clone(inner).heartbeat_loop());
        }
        *lifecycle = Lifecycle::Running;
        let own = inner.own();
        tracing::info!(node_id = %own.node_id, address = %own.address, client_mode = inner.options.client_mode, "agent started");
        Ok(())
    }

    /// Stops the heartbeat loop, deregisters the node (with retries) and closes the watch.
    ///
    /// Idempotent and safe to call concurrently: every caller waits for the one shutdown. Returns
    /// the deregistration error if every attempt failed (the node then expires after its TTL).
    pub async fn stop(&self) -> Result<()> {
        let inner = &self.inner;
        let mut outcome = Ok(());
        let ran = inner
            .stopped
            .get_or_init(|| async {
                inner.cancel.cancel();
                inner.tasks.close();
                inner.tasks.wait().await;
                *inner.lifecycle.lock().await = Lifecycle::Stopped;
                let _write = inner.write_lock.lock().await;
                if inner.registered.swap(false, Ordering::SeqCst) && !inner.options.client_mode {
                    let node_id = inner.own().node_id;
                    outcome = inner.deregister_with_retries(&node_id).await.map(drop);
                }
                inner.handlers.clear();
                inner.cache.mark_unsynced();
                tracing::info!("agent stopped");
            })
            .await;
        let _: &() = ran;
        outcome
    }

    // ----- identity --------------------------------------------------------------------------

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.own().node_id
    }

    /// This node's address.
    pub fn address(&self) -> Address {
        self.inner.own().address
    }

    /// A copy of this node's services.
    pub fn services(&self) -> Vec<ServiceInfo> {
        self.inner.own().services
    }

    /// True after a successful heartbeat and until deregistration.
    pub fn is_registered(&self) -> bool {
        self.inner.registered.load(Ordering::SeqCst)
    }

    /// The validated options in force.
    pub fn options(&self) -> &DiscoveryOptions {
        &self.inner.options
    }

    // ----- own node --------------------------------------------------------------------------

    /// Sends a heartbeat now (with retries) and returns what it did. Fails in client mode.
    pub async fn heartbeat(&self) -> Result<HeartbeatOutcome> {
        self.inner.require_provider()?;
        self.inner.heartbeat_now().await
    }

    /// Replaces this agent's identity (id, address, services) and heartbeats at once, as Titan's
    /// `registerNode` does. If the id changes while the old one is registered, the old node is
    /// deregistered first. Fails in client mode.
    pub async fn register_node(
        &self,
        node_id: NodeId,
        address: Address,
        services: Vec<ServiceInfo>,
    ) -> Result<HeartbeatOutcome> {
        let inner = &self.inner;
        inner.require_provider()?;
        inner.require_not_stopped()?;
        muster_core::service::validate_services(&services)?;
        let _write = inner.write_lock.lock().await;
        let old_id = inner.own().node_id;
        if old_id != node_id && inner.registered.swap(false, Ordering::SeqCst) {
            inner.registry.deregister(&old_id, DeregisterReason::Graceful).await?;
        }
        inner.edit_own(|own| {
            own.node_id = node_id;
            own.address = address;
            own.services = services;
        });
        inner.heartbeat_locked().await
    }

    /// Adds a service to this node; a service with the same name and version already listed is left
    /// alone. Heartbeats at once when registered.
    pub async fn register_service(&self, service: ServiceInfo) -> Result<()> {
        service.validate()?;
        self.inner
            .change_own(|own| {
                if own.services.iter().any(|s| s.same_identity(&service)) {
                    return Ok(false);
                }
                own.services.push(service);
                muster_core::service::validate_services(&own.services)?;
                Ok(true)
            })
            .await
    }

    /// Removes every service named `name` from this node. Heartbeats at once when registered.
    pub async fn unregister_service(&self, name: &str) -> Result<()> {
        self.inner
            .change_own(|own| {
                let before = own.services.len();
                own.services.retain(|s| s.name != name);
                Ok(own.services.len() != before)
            })
            .await
    }

    /// Replaces this node's services. Heartbeats at once when registered.
    pub async fn update_services(&self, services: Vec<ServiceInfo>) -> Result<()> {
        muster_core::service::validate_services(&services)?;
        let services = muster_core::service::dedup_services(services);
        self.inner
            .change_own(|own| {
                let changed = own.services != services;
                own.services = services;
                Ok(changed)
            })
            .await
    }

    /// Changes this node's address. Heartbeats at once when registered.
    pub async fn update_address(&self, address: Address) -> Result<()> {
        self.inner
            .change_own(|own| {
                let changed = own.address != address;
                own.address = address;
                Ok(changed)
            })
            .await
    }

    /// Changes the status reported with heartbeats. Heartbeats at once when registered.
    pub async fn set_status(&self, status: NodeStatus) -> Result<()> {
        self.inner
            .change_own(|own| {
                let changed = own.status != status;
                own.status = status;
                Ok(changed)
            })
            .await
    }

    // ----- any node --------------------------------------------------------------------------

    /// Changes the address of any active node (this one included) without extending its life.
    pub async fn update_node_address(&self, node_id: &NodeId, address: Address) -> Result<NodeInfo> {
        if *node_id == self.node_id() {
            self.update_address(address).await?;
            return self.own_node_info().await;
        }
        self.inner.registry.update(node_id, NodeUpdate::new().address(address)).await
    }

    /// Replaces the services of any active node (this one included) without extending its life.
    pub async fn update_node_services(
        &self,
        node_id: &NodeId,
        services: Vec<ServiceInfo>,
    ) -> Result<NodeInfo> {
        if *node_id == self.node_id() {
            self.update_services(services).await?;
            return self.own_node_info().await;
        }
        self.inner.registry.update(node_id, NodeUpdate::new().services(services)?).await
    }

    /// Removes any node from the registry. Removing this agent's own node while it runs lasts only
    /// until the next heartbeat re-registers it; use [`Agent::stop`] to leave.
    pub async fn deregister_node(&self, node_id: &NodeId) -> Result<bool> {
        let removed = self.inner.registry.deregister(node_id, DeregisterReason::Graceful).await?;
        if *node_id == self.node_id() {
            self.inner.registered.store(false, Ordering::SeqCst);
        }
        Ok(removed)
    }

    // ----- discovery (from the store) ----------------------------------------------------------

    /// Every active node.
    pub async fn get_active_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.inner.registry.list_active().await
    }

    /// Every active node (Titan's alias of [`Agent::get_active_nodes`]).
    pub async fn find_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.get_active_nodes().await
    }

    /// Every stored node, including ones whose TTL ran out but were not removed yet.
    pub async fn get_all_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.inner.registry.list_all().await
    }

    /// One node, active or not.
    pub async fn get_node_info(&self, node_id: &NodeId) -> Result<Option<NodeInfo>> {
        self.inner.registry.get(node_id).await
    }

    /// True when the node is stored, active or not.
    pub async fn node_exists(&self, node_id: &NodeId) -> Result<bool> {
        self.inner.registry.exists(node_id).await
    }

    /// True when the node is active.
    pub async fn is_node_active(&self, node_id: &NodeId) -> Result<bool> {
        self.inner.registry.is_active(node_id).await
    }

    /// Active nodes providing `name`, optionally at exactly `version` (the Titan semantics: an
    /// unversioned service never matches a versioned query).
    pub async fn find_nodes_by_service(&self, name: &str, version: Option<&str>) -> Result<Vec<NodeInfo>> {
        self.inner.registry.find(&ServiceQuery::titan(name, version)?).await
    }

    /// Active nodes satisfying `query` (exact or semver), from the store.
    pub async fn find(&self, query: &ServiceQuery) -> Result<Vec<NodeInfo>> {
        self.inner.registry.find(query).await
    }

    // ----- discovery (from the cache) ----------------------------------------------------------

    /// The watch-fed local cache; see [`DiscoveryCache`] for its staleness bound.
    pub fn cache(&self) -> &DiscoveryCache {
        &self.inner.cache
    }

    /// Active nodes satisfying `query`: from the cache when it is synced, else from the store.
    pub async fn resolve(&self, query: &ServiceQuery) -> Result<Vec<Arc<NodeInfo>>> {
        match self.inner.cache.find(query) {
            Ok(nodes) => Ok(nodes),
            Err(_) => Ok(self.inner.registry.find(query).await?.into_iter().map(Arc::new).collect()),
        }
    }

    // ----- events ------------------------------------------------------------------------------

    /// Calls `handler` for every change seen on the watch stream while the agent runs (events about
    /// this node are skipped unless `filter_own_events(false)` was set). Handlers run on the watch
    /// task, in revision order; they must return quickly.
    pub fn on_event(&self, handler: impl Fn(&DiscoveryEvent) + Send + Sync + 'static) -> EventSubscription {
        self.inner.handlers.add(Arc::new(handler))
    }

    /// Removes a handler (same as [`EventSubscription::unsubscribe`]).
    pub fn off_event(&self, subscription: EventSubscription) {
        subscription.unsubscribe();
    }

    async fn own_node_info(&self) -> Result<NodeInfo> {
        let id = self.node_id();
        self.inner.registry.get(&id).await?.ok_or_else(|| Error::node_not_found(id.as_str()))
    }
}

fn stopped_error() -> Error {
    Error::new(ErrorKind::Conflict, "the agent was stopped; build a new one to start again")
}

impl Inner {
    fn own(&self) -> OwnNode {
        self.own.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn edit_own(&self, edit: impl FnOnce(&mut OwnNode)) {
        edit(&mut self.own.write().unwrap_or_else(|p| p.into_inner()));
    }

    fn require_provider(&self) -> Result<()> {
        if self.options.client_mode {
            return Err(Error::new(ErrorKind::Conflict, "the agent is in client mode and never registers"));
        }
        Ok(())
    }

    fn require_not_stopped(&self) -> Result<()> {
        if self.stopped.initialized() || self.cancel.is_cancelled() {
            return Err(stopped_error());
        }
        Ok(())
    }

    /// Applies `edit` to our node under the write lock, validating the result first; when it
    /// changed something and the node is registered, heartbeats at once.
    async fn change_own(&self, edit: impl FnOnce(&mut OwnNode) -> Result<bool>) -> Result<()> {
        let _write = self.write_lock.lock().await;
        let mut draft = self.own();
        if !edit(&mut draft)? {
            return Ok(());
        }
        self.edit_own(|own| *own = draft);
        if self.registered.load(Ordering::SeqCst) && !self.options.client_mode && !self.cancel.is_cancelled()
        {
            self.heartbeat_locked().await?;
        }
        Ok(())
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
