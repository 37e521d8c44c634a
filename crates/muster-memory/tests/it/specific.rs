//! Behaviour of the in-memory backend beyond the shared suite.

use std::time::Duration;

use futures::StreamExt;
use muster_core::{DeregisterReason, EventKind, Registry, ServiceQuery, WatchEvent, WatchStart};
use muster_memory::{MemoryOptions, MemoryRegistry};
use muster_testkit::conformance::{self, Timing, id, next_event, registration};
use tokio::time::{Instant, sleep};

#[tokio::test(start_paused = true)]
async fn slow_watcher_resyncs() {
    let registry = MemoryRegistry::with_options(MemoryOptions { event_history: 8 });
    conformance::slow_watcher_resyncs(registry, 8, Timing::default()).await;
}

/// Expiry is exact on paused time: the event carries the node and arrives at the deadline.
#[tokio::test(start_paused = true)]
async fn expiry_fires_at_the_deadline() {
    let registry = MemoryRegistry::new();
    let timing = Timing::default();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let start = Instant::now();
    registry
        .heartbeat(registration("short", "h:1", &["a"], Timing { ttl: Duration::from_secs(1), ..timing }))
        .await
        .unwrap();
    registry.heartbeat(registration("long", "h:2", &["a"], timing)).await.unwrap();
    next_event(&mut watch, timing.ttl).await;
    next_event(&mut watch, timing.ttl).await;
    let first = next_event(&mut watch, timing.ttl * 2).await;
    assert_eq!((first.kind, first.node.node_id.as_str()), (EventKind::Deregistered, "short"));
    assert_eq!(start.elapsed(), Duration::from_secs(1), "the sweeper wakes exactly at the earliest deadline");
    let second = next_event(&mut watch, timing.ttl * 2).await;
    assert_eq!((second.node.node_id.as_str(), second.reason), ("long", Some(DeregisterReason::Expired)));
    assert_eq!(start.elapsed(), timing.ttl);
    assert!(registry.is_empty());
}

/// A heartbeat that arrives after the deadline but before the sweeper ran counts as a new
/// registration, preceded by the expiry: watchers see both.
#[tokio::test(start_paused = true)]
async fn late_heartbeat_is_expiry_then_registration() {
    let registry = MemoryRegistry::new();
    let timing = Timing::default();
    registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    // Advance past the deadline without yielding to the sweeper, then heartbeat at once.
    tokio::time::advance(timing.ttl).await;
    let outcome = registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    assert_eq!(outcome.change, muster_core::Change::Registered);
    let expired = next_event(&mut watch, timing.ttl).await;
    let registered = next_event(&mut watch, timing.ttl).await;
    assert_eq!((expired.kind, expired.reason), (EventKind::Deregistered, Some(DeregisterReason::Expired)));
    assert_eq!(registered.kind, EventKind::Registered);
    assert_eq!(registry.len(), 1);
}

/// Find-by-service reads only the nodes of that service: with many unrelated nodes, it still
/// returns just the right ones (the cost side is measured in `muster-bench`).
#[tokio::test(start_paused = true)]
async fn find_with_many_unrelated_nodes() {
    let registry = MemoryRegistry::new();
    let timing = Timing::default();
    for i in 0..5_000 {
        registry.heartbeat(registration(&format!("filler-{i}"), "h:1", &["filler"], timing)).await.unwrap();
    }
    registry.heartbeat(registration("wanted", "h:2", &["target@1.0.0"], timing)).await.unwrap();
    let found = registry.find(&ServiceQuery::parse("target@^1").unwrap()).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].node_id, id("wanted"));
}

/// Many watchers at different speeds each see every event in order.
#[tokio::test(start_paused = true)]
async fn many_watchers_see_every_event() {
    let registry = MemoryRegistry::new();
    let timing = Timing::default();
    let mut watchers = Vec::new();
    for _ in 0..10 {
        watchers.push(registry.watch(WatchStart::Now).await.unwrap());
    }
    for i in 0..300 {
        registry.heartbeat(registration(&format!("n{i}"), "h:1", &["a"], timing)).await.unwrap();
    }
    for (w, watch) in watchers.iter_mut().enumerate() {
        for i in 1..=300u64 {
            match watch.next().await {
                Some(Ok(WatchEvent::Event(e))) => assert_eq!(e.revision.0, i, "watcher {w}"),
                other => panic!("watcher {w}: {other:?}"),
            }
        }
    }
    sleep(Duration::from_millis(1)).await;
}
