//! Watch streams: resume, snapshots, unknown revisions, slow watchers.

use muster_core::{DeregisterReason, EventKind, NodeUpdate, Registry, Revision, WatchEvent, WatchStart};

use super::*;

/// A watch from a revision yields exactly the later events, in order.
pub async fn watch_resumes_after_revision<R: Registry>(registry: R, timing: Timing) {
    registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    let mark = registry.current_revision().await.unwrap();
    registry.heartbeat(registration("n2", "h:2", &["a"], timing)).await.unwrap();
    registry.update(&id("n1"), NodeUpdate::new().address(addr("h:3"))).await.unwrap();
    registry.deregister(&id("n2"), DeregisterReason::Evicted).await.unwrap();

    let mut watch = registry.watch(WatchStart::After(mark)).await.unwrap();
    let mut got = Vec::new();
    let mut last = mark;
    for _ in 0..3 {
        let event = next_event(&mut watch, timing.event_wait()).await;
        assert!(event.revision > last, "revisions strictly increase");
        last = event.revision;
        got.push((event.kind, event.node.node_id.to_string(), event.reason));
    }
    assert_eq!(
        got,
        [
            (EventKind::Registered, "n2".to_owned(), None),
            (EventKind::Updated, "n1".to_owned(), None),
            (EventKind::Deregistered, "n2".to_owned(), Some(DeregisterReason::Evicted)),
        ]
    );
    assert_eq!(last, registry.current_revision().await.unwrap());
    // And it continues live.
    registry.heartbeat(registration("n3", "h:3", &["a"], timing)).await.unwrap();
    assert_eq!(
        summary(&next_event(&mut watch, timing.event_wait()).await),
        (EventKind::Registered, "n3", None)
    );
}

/// A snapshot watch starts with the full state, then continues with every later event.
pub async fn watch_snapshot_then_live<R: Registry>(registry: R, timing: Timing) {
    registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    registry.heartbeat(registration("n2", "h:2", &["b"], timing)).await.unwrap();
    let mut watch = registry.watch(WatchStart::Snapshot).await.unwrap();
    let WatchEvent::Resync(snapshot) = next_item(&mut watch, timing.event_wait()).await else {
        panic!("a snapshot watch starts with a resync");
    };
    assert_eq!(ids(&snapshot.nodes), ["n1", "n2"]);
    assert_eq!(snapshot.revision, registry.current_revision().await.unwrap());
    registry.deregister(&id("n1"), DeregisterReason::Graceful).await.unwrap();
    let event = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!(summary(&event), (EventKind::Deregistered, "n1", Some(DeregisterReason::Graceful)));
    assert!(event.revision > snapshot.revision);
}

/// A watch from a revision the registry never issued starts with a resync.
pub async fn watch_from_unknown_revision_resyncs<R: Registry>(registry: R, timing: Timing) {
    registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    let current = registry.current_revision().await.unwrap();
    let mut watch = registry.watch(WatchStart::After(Revision(current.0 + 1000))).await.unwrap();
    match next_item(&mut watch, timing.event_wait()).await {
        WatchEvent::Resync(snapshot) => {
            assert_eq!(ids(&snapshot.nodes), ["n1"]);
            assert_eq!(snapshot.revision, current);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
}

/// A watcher that falls further behind than the backend's event history is told to resync, and
/// writers are never slowed by it. `history` is the backend's configured history length.
pub async fn slow_watcher_resyncs<R: Registry>(registry: R, history: usize, timing: Timing) {
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    for round in 0..(history * 3) {
        let address = format!("h:{}", round + 1);
        registry.heartbeat(registration("busy", &address, &["a"], timing)).await.unwrap();
    }
    let current = registry.current_revision().await.unwrap();
    match next_item(&mut watch, timing.event_wait()).await {
        WatchEvent::Resync(snapshot) => {
            assert_eq!(snapshot.revision, current);
            assert_eq!(snapshot.nodes.len(), 1);
            assert_eq!(snapshot.nodes[0].address.as_str(), format!("h:{}", history * 3));
        }
        WatchEvent::Event(e) | WatchEvent::Peer(e) => {
            panic!("expected a resync after falling behind, got event {}", e.revision)
        }
    }
    registry.heartbeat(registration("later", "h:1", &["a"], timing)).await.unwrap();
    let event = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!((event.kind, event.revision), (EventKind::Registered, current.next()));
}

/// An update that changes a node's services carries the services it had, so a watcher of one
/// service learns a node left it even when it never saw the node join (a watch from now, or a
/// resume); heartbeats that change services say so too.
pub async fn updates_carry_previous_services<R: Registry>(registry: R, timing: Timing) {
    registry.heartbeat(registration("n1", "h:1", &["alpha@1.0.0"], timing)).await.unwrap();
    let mark = registry.current_revision().await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    registry.update(&id("n1"), NodeUpdate::new().services(vec![svc("beta")]).unwrap()).await.unwrap();
    let moved = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!(moved.previous_services, Some(vec![svc("alpha@1.0.0")]));
    let mut filter = muster_core::ServiceFilter::new(Some("alpha".into()));
    assert!(filter.pass(&moved), "a watcher of alpha sees n1 leave");
    registry.heartbeat(registration("n1", "h:1", &["beta", "gamma"], timing)).await.unwrap();
    let widened = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!(widened.previous_services, Some(vec![svc("beta")]));
    registry.update(&id("n1"), NodeUpdate::new().address(addr("h:2"))).await.unwrap();
    let moved_address = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!(moved_address.previous_services, None, "services unchanged: nothing to carry");
    // Resuming reads the same from the store's history.
    let mut resumed = registry.watch(WatchStart::After(mark)).await.unwrap();
    let first = next_event(&mut resumed, timing.event_wait()).await;
    assert_eq!(first.previous_services, Some(vec![svc("alpha@1.0.0")]));
}
