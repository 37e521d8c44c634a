//! The watch component: what every watch in Muster is made of, without I/O.
//!
//! - [`EventLog`] — a bounded history of events with the position it is complete from. A watcher is
//!   a cursor (the revision of the last item it has); [`EventLog::read`] hands it the events after
//!   its cursor, or tells it that it must resync because they are gone (it fell behind the history,
//!   or its cursor is a revision this log never issued). Writers never wait for readers.
//! - [`Mirror`] — the active nodes as a watcher sees them, indexed by service, kept current by
//!   applying events and replaced by snapshots (returning the difference, so nothing is missed
//!   across a resync).
//! - [`LogSource`] and [`stream`] — the watch stream over any source that can read a log under its
//!   own lock: one task-free cursor per watcher, woken by a `tokio::sync::watch` of the revision.
//!
//! Used by the embedded store (its event history), the registry server's fan-out (one upstream
//! watch per process, every SSE client and blocking query reading one log), the agent's cache and
//! the SDK's resolver (both a [`Mirror`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::watch;

use crate::event::{DeregisterReason, DiscoveryEvent, EventKind, Revision, Snapshot, WatchEvent, WatchStart};
use crate::name::NodeId;
use crate::node::{CHECK_TYPE, NodeInfo};
use crate::registry::WatchStream;
use crate::service::ServiceQuery;
use crate::time::now_ms;

/// Most events handed to one watcher per read, so one reader never holds a lock for long.
pub const READ_BATCH: usize = 256;

/// A bounded, revision-ordered event history.
#[derive(Debug, Clone)]
pub struct EventLog {
    /// The most recent events, oldest first, revisions strictly increasing.
    history: VecDeque<DiscoveryEvent>,
    /// Most events kept.
    capacity: usize,
    /// The history holds every event after this revision.
    floor: Revision,
    /// Revision of the latest event (or of the last reset).
    revision: Revision,
}

/// What a watcher at some cursor should receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Nothing new.
    UpToDate,
    /// The next events, in order (at most the batch asked for).
    Events(Vec<DiscoveryEvent>),
    /// The events it needs are gone, or its cursor was never issued here: it must resync.
    Behind,
}

impl Default for EventLog {
    /// An empty log of 10,000 events from revision 0.
    fn default() -> Self {
        Self::new(10_000, Revision::ZERO)
    }
}

impl EventLog {
    /// An empty log keeping at most `capacity` events (at least 1), complete from `revision`.
    pub fn new(capacity: usize, revision: Revision) -> Self {
        Self { history: VecDeque::new(), capacity: capacity.max(1), floor: revision, revision }
    }

    /// Revision of the latest event.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The revision the history is complete from (events after it are all held).
    pub fn floor(&self) -> Revision {
        self.floor
    }

    /// Number of events held.
    pub fn len(&self) -> usize {
        self.history.len()
    }

    /// True when no event is held.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// Appends an event. Returns false (and keeps nothing) when its revision is not after the
    /// latest: the log never goes back.
    pub fn push(&mut self, event: DiscoveryEvent) -> bool {
        if event.revision <= self.revision {
            return false;
        }
        self.revision = event.revision;
        self.history.push_back(event);
        while self.history.len() > self.capacity {
            if let Some(evicted) = self.history.pop_front() {
                self.floor = evicted.revision;
            }
        }
        true
    }

    /// Forgets the history: the log continues from `revision` (after a resync of its source, or a
    /// restore). Watchers behind it will resync.
    pub fn reset(&mut self, revision: Revision) {
        self.history.clear();
        self.floor = revision;
        self.revision = revision;
    }

    /// True when this log can continue a watcher at `cursor`: its floor, its latest revision, or
    /// the revision of an event it holds.
    fn knows(&self, cursor: Revision) -> bool {
        cursor == self.floor
            || cursor == self.revision
            || (cursor > self.floor && self.history.binary_search_by_key(&cursor, |e| e.revision).is_ok())
    }

    /// The held events after a known `cursor`.
    fn after(&self, cursor: Revision) -> std::collections::vec_deque::Iter<'_, DiscoveryEvent> {
        self.history.range(self.history.partition_point(|e| e.revision <= cursor)..)
    }

    /// The events after `cursor`, at most `max`.
    pub fn read(&self, cursor: Revision, max: usize) -> Read {
        if cursor == self.revision {
            Read::UpToDate
        } else if self.knows(cursor) {
            Read::Events(self.after(cursor).take(max.max(1)).cloned().collect())
        } else {
            Read::Behind
        }
    }

    /// The events after `cursor` that are still held (for callers that only look, like a blocking
    /// query deciding whether anything concerns it); `None` when the cursor is not known.
    pub fn since(&self, cursor: Revision) -> Option<impl Iterator<Item = &DiscoveryEvent>> {
        self.knows(cursor).then(|| self.after(cursor))
    }
}

