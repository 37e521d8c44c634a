//! Unit tests of `log`.

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
    mirror.replace(Snapshot { revision: Revision(1), nodes: vec![node("n1", &["a"]), node("n2", &["a"])] });
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
    assert_eq!(mirror.checked_changes(), seen, "changes to other nodes leave the checked ones as they were");
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
