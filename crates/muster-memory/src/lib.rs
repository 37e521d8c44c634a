//! The embedded in-memory registry, Muster's default store.
//!
//! One [`MemoryRegistry`] holds every node in a `HashMap` behind one read-write lock (readers —
//! finds, lists, watchers — do not wait for each other), in a compact form (`compact.rs`: the id
//! only as the key, interned service names and versions), with three indexes kept in step with it:
//!
//! - a deadline index (`BTreeSet<(Instant, NodeId)>`), read by one sweeper task that sleeps until
//!   the earliest deadline (or until a heartbeat brings an earlier one), removes what has expired and
//!   publishes a `Deregistered` event with reason `expired` — no per-node timers, no full scans;
//! - a service index (service name → node ids), so find-by-service reads only the nodes that
//!   provide that service;
//! - an event history (a ring of the last `event_history` events), from which every watcher reads
//!   at its own pace. A watcher that falls behind the ring is told to resync; it never slows writers.
//!
//! Time comes from tokio's clock, so everything here runs on paused time in tests.
//!
//! With [`MemoryRegistry::open`] the registry persists to a directory (`persist.rs`): a snapshot of
//! the nodes and the revision, written atomically (temporary file, fsync, rename) at most once per
//! `snapshot_interval` after a change, and restored on start with one full TTL of grace.
//!
//! Revisions increase across restarts: the first event of a registry that starts empty, or from a
//! snapshot not written at a clean shutdown (it may lag the events watchers saw), takes the wall
//! clock in microseconds as its revision, so watchers of an earlier instance resync instead of
//! resuming on a different history; after a clean shutdown revisions continue exactly.

mod compact;
mod expiry;
mod persist;
mod state;
mod tokens;
mod watching;

pub use expiry::SelfPreservation;
pub use persist::PersistOptions;
pub use tokens::LocalTokenStore;

use crate::state::{Entry, State};

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use muster_core::{
    Change, DeregisterReason, DiscoveryEvent, Error, EventKind, EventLog, HeartbeatOutcome, NodeId, NodeInfo,
    NodeUpdate, Registration, Registry, Result, Revision, ServiceInfo, ServiceQuery, WatchStart, WatchStream,
    time::now_ms,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::compact::StoredNode;

/// Settings of the in-memory registry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryOptions {
    /// How many recent events are kept for watchers to resume from (at least 1).
    pub event_history: usize,
    /// Pause expiry when too many nodes would expire at once (off by default).
    pub self_preservation: Option<SelfPreservation>,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self { event_history: 10_000, self_preservation: None }
    }
}

/// The in-memory registry. Cheap to clone; all clones share one state. The sweeper task stops when
/// the last clone is dropped, and open watch streams then end.
#[derive(Clone)]
pub struct MemoryRegistry {
    /// Shared state plus the guard whose drop shuts the sweeper down.
    inner: Arc<DropGuard>,
}

/// Shuts the registry's background work down when the last handle goes away (the mini-redis
/// `DbDropGuard` pattern: tasks hold `Shared`, handles hold the guard).
struct DropGuard {
    /// The state the handles operate on.
    shared: Arc<Shared>,
    /// The persistence directory, set by [`MemoryRegistry::open`].
    persist_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// Tells the snapshot writer to stop.
    persist_done: Arc<Notify>,
    /// The snapshot writer task, awaited by [`MemoryRegistry::shutdown`].
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<()>>>>,
}

impl DropGuard {
    fn persist_dir(&self) -> Option<std::path::PathBuf> {
        self.persist_dir.get().cloned()
    }
}

/// State and signals shared by handles, the sweeper and watch streams.
struct Shared {
    /// Everything that changes, under one lock; never held across an await.
    state: RwLock<State>,
    /// Wakes the sweeper when an earlier deadline arrives or on shutdown.
    sweeper_wake: Notify,
    /// Carries the latest revision to watch streams (they read events from `State::history`).
    revision_tx: watch::Sender<Revision>,
    /// Settings.
    options: MemoryOptions,
    /// Held while a snapshot is written, so writes never interleave.
    writing: tokio::sync::Mutex<()>,
    /// Nodes whose expiry self-preservation held back, counted once each.
    held_back_total: std::sync::atomic::AtomicU64,
}