/// The active nodes as seen through a watch, with a service index; cheap to read from (nodes are
/// shared `Arc`s).
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    /// Revision of the last change applied.
    revision: Revision,
    /// Every active node by id.
    nodes: HashMap<NodeId, Arc<NodeInfo>>,
    /// Service name → the nodes listing a service of that name, ordered by node id.
    by_service: HashMap<String, BTreeMap<NodeId, Arc<NodeInfo>>>,
    /// The nodes whose registration asks for a health check ([`CHECK_TYPE`] in their metadata),
    /// so that whoever runs the checks reads those and not the whole fleet.
    checked: BTreeMap<NodeId, Arc<NodeInfo>>,
    /// Counts the changes to `checked` (a checked node arrived, changed or left).
    checked_changes: u64,
    /// Counts every change to the contents (a node arrived, changed or left, a snapshot).
    changes: u64,
}

impl Mirror {
    /// Revision of the last change applied.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when there is no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// One node.
    pub fn get(&self, node_id: &NodeId) -> Option<&Arc<NodeInfo>> {
        self.nodes.get(node_id)
    }

    /// Every node, ordered by node id.
    pub fn nodes(&self) -> Vec<Arc<NodeInfo>> {
        let mut nodes: Vec<_> = self.nodes.values().cloned().collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }

    /// Every node, in no particular order, without copying.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<NodeInfo>> {
        self.nodes.values()
    }

    /// The nodes asking for a health check ([`CHECK_TYPE`] in their metadata), ordered by node id.
    pub fn checked(&self) -> impl Iterator<Item = &Arc<NodeInfo>> {
        self.checked.values()
    }

    /// Changes so far to [`Mirror::checked`]: unchanged means the checked nodes are the same, so
    /// a reader of them need not read them again after a change to other nodes.
    pub fn checked_changes(&self) -> u64 {
        self.checked_changes
    }

    /// Changes so far to the contents: unchanged means every read gives what it gave before, so
    /// an answer built from the mirror may be kept until it moves.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The nodes listing a service named `name`, ordered by node id.
    pub fn service(&self, name: &str) -> impl Iterator<Item = &Arc<NodeInfo>> {
        self.by_service.get(name).into_iter().flat_map(BTreeMap::values)
    }

    /// Names of the services listed by at least one node.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.by_service.keys().map(String::as_str)
    }

    /// Nodes providing a service that satisfies `query`, ordered by node id.
    pub fn find(&self, query: &ServiceQuery) -> Vec<Arc<NodeInfo>> {
        self.service(query.name()).filter(|n| n.provides(query)).cloned().collect()
    }

    /// The whole state as a snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            nodes: self.nodes().into_iter().map(Arc::unwrap_or_clone).collect(),
        }
    }

    /// Applies one event. Returns false (changing nothing) for an event at or below the mirror's
    /// revision: it was applied already.
    pub fn apply(&mut self, event: &DiscoveryEvent) -> bool {
        if event.revision <= self.revision {
            return false;
        }
        self.revision = event.revision;
        self.apply_change(event);
        true
    }

    /// Applies an event without a revision of its own (a peer's channel event), whatever its
    /// revision.
    pub fn apply_change(&mut self, event: &DiscoveryEvent) {
        match event.kind {
            EventKind::Registered | EventKind::Updated => self.insert(Arc::new(event.node.clone())),
            EventKind::Deregistered => self.remove(&event.node.node_id),
        }
    }

    /// Replaces the contents with a snapshot and returns the changes from the old contents to the
    /// new, as events at the snapshot's revision (registrations and updates in node-id order, then
    /// departures with reason `unknown`).
    pub fn replace(&mut self, snapshot: Snapshot) -> Vec<DiscoveryEvent> {
        let old = std::mem::take(&mut self.nodes);
        self.by_service.clear();
        self.changes += 1;
        if !self.checked.is_empty() {
            self.checked.clear();
            self.checked_changes += 1;
        }
        self.revision = snapshot.revision;
        let timestamp_ms = now_ms();
        let event = |kind, reason, node: &NodeInfo| DiscoveryEvent {
            revision: snapshot.revision,
            kind,
            reason,
            node: node.clone(),
            timestamp_ms,
            previous_services: None,
        };
        let mut changes = Vec::new();
        let mut nodes = snapshot.nodes;
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        for node in nodes {
            match old.get(&node.node_id) {
                None => changes.push(event(EventKind::Registered, None, &node)),
                Some(before) if before.differs_from(&node) => changes
                    .push(event(EventKind::Updated, None, &node).with_previous_services(&before.services)),
                Some(_) => {}
            }
            self.insert(Arc::new(node));
        }
        let mut gone: Vec<_> = old.values().filter(|n| !self.nodes.contains_key(&n.node_id)).collect();
        gone.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        changes.extend(
            gone.into_iter().map(|n| event(EventKind::Deregistered, Some(DeregisterReason::Unknown), n)),
        );
        changes
    }

    fn insert(&mut self, node: Arc<NodeInfo>) {
        self.remove(&node.node_id);
        self.changes += 1;
        for service in &node.services {
            self.by_service
                .entry(service.name.clone())
                .or_default()
                .insert(node.node_id.clone(), Arc::clone(&node));
        }
        if node.metadata.contains_key(CHECK_TYPE) {
            self.checked.insert(node.node_id.clone(), Arc::clone(&node));
            self.checked_changes += 1;
        }
        self.nodes.insert(node.node_id.clone(), node);
    }

    fn remove(&mut self, node_id: &NodeId) {
        let Some(old) = self.nodes.remove(node_id) else { return };
        self.changes += 1;
        if self.checked.remove(node_id).is_some() {
            self.checked_changes += 1;
        }
        for service in &old.services {
            if let Some(nodes) = self.by_service.get_mut(&service.name) {
                nodes.remove(node_id);
                if nodes.is_empty() {
                    self.by_service.remove(&service.name);
                }
            }
        }
    }
}

