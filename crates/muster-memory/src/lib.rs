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
//!
//! Layout: `lib.rs` — [`MemoryRegistry`], its options and shared state; `registry.rs` — the
//! `Registry` contract on it; `state.rs` — the state under the lock and its indexes; `compact.rs`
//! — the compact node form; `expiry.rs` — the sweeper and self-preservation; `watching.rs` —
//! watch streams; `persist.rs` — snapshots; `tokens.rs` — ACL tokens.

mod compact;
mod expiry;
mod persist;
mod registry;
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
    /// One registry at a time per directory: an open waits up to 5 s for the registry that holds
    /// it (one just dropped writes its final snapshot first), then fails with
    /// [`ErrorKind::Conflict`](muster_core::ErrorKind::Conflict) naming the holder's process.
    /// Fails too when the directory cannot be created or the snapshot cannot be read; a corrupt
    /// snapshot is never overwritten silently.
    pub async fn open(memory: MemoryOptions, options: PersistOptions) -> Result<Self> {
        tokio::fs::create_dir_all(&options.dir)
            .await
            .map_err(|e| persist::io_error("cannot create data directory", &options.dir, e))?;
        let lock = persist::lock(&options.dir).await?;
        let snapshot = persist::load(&options.dir).await?;
        let registry = Self::with_options(memory);
        if let Some(snapshot) = snapshot {
            let restored = snapshot.nodes.len();
            registry.restore(snapshot);
            tracing::info!(restored, dir = %options.dir.display(), "registry restored");
        }
        let _ = registry.inner.persist_dir.set(options.dir.clone());
        let writer = persist::Writer::new(options, registry.shared(), lock);
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

#[cfg(test)]
mod tests;