impl MemoryRegistry {
    /// A registry with default options. Spawns the sweeper task.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new() -> Self {
        Self::with_options(MemoryOptions::default())
    }

    /// A registry with the given options. Spawns the sweeper task.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn with_options(options: MemoryOptions) -> Self {
        let options = MemoryOptions { event_history: options.event_history.max(1), ..options };
        let state = State { log: EventLog::new(options.event_history, Revision::ZERO), ..State::default() };
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            sweeper_wake: Notify::new(),
            revision_tx: watch::Sender::new(Revision::ZERO),
            options,
            writing: tokio::sync::Mutex::new(()),
            held_back_total: std::sync::atomic::AtomicU64::new(0),
        });
        tokio::spawn(expiry::sweep_expired(Arc::clone(&shared)));
        Self {
            inner: Arc::new(DropGuard {
                shared,
                persist_dir: std::sync::OnceLock::new(),
                persist_done: Arc::new(Notify::new()),
                writer: std::sync::Mutex::new(None),
            }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// A registry persisted in `options.dir`: restores the snapshot found there (every restored
    /// node gets one full TTL from now to heartbeat again, so a restart neither empties the
    /// registry nor expires it at once) and keeps writing it after changes.
    ///
    /// Fails when the directory cannot be created or the snapshot cannot be read; a corrupt
    /// snapshot is never overwritten silently.
    pub async fn open(memory: MemoryOptions, options: PersistOptions) -> Result<Self> {
        let snapshot = persist::load(&options.dir).await?;
        let registry = Self::with_options(memory);
        if let Some(snapshot) = snapshot {
            let restored = snapshot.nodes.len();
            registry.restore(snapshot);
            tracing::info!(restored, dir = %options.dir.display(), "registry restored");
        }
        let _ = registry.inner.persist_dir.set(options.dir.clone());
        let writer = persist::Writer::new(options, registry.shared());
        let task =
            tokio::spawn(writer.run(Arc::clone(registry.shared()), registry.inner.persist_done.clone()));
        *registry.inner.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(registry)
    }

    /// Writes the snapshot now. Does nothing without persistence. Writes are serialized with the
    /// background writer's, so they never share the temporary file.
    pub async fn flush(&self) -> Result<()> {
        let Some(dir) = self.inner.persist_dir() else { return Ok(()) };
        let _writing = self.shared().writing.lock().await;
        persist::write(&dir, &persist::snapshot_of(self.shared(), true)).await
    }

    /// Stops the registry's background work and waits for it: the snapshot writer writes the
    /// final, clean snapshot and ends; the sweeper and every watch stream end. Call it once, at
    /// shutdown; changes made afterwards are neither expired nor persisted. Fails when the final
    /// snapshot could not be written.
    pub async fn shutdown(&self) -> Result<()> {
        self.shared().lock().shutdown = true;
        self.shared().sweeper_wake.notify_one();
        self.shared().revision_tx.send_modify(|_| {});
        self.inner.persist_done.notify_one();
        let writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        match writer {
            Some(writer) => {
                writer.await.map_err(|e| Error::new(muster_core::ErrorKind::Internal, e.to_string()))?
            }
            None => Ok(()),
        }
    }

    /// Removes a node (when `condition`, if any, still holds for it) and publishes the event.
    fn deregister_when(
        &self,
        node_id: &NodeId,
        reason: DeregisterReason,
        condition: Option<&muster_core::StoredServices>,
    ) -> Result<bool> {
        let shared = self.shared();
        let mut state = shared.lock();
        shared.expire_if_due(&mut state, node_id, Instant::now());
        if let Some(condition) = condition
            && !condition.holds_for(state.nodes.get(node_id).map(|e| e.node.service_names()))
        {
            return Err(muster_core::StoredServices::conflict(node_id));
        }
        match state.remove(node_id) {
            Some(entry) => {
                shared.publish(
                    &mut state,
                    EventKind::Deregistered,
                    Some(reason),
                    entry.node.to_node(node_id),
                );
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn restore(&self, snapshot: persist::Snapshot) {
        let shared = self.shared();
        let now = Instant::now();
        let mut state = shared.lock();
        for node in snapshot.nodes {
            let ttl = std::time::Duration::from_millis(node.ttl_ms.max(1000));
            let id = node.node_id.clone();
            let deadline = now + ttl;
            state.reindex_services(&id, std::iter::empty(), &node.services);
            state.deadlines.insert((deadline, id.clone()));
            let node = StoredNode::new(&node, &mut state.strings);
            state.nodes.insert(id, Entry { node, deadline });
        }
        state.log.reset(snapshot.revision);
        state.origin = snapshot.revision;
        state.continues = snapshot.clean;
        drop(state);
        shared.revision_tx.send_replace(snapshot.revision);
        shared.sweeper_wake.notify_one();
    }

    /// True while self-preservation pauses expiry.
    pub fn is_preserving(&self) -> bool {
        self.shared().read().preserving_since.is_some()
    }

    /// How many nodes self-preservation has held back from expiring (each counted once per pause).
    pub fn held_back_total(&self) -> u64 {
        self.shared().held_back_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of stored nodes (active or awaiting removal).
    pub fn len(&self) -> usize {
        self.shared().read().nodes.len()
    }

    /// True when no node is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegistry").field("options", &self.shared().options).finish_non_exhaustive()
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.sweeper_wake.notify_one();
        self.persist_done.notify_one();
        // Wake watch streams so they see the shutdown flag and end.
        self.shared.revision_tx.send_modify(|_| {});
    }
}

impl Shared {
    /// Locks the state for a change.
    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated in a way that matters
        // more than stopping the whole registry would, so keep serving.
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks the state for reading: readers (finds, lists, watchers) do not wait for each other.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends an event, trims the history and wakes watchers.
    fn publish_with(
        &self,
        state: &mut State,
        kind: EventKind,
        reason: Option<DeregisterReason>,
        node: NodeInfo,
        before: Option<&[ServiceInfo]>,
    ) -> Revision {
        let revision = match state.first {
            Some(_) => state.log.revision().next(),
            None if state.continues => state.origin.next(),
            None => Revision((now_ms().saturating_mul(1000)).max(state.origin.0 + 1)),
        };
        state.first.get_or_insert(revision);
        let event =
            DiscoveryEvent { revision, kind, reason, node, timestamp_ms: now_ms(), previous_services: None };
        state.log.push(match before {
            Some(before) => event.with_previous_services(before),
            None => event,
        });
        self.revision_tx.send_replace(revision);
        revision
    }

    /// Publishes a change that leaves the node's services as the event shows them.
    fn publish(
        &self,
        state: &mut State,
        kind: EventKind,
        reason: Option<DeregisterReason>,
        node: NodeInfo,
    ) -> Revision {
        self.publish_with(state, kind, reason, node, None)
    }

    /// Locks the state and returns the node, expiring it first if its deadline passed;
    /// `NotFound` when it is not (or no longer) stored.
    fn lock_active(&self, node_id: &NodeId, now: Instant) -> Result<(RwLockWriteGuard<'_, State>, NodeInfo)> {
        let mut state = self.lock();
        self.expire_if_due(&mut state, node_id, now);
        match state.nodes.get(node_id) {
            Some(entry) => {
                let node = entry.node.to_node(node_id);
                Ok((state, node))
            }
            None => Err(Error::node_not_found(node_id.as_str())),
        }
    }
}

impl muster_core::SelfPreservation for MemoryRegistry {
    fn is_preserving(&self) -> bool {
        MemoryRegistry::is_preserving(self)
    }

    fn held_back_total(&self) -> u64 {
        MemoryRegistry::held_back_total(self)
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn heartbeat(&self, registration: Registration) -> Result<HeartbeatOutcome> {
        let shared = self.shared();
        let now = Instant::now();
        let now_ms = now_ms();
        let deadline = now + registration.ttl();
        let id = registration.node_id().clone();
        let mut state = shared.lock();
        shared.expire_if_due(&mut state, &id, now);
        if let Some(condition) = registration.stored_condition()
            && !condition.holds_for(state.nodes.get(&id).map(|e| e.node.service_names()))
        {
            return Err(muster_core::StoredServices::conflict(&id));
        }
        state.check_service_limit(&id, registration.services(), registration.service_limit())?;
        if let Some(config) = &shared.options.self_preservation
            && state.nodes.contains_key(&id)
        {
            state.renewals.record(now, config.window);
        }
        let earliest = state.deadlines.first().map(|(d, _)| *d);
        let (change, node, before) = match state.nodes.remove(&id) {
            Some(old) => {
                state.deadlines.remove(&(old.deadline, id.clone()));
                let mut node = registration.to_node(old.node.registered_at_ms, now_ms);
                // A health check's verdict is a condition of the write: a registration keeps it.
                node.keep_check_verdict(old.node.held_check());
                state.reindex_services(&id, old.node.service_names(), &node.services);
                let change = if old.node.differs_from(&node) { Change::Updated } else { Change::Unchanged };
                let before = (change == Change::Updated).then(|| old.node.to_node(&id).services);
                (change, node, before)
            }
            None => {
                let node = registration.to_node(now_ms, now_ms);
                state.reindex_services(&id, std::iter::empty(), &node.services);
                (Change::Registered, node, None)
            }
        };
        state.deadlines.insert((deadline, id.clone()));
        let stored = StoredNode::new(&node, &mut state.strings);
        state.nodes.insert(id, Entry { node: stored, deadline });
        let revision = match change {
            Change::Registered => Some(shared.publish(&mut state, EventKind::Registered, None, node.clone())),
            Change::Updated => Some(shared.publish_with(
                &mut state,
                EventKind::Updated,
                None,
                node.clone(),
                before.as_deref(),
            )),
            Change::Unchanged => None,
        };
        drop(state);
        if earliest.is_none_or(|e| deadline < e) {
            shared.sweeper_wake.notify_one();
        }
        Ok(HeartbeatOutcome { change, node, revision })
    }

    async fn refresh(
        &self,
        node_id: &NodeId,
        status: Option<muster_core::NodeStatus>,
    ) -> Result<HeartbeatOutcome> {
        let shared = self.shared();
        let now = Instant::now();
        let (mut state, mut node) = shared.lock_active(node_id, now)?;
        if let Some(config) = &shared.options.self_preservation {
            state.renewals.record(now, config.window);
        }
        let ttl = Duration::from_millis(node.ttl_ms.max(1));
        let deadline = now + ttl;
        // A health check's verdict holds against the node's own heartbeats.
        let status = status.filter(|_| !node.held_by_check());
        let changed = status.is_some_and(|s| s != node.status);
        if let Some(status) = status {
            node.status = status;
        }
        node.timestamp_ms = now_ms();
        let entry = state.nodes.get_mut(node_id).expect("checked above");
        let old_deadline = std::mem::replace(&mut entry.deadline, deadline);
        entry.node.status = node.status;
        entry.node.timestamp_ms = node.timestamp_ms;
        state.deadlines.remove(&(old_deadline, node_id.clone()));
        state.deadlines.insert((deadline, node_id.clone()));
        let revision = changed.then(|| shared.publish(&mut state, EventKind::Updated, None, node.clone()));
        let change = if changed { Change::Updated } else { Change::Unchanged };
        Ok(HeartbeatOutcome { change, node, revision })
    }

    async fn update(&self, node_id: &NodeId, update: NodeUpdate) -> Result<NodeInfo> {
        let shared = self.shared();
        let (mut state, mut node) = shared.lock_active(node_id, Instant::now())?;
        if let Some(condition) = update.stored_condition()
            && !condition.holds_for(Some(node.services.iter().map(|s| s.name.as_str())))
        {
            return Err(muster_core::StoredServices::conflict(node_id));
        }
        let before = node.services.clone();
        if !update.apply(&mut node) {
            return Ok(node);
        }
        state.check_service_limit(node_id, &node.services, update.service_limit())?;
        node.timestamp_ms = now_ms();
        let old = state.nodes.remove(node_id).expect("checked above");
        state.reindex_services(node_id, old.node.service_names(), &node.services);
        let stored = StoredNode::new(&node, &mut state.strings);
        state.nodes.insert(node_id.clone(), Entry { node: stored, deadline: old.deadline });
        shared.publish_with(&mut state, EventKind::Updated, None, node.clone(), Some(&before));
        Ok(node)
    }

    async fn deregister(&self, node_id: &NodeId, reason: DeregisterReason) -> Result<bool> {
        self.deregister_when(node_id, reason, None)
    }

    async fn deregister_if(
        &self,
        node_id: &NodeId,
        reason: DeregisterReason,
        condition: &muster_core::StoredServices,
    ) -> Result<bool> {
        self.deregister_when(node_id, reason, Some(condition))
    }

    async fn get(&self, node_id: &NodeId) -> Result<Option<NodeInfo>> {
        Ok(self.shared().read().nodes.get(node_id).map(|e| e.node.to_node(node_id)))
    }

    async fn exists(&self, node_id: &NodeId) -> Result<bool> {
        Ok(self.shared().read().nodes.contains_key(node_id))
    }

    async fn is_active(&self, node_id: &NodeId) -> Result<bool> {
        let now = Instant::now();
        let state = self.shared().read();
        Ok(state.nodes.get(node_id).is_some_and(|e| state.live(e, now)))
    }

    async fn list_active(&self) -> Result<Vec<NodeInfo>> {
        Ok(self.shared().read().active_nodes(Instant::now()))
    }

    async fn list_all(&self) -> Result<Vec<NodeInfo>> {
        let state = self.shared().read();
        let mut nodes: Vec<NodeInfo> = state.nodes.iter().map(|(id, e)| e.node.to_node(id)).collect();
        drop(state);
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    async fn find(&self, query: &ServiceQuery) -> Result<Vec<NodeInfo>> {
        Ok(self.find_at(query).await?.1)
    }

    /// One lock: the nodes and the revision are read together.
    async fn find_at(&self, query: &ServiceQuery) -> Result<(Revision, Vec<NodeInfo>)> {
        let now = Instant::now();
        let state = self.shared().read();
        let Some(ids) = state.by_service.get(query.name()) else {
            return Ok((state.log.revision(), Vec::new()));
        };
        // `ids` is a BTreeSet, so the result comes out ordered by node id.
        let nodes = ids
            .iter()
            .filter_map(|id| state.nodes.get(id).map(|e| (id, e)))
            .filter(|(_, e)| state.live(e, now) && e.node.provides(query))
            .map(|(id, e)| e.node.to_node(id))
            .collect();
        Ok((state.log.revision(), nodes))
    }

    /// The size of the service index entry: O(1). Nodes whose deadline passed count until the
    /// sweeper (which wakes at that deadline) has removed them.
    async fn count_service(&self, name: &str) -> Result<usize> {
        muster_core::name::validate_service_name(name)?;
        Ok(self.shared().read().by_service.get(name).map_or(0, BTreeSet::len))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared().read().log.revision())
    }

    fn self_preservation(&self) -> Option<&dyn muster_core::SelfPreservation> {
        Some(self)
    }

    async fn shutdown(&self) -> Result<()> {
        MemoryRegistry::shutdown(self).await
    }

    async fn watch(&self, start: WatchStart) -> Result<WatchStream> {
        let shared = Arc::clone(self.shared());
        muster_core::log::stream(shared, &self.shared().revision_tx, start)
            .ok_or_else(|| Error::unavailable("the registry has shut down"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events written before a shutdown reach a watcher that had not read them yet; then the
    /// stream ends.
    #[tokio::test(start_paused = true)]
    async fn shutdown_delivers_unread_events_then_ends() {
        use futures::StreamExt;
        let registry = MemoryRegistry::new();
        let mut stream = registry.watch(WatchStart::Now).await.unwrap();
        for id in ["a", "b"] {
            let node = Registration::new(
                NodeId::new(id).unwrap(),
                muster_core::Address::parse("h:1").unwrap(),
                vec![],
                Duration::from_secs(10),
            )
            .unwrap();
            registry.heartbeat(node).await.unwrap();
        }
        registry.shutdown().await.unwrap();
        let mut seen = Vec::new();
        while let Some(item) = stream.next().await {
            match item.unwrap() {
                muster_core::WatchEvent::Event(e) => seen.push(e.node.node_id.to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn sweeper_stops_when_registry_dropped() {
        let registry = MemoryRegistry::new();
        let weak = Arc::downgrade(registry.shared());
        let mut stream = registry.watch(WatchStart::Now).await.unwrap();
        drop(registry);
        // Let the sweeper observe the shutdown.
        tokio::task::yield_now().await;
        use futures::StreamExt;
        assert!(stream.next().await.is_none(), "watch streams end on shutdown");
        drop(stream);
        tokio::task::yield_now().await;
        assert_eq!(weak.strong_count(), 0, "sweeper task released the state");
    }
}