/// Something a watch stream reads from: a log and the state it describes, read under one lock.
pub trait LogSource: Send + Sync + 'static {
    /// What the watcher at `cursor` receives next: the events after it (empty when up to date), or
    /// a resync snapshot when it is behind. `None` once the source has shut down.
    fn read_after(&self, cursor: Revision, max: usize) -> Option<Vec<WatchEvent>>;

    /// The revision now, and a snapshot when `with_snapshot`. `None` once shut down.
    fn position(&self, with_snapshot: bool) -> Option<(Revision, Option<Snapshot>)>;
}

/// [`LogSource::read_after`] for a source holding an [`EventLog`]: `snapshot` is called only when
/// the watcher is behind.
pub fn read_log(
    log: &EventLog,
    cursor: Revision,
    max: usize,
    snapshot: impl FnOnce() -> Snapshot,
) -> Vec<WatchEvent> {
    match log.read(cursor, max) {
        Read::UpToDate => Vec::new(),
        Read::Events(events) => events.into_iter().map(WatchEvent::Event).collect(),
        Read::Behind => vec![WatchEvent::Resync(snapshot())],
    }
}

/// What a watcher still has to read once its source shut down: the events after `cursor` the log
/// holds (never a resync), or `None` when there are none — the stream then ends.
pub fn read_remaining(log: &EventLog, cursor: Revision, max: usize) -> Option<Vec<WatchEvent>> {
    match log.read(cursor, max) {
        Read::Events(events) if !events.is_empty() => {
            Some(events.into_iter().map(WatchEvent::Event).collect())
        }
        _ => None,
    }
}

/// A watch stream over `source`, starting at `start`. `revisions` must be told (`send_replace`,
/// `send_modify`) after every change and at shutdown. The stream ends when the source shuts down;
/// it holds no task — only a cursor, a receiver and the items of one read.
pub fn stream<S: LogSource>(
    source: Arc<S>,
    revisions: &watch::Sender<Revision>,
    start: WatchStart,
) -> Option<WatchStream> {
    let mut receiver = revisions.subscribe();
    receiver.borrow_and_update();
    let mut pending = VecDeque::new();
    let cursor = match start {
        WatchStart::After(revision) => revision,
        WatchStart::Now => source.position(false)?.0,
        WatchStart::Snapshot => {
            let (revision, snapshot) = source.position(true)?;
            pending.extend(snapshot.map(WatchEvent::Resync));
            revision
        }
    };
    let watcher = Cursor { source, receiver, cursor, pending };
    Some(Box::pin(futures::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await?;
        Some((Ok(item), w))
    })))
}

/// One watcher: a position and the items of its last read.
struct Cursor<S> {
    source: Arc<S>,
    receiver: watch::Receiver<Revision>,
    cursor: Revision,
    pending: VecDeque<WatchEvent>,
}

impl<S: LogSource> Cursor<S> {
    async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                self.cursor = item.revision();
                return Some(item);
            }
            // Mark the current value seen before reading, so a change after the read always wakes
            // `changed()` below.
            self.receiver.borrow_and_update();
            let items = self.source.read_after(self.cursor, READ_BATCH)?;
            if !items.is_empty() {
                self.pending.extend(items);
                continue;
            }
            if self.receiver.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests;
