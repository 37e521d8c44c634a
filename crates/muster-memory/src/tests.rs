//! Unit tests of `src`.

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
