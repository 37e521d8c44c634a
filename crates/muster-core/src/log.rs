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
mod tests {
    use super::*;
    use crate::{Address, ServiceInfo};

    /// `muster_testkit::conformance::node_info`, written again: a unit test of this crate that used
    /// the test kit would link a second copy of this crate, whose `NodeInfo` is another type.
    fn node(id: &str, services: &[&str]) -> NodeInfo {
        NodeInfo {
            node_id: NodeId::new(id).unwrap(),
            address: Address::parse("h:1").unwrap(),
            services: services.iter().map(|s| ServiceInfo::parse(s).unwrap()).collect(),
            timestamp_ms: 0,
            registered_at_ms: 0,
            status: crate::NodeStatus::Up,
            metadata: Default::default(),
            ttl_ms: 1000,
        }
    }

    fn event(revision: u64, kind: EventKind, node: NodeInfo) -> DiscoveryEvent {
        DiscoveryEvent {
            revision: Revision(revision),
            kind,
            reason: None,
            node,
            timestamp_ms: 0,
            previous_services: None,
        }
    }

    fn revisions(read: Read) -> Vec<u64> {
        match read {
            Read::Events(events) => events.iter().map(|e| e.revision.0).collect(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn log_hands_out_events_after_a_known_cursor_or_asks_for_a_resync() {
        let mut log = EventLog::new(3, Revision(10));
        assert_eq!(log.read(Revision(10), 10), Read::UpToDate);
        for r in [11, 12, 20] {
            assert!(log.push(event(r, EventKind::Registered, node("a", &["s"]))));
        }
        assert!(!log.push(event(20, EventKind::Updated, node("a", &["s"]))), "no going back");
        assert_eq!(revisions(log.read(Revision(10), 10)), [11, 12, 20]);
        assert_eq!(revisions(log.read(Revision(11), 1)), [12], "batch limit");
        assert_eq!(revisions(log.read(Revision(12), 10)), [20], "revisions may jump");
        assert_eq!(log.read(Revision(15), 10), Read::Behind, "never issued here");
        assert_eq!(log.read(Revision(21), 10), Read::Behind, "from the future");
        assert_eq!(log.read(Revision(9), 10), Read::Behind, "older than the history");
        log.push(event(21, EventKind::Registered, node("b", &["s"])));
        assert_eq!(log.floor(), Revision(11), "the oldest event was evicted");
        assert_eq!(log.read(Revision(10), 10), Read::Behind);
        assert_eq!(revisions(log.read(Revision(11), 10)), [12, 20, 21]);
        assert_eq!(log.since(Revision(20)).unwrap().count(), 1);
        assert!(log.since(Revision(13)).is_none());
        log.reset(Revision(40));
        assert_eq!(log.read(Revision(21), 10), Read::Behind);
        assert_eq!(log.read(Revision(40), 10), Read::UpToDate);
        assert!(log.is_empty());
    }

    #[test]
    fn mirror_applies_in_order_and_reindexes() {
        let mut mirror = Mirror::default();
        assert!(mirror.apply(&event(1, EventKind::Registered, node("n1", &["a@1"]))));
        assert!(mirror.apply(&event(2, EventKind::Registered, node("n2", &["a@2", "b"]))));
        let a = ServiceQuery::new("a").unwrap();
        let ids = |nodes: Vec<Arc<NodeInfo>>| nodes.iter().map(|n| n.node_id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(mirror.find(&a)), ["n1", "n2"]);
        assert_eq!(ids(mirror.find(&ServiceQuery::parse("a@2").unwrap())), ["n2"]);
        assert!(mirror.apply(&event(3, EventKind::Updated, node("n2", &["b"]))));
        assert_eq!(ids(mirror.find(&a)), ["n1"]);
        assert!(!mirror.apply(&event(2, EventKind::Registered, node("n2", &["a@2"]))), "replayed");
        assert_eq!(ids(mirror.find(&a)), ["n1"]);
        mirror.apply(&event(4, EventKind::Deregistered, node("n1", &["a@1"])));
        assert!(mirror.find(&a).is_empty());
        assert_eq!(mirror.service_names().collect::<Vec<_>>(), ["b"]);
        assert_eq!(mirror.revision(), Revision(4));
    }

    #[test]
    fn mirror_replace_reports_the_difference() {
        let mut mirror = Mirror::default();
        mirror
            .replace(Snapshot { revision: Revision(1), nodes: vec![node("n1", &["a"]), node("n2", &["a"])] });
        let changes = mirror
            .replace(Snapshot { revision: Revision(9), nodes: vec![node("n3", &["a"]), node("n2", &["b"])] });
        let got: Vec<_> = changes.iter().map(|e| (e.kind, e.node.node_id.to_string(), e.reason)).collect();
        assert_eq!(
            got,
            [
                (EventKind::Updated, "n2".to_owned(), None),
                (EventKind::Registered, "n3".to_owned(), None),
                (EventKind::Deregistered, "n1".to_owned(), Some(DeregisterReason::Unknown)),
            ]
        );
        assert!(changes.iter().all(|e| e.revision == Revision(9)));
        let snapshot = mirror.snapshot();
        assert_eq!(snapshot.revision, Revision(9));
        assert_eq!(snapshot.nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["n2", "n3"]);
    }

    #[test]
    fn mirror_keeps_the_checked_nodes_apart_and_counts_only_their_changes() {
        let checked = |id: &str| {
            let mut n = node(id, &["a"]);
            n.metadata.insert(CHECK_TYPE.to_owned(), "tcp".to_owned());
            n
        };
        let mut mirror = Mirror::default();
        mirror.apply(&event(1, EventKind::Registered, checked("c1")));
        let seen = mirror.checked_changes();
        assert!(seen > 0);
        for r in 2..1000 {
            mirror.apply(&event(r, EventKind::Registered, node(&format!("plain-{r}"), &["a"])));
        }
        assert_eq!(
            mirror.checked_changes(),
            seen,
            "changes to other nodes leave the checked ones as they were"
        );
        mirror.apply(&event(1000, EventKind::Updated, checked("c1")));
        assert!(mirror.checked_changes() > seen, "a checked node changed");
        let seen = mirror.checked_changes();
        mirror.apply(&event(1001, EventKind::Registered, checked("c0")));
        assert!(mirror.checked_changes() > seen);
        let ids: Vec<_> = mirror.checked().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["c0", "c1"]);
        let seen = mirror.checked_changes();
        mirror.apply(&event(1002, EventKind::Updated, node("c1", &["a"])));
        assert_eq!(mirror.checked().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["c0"], "check dropped");
        assert!(mirror.checked_changes() > seen);
        let seen = mirror.checked_changes();
        mirror.apply(&event(1003, EventKind::Deregistered, checked("c0")));
        assert_eq!(mirror.checked().count(), 0);
        assert!(mirror.checked_changes() > seen);
        let changes = mirror.changes();
        mirror.replace(Snapshot { revision: Revision(2000), nodes: vec![checked("c2"), node("p", &["a"])] });
        assert!(mirror.changes() > changes, "every change to the contents is counted");
        assert_eq!(mirror.checked().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["c2"]);
        assert_eq!(mirror.iter().count(), 2);
    }

    /// A source over a log and a mirror, as the server's fan-out holds them.
    struct Source {
        state: std::sync::Mutex<(EventLog, Mirror, bool)>,
    }

    impl LogSource for Source {
        fn read_after(&self, cursor: Revision, max: usize) -> Option<Vec<WatchEvent>> {
            let state = self.state.lock().unwrap();
            if state.2 {
                return None;
            }
            Some(read_log(&state.0, cursor, max, || state.1.snapshot()))
        }
        fn position(&self, with_snapshot: bool) -> Option<(Revision, Option<Snapshot>)> {
            let state = self.state.lock().unwrap();
            Some((state.0.revision(), with_snapshot.then(|| state.1.snapshot())))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn streams_follow_the_log_resync_when_behind_and_end_at_shutdown() {
        use futures::StreamExt;
        let source = Arc::new(Source {
            state: std::sync::Mutex::new((EventLog::new(2, Revision(0)), Mirror::default(), false)),
        });
        let (tx, _) = watch::channel(Revision(0));
        let publish = |r: u64, id: &str| {
            let e = event(r, EventKind::Registered, node(id, &["s"]));
            let mut state = source.state.lock().unwrap();
            state.0.push(e.clone());
            state.1.apply(&e);
            drop(state);
            tx.send_replace(Revision(r));
        };
        let mut live = stream(Arc::clone(&source), &tx, WatchStart::Now).unwrap();
        let mut slow = stream(Arc::clone(&source), &tx, WatchStart::After(Revision(0))).unwrap();
        publish(1, "a");
        assert_eq!(live.next().await.unwrap().unwrap().revision(), Revision(1));
        publish(2, "b");
        publish(3, "c");
        assert_eq!(live.next().await.unwrap().unwrap().revision(), Revision(2));
        assert_eq!(live.next().await.unwrap().unwrap().revision(), Revision(3));
        match slow.next().await.unwrap().unwrap() {
            WatchEvent::Resync(s) => {
                assert_eq!(s.revision, Revision(3));
                assert_eq!(s.nodes.len(), 3);
            }
            other => panic!("the slow watcher fell behind a history of 2: {other:?}"),
        }
        let mut snap = stream(Arc::clone(&source), &tx, WatchStart::Snapshot).unwrap();
        assert!(matches!(snap.next().await.unwrap().unwrap(), WatchEvent::Resync(s) if s.nodes.len() == 3));
        publish(4, "d");
        assert_eq!(slow.next().await.unwrap().unwrap().revision(), Revision(4));
        assert_eq!(snap.next().await.unwrap().unwrap().revision(), Revision(4));
        source.state.lock().unwrap().2 = true;
        tx.send_modify(|_| {});
        assert!(live.next().await.is_none(), "streams end at shutdown");
    }
}
