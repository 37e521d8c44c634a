//! Behaviour of the in-memory backend beyond the shared suite.

use std::time::Duration;

use futures::StreamExt;
use muster_core::{DeregisterReason, EventKind, Registry, ServiceQuery, WatchEvent, WatchStart};
use muster_memory::{MemoryOptions, MemoryRegistry};
use muster_testkit::conformance::{self, Timing, id, next_event, registration};
use tokio::time::{Instant, sleep};

#[tokio::test(start_paused = true)]
async fn slow_watcher_resyncs() {
    let registry =
        MemoryRegistry::with_options(MemoryOptions { event_history: 8, ..MemoryOptions::default() });
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
    let last = registry.current_revision().await.unwrap().0;
    for (w, watch) in watchers.iter_mut().enumerate() {
        for i in (last - 299)..=last {
            match watch.next().await {
                Some(Ok(WatchEvent::Event(e))) => assert_eq!(e.revision.0, i, "watcher {w}"),
                other => panic!("watcher {w}: {other:?}"),
            }
        }
    }
    sleep(Duration::from_millis(1)).await;
}

mod persistence {
    use std::time::Duration;

    use muster_core::{EventKind, Registry, WatchEvent, WatchStart};
    use muster_memory::{MemoryOptions, MemoryRegistry, PersistOptions};
    use muster_testkit::conformance::{Timing, id, next_event, next_item, registration};
    use muster_testkit::redis_server::TempDir;

    fn options(dir: &TempDir) -> PersistOptions {
        PersistOptions { dir: dir.path().to_owned(), snapshot_interval: Duration::from_millis(20) }
    }

    /// A restart keeps every registration, gives each a full TTL to heartbeat again, and watchers
    /// resume from their revision.
    #[tokio::test(start_paused = true)]
    async fn restart_keeps_registrations_with_grace() {
        let dir = TempDir::new("persist");
        let timing = Timing::default();
        let registry = MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await.unwrap();
        registry.heartbeat(registration("n1", "h:1", &["a@1.0.0"], timing)).await.unwrap();
        registry.heartbeat(registration("n2", "h:2", &["b"], timing)).await.unwrap();
        let revision = registry.current_revision().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        registry.flush().await.unwrap();
        drop(registry);

        let restored = MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await.unwrap();
        assert_eq!(restored.list_active().await.unwrap().len(), 2);
        assert_eq!(restored.current_revision().await.unwrap(), revision);
        assert_eq!(
            restored.find(&muster_core::ServiceQuery::parse("a@1.0.0").unwrap()).await.unwrap()[0].node_id,
            id("n1")
        );
        let mut watch = restored.watch(WatchStart::After(revision)).await.unwrap();
        // Grace: a full TTL from the restart, not from the last heartbeat before it.
        tokio::time::sleep(timing.ttl - Duration::from_secs(1)).await;
        assert!(restored.is_active(&id("n1")).await.unwrap());
        restored.heartbeat(registration("n1", "h:1", &["a@1.0.0"], timing)).await.unwrap();
        let expired = next_event(&mut watch, Duration::from_secs(5)).await;
        assert_eq!((expired.kind, expired.node.node_id.as_str()), (EventKind::Deregistered, "n2"));
        assert_eq!(expired.revision, revision.next(), "revisions continue across the restart");
        assert!(restored.is_active(&id("n1")).await.unwrap());
    }

    /// After a crash the snapshot may lag the events watchers saw: the restored registry's
    /// revisions jump past the wall clock, so a watcher of the lost events resyncs while one that
    /// saw exactly the snapshot resumes.
    #[tokio::test]
    async fn revisions_jump_after_a_crash() {
        let dir = TempDir::new("persist");
        let timing = Timing::default();
        let file = dir.path().join("registry.json");
        let registry = MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await.unwrap();
        registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
        let snapshot_revision = registry.current_revision().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let written = loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && text.contains("\"n1\"")
            {
                break text;
            }
            assert!(tokio::time::Instant::now() < deadline, "snapshot not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(written.contains("\"clean\":false"), "{written}");
        // Events the snapshot will not hold, then the crash: the last file is the one above.
        registry.heartbeat(registration("n2", "h:2", &["a"], timing)).await.unwrap();
        let seen = registry.current_revision().await.unwrap();
        drop(registry);
        // Let the final (clean) write land first, then put the crash's file back.
        while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains("\"n2\"")) {
            assert!(tokio::time::Instant::now() < deadline, "final snapshot not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::write(&file, written).unwrap();

        let restored = MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await.unwrap();
        assert_eq!(restored.current_revision().await.unwrap(), snapshot_revision);
        let mut behind = restored.watch(WatchStart::After(seen)).await.unwrap();
        let mut exact = restored.watch(WatchStart::After(snapshot_revision)).await.unwrap();
        let outcome = restored.heartbeat(registration("n3", "h:3", &["a"], timing)).await.unwrap();
        let first = outcome.revision.unwrap();
        assert!(first > seen, "{first} jumps past {seen}");
        assert!(matches!(next_item(&mut behind, Duration::from_secs(1)).await, WatchEvent::Resync(_)));
        let event = next_event(&mut exact, Duration::from_secs(1)).await;
        assert_eq!((event.revision, event.node.node_id.as_str()), (first, "n3"));
    }

    /// Changes are written without an explicit flush, within the snapshot interval.
    #[tokio::test]
    async fn changes_are_written_in_the_background() {
        let dir = TempDir::new("persist");
        let registry = MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await.unwrap();
        registry.heartbeat(registration("n1", "h:1", &["a"], Timing::default())).await.unwrap();
        let file = dir.path().join("registry.json");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&file).is_ok_and(|s| s.contains("\"n1\"")) {
            assert!(tokio::time::Instant::now() < deadline, "snapshot not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(registry);
        // Reopened at once: the dropped registry still writes its final snapshot; the new one
        // waits for it (they shared the temporary file, and one's rename took the other's away).
        let again = MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await.unwrap();
        let mut watch = again.watch(WatchStart::Snapshot).await.unwrap();
        assert!(
            matches!(next_item(&mut watch, Duration::from_secs(1)).await, WatchEvent::Resync(s) if s.nodes.len() == 1)
        );
        again.shutdown().await.expect("the final snapshot is written");
    }

    /// A data directory serves one registry at a time: a second open is refused with a conflict
    /// naming the directory and the holder, writes nothing, and succeeds once the first shut down.
    #[tokio::test(start_paused = true)]
    async fn a_data_directory_serves_one_registry_at_a_time() {
        let dir = TempDir::new("persist");
        let registry = MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await.unwrap();
        registry.heartbeat(registration("n1", "h:1", &["a"], Timing::default())).await.unwrap();
        // The background writer's snapshot, after which nothing changes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = std::fs::read(dir.path().join("registry.json")).unwrap();

        let error = match MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await {
            Ok(_) => panic!("a second registry opened the same directory"),
            Err(error) => error,
        };
        let text = error.to_string();
        assert_eq!(error.kind(), muster_core::ErrorKind::Conflict, "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains(&format!("process {}", std::process::id())), "{text}");
        assert_eq!(
            std::fs::read(dir.path().join("registry.json")).unwrap(),
            before,
            "refused, changed nothing"
        );

        registry.shutdown().await.unwrap();
        let again = MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await.unwrap();
        assert_eq!(again.list_active().await.unwrap().len(), 1);
        again.shutdown().await.unwrap();
    }

    /// Snapshot writes never race: flushes while the background writer runs all succeed, and
    /// `shutdown` waits for the final clean snapshot (and ends watch streams).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_serialized_and_shutdown_waits_for_the_final_snapshot() {
        let dir = TempDir::new("persist");
        let options =
            PersistOptions { dir: dir.path().to_owned(), snapshot_interval: Duration::from_millis(1) };
        let registry = MemoryRegistry::open(MemoryOptions::default(), options.clone()).await.unwrap();
        let mut flushes = Vec::new();
        for n in 0..40 {
            registry
                .heartbeat(registration(&format!("n{n}"), "h:1", &["a"], Timing::default()))
                .await
                .unwrap();
            let registry = registry.clone();
            flushes.push(tokio::spawn(async move { registry.flush().await }));
        }
        for flush in flushes {
            flush.await.unwrap().expect("every flush writes its snapshot");
        }
        let mut watch = registry.watch(WatchStart::Now).await.unwrap();
        registry.heartbeat(registration("last", "h:1", &["a"], Timing::default())).await.unwrap();
        next_event(&mut watch, Duration::from_secs(1)).await;
        registry.shutdown().await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("registry.json")).unwrap();
        assert!(text.contains("\"last\"") && text.contains("\"clean\":true"), "{text}");
        assert!(!dir.path().join("registry.json.tmp").exists(), "no temporary file left");
        assert!(
            tokio::time::timeout(Duration::from_secs(1), futures::StreamExt::next(&mut watch))
                .await
                .unwrap()
                .is_none(),
            "watch streams end at shutdown"
        );
        drop(registry);
        let again = MemoryRegistry::open(MemoryOptions::default(), options).await.unwrap();
        assert_eq!(again.list_active().await.unwrap().len(), 41);
    }

    /// A corrupt snapshot stops the start with a message naming the file, and is left in place.
    #[tokio::test]
    async fn corrupt_snapshot_is_refused() {
        let dir = TempDir::new("persist");
        std::fs::write(dir.path().join("registry.json"), "{ not json").unwrap();
        let error = MemoryRegistry::open(MemoryOptions::default(), options(&dir)).await.unwrap_err();
        assert!(error.is_invalid_input() && error.to_string().contains("registry.json"), "{error}");
        assert_eq!(std::fs::read_to_string(dir.path().join("registry.json")).unwrap(), "{ not json");
    }
}

mod self_preservation {
    use std::time::Duration;

    use futures::StreamExt;
    use muster_core::{EventKind, Registry, WatchEvent, WatchStart};
    use muster_memory::{MemoryOptions, MemoryRegistry, SelfPreservation};
    use muster_testkit::conformance::{Timing, registration};

    const PRESERVE: SelfPreservation = SelfPreservation {
        threshold: 0.5,
        min_nodes: 10,
        window: Duration::from_secs(15),
        max_pause: Duration::from_secs(120),
    };

    fn registry(self_preservation: Option<SelfPreservation>) -> MemoryRegistry {
        MemoryRegistry::with_options(MemoryOptions { self_preservation, ..MemoryOptions::default() })
    }

    /// Registers `total` nodes, keeps the first `alive` heartbeating for `duration`, and returns
    /// the expiry events seen meanwhile.
    async fn run(registry: &MemoryRegistry, total: usize, alive: usize, duration: Duration) -> usize {
        let timing = Timing::default();
        let mut watch = registry.watch(WatchStart::Now).await.unwrap();
        for i in 0..total {
            registry.heartbeat(registration(&format!("n{i}"), "h:1", &["a"], timing)).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        while started.elapsed() < duration {
            tokio::time::sleep(timing.interval).await;
            for i in 0..alive {
                registry.heartbeat(registration(&format!("n{i}"), "h:1", &["a"], timing)).await.unwrap();
            }
        }
        let mut expiries = 0;
        while let Ok(Some(Ok(item))) = tokio::time::timeout(Duration::from_millis(1), watch.next()).await {
            if matches!(item, WatchEvent::Event(e) if e.kind == EventKind::Deregistered) {
                expiries += 1;
            }
        }
        expiries
    }

    #[tokio::test(start_paused = true)]
    async fn off_by_default_mass_expiry_is_announced() {
        let registry = registry(None);
        assert_eq!(run(&registry, 20, 5, Duration::from_secs(30)).await, 15);
        assert!(!registry.is_preserving());
        assert_eq!(registry.list_active().await.unwrap().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_then_resumes_when_heartbeats_return() {
        let registry = registry(Some(PRESERVE));
        assert_eq!(run(&registry, 20, 5, Duration::from_secs(30)).await, 0, "no expiry while preserving");
        assert!(registry.is_preserving());
        assert_eq!(registry.list_active().await.unwrap().len(), 20, "overdue nodes stay listed");
        assert_eq!(registry.held_back_total(), 15, "each node held back is counted once");
        // The cut heals: everyone heartbeats again; nobody was announced as gone.
        assert_eq!(run(&registry, 20, 20, Duration::from_secs(5)).await, 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!registry.is_preserving(), "the pause ends once heartbeats are back");
    }

    #[tokio::test(start_paused = true)]
    async fn pause_is_bounded() {
        let registry = registry(Some(PRESERVE));
        run(&registry, 20, 5, Duration::from_secs(30)).await;
        assert!(registry.is_preserving());
        // Keep the survivors alive past the longest pause: the dead are then announced.
        let expired = run(&registry, 5, 5, PRESERVE.max_pause).await;
        assert!(!registry.is_preserving());
        assert_eq!(expired, 15, "a real mass failure is still announced after max_pause");
        assert_eq!(registry.list_active().await.unwrap().len(), 5);
    }

    /// The measure is the heartbeat rate, not a burst of expiries: nodes leaving one by one while
    /// the rest heartbeat on schedule are announced.
    #[tokio::test(start_paused = true)]
    async fn steady_heartbeats_keep_expiry_running() {
        let registry = registry(Some(SelfPreservation { threshold: 0.85, ..PRESERVE }));
        assert_eq!(run(&registry, 20, 20, Duration::from_secs(30)).await, 0);
        // One node stops: 19 of 20 still heartbeat, above the threshold.
        assert_eq!(run(&registry, 19, 19, Duration::from_secs(30)).await, 1);
        assert!(!registry.is_preserving());
        assert_eq!(registry.held_back_total(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn small_registries_never_pause() {
        let registry = registry(Some(PRESERVE));
        assert_eq!(run(&registry, 6, 1, Duration::from_secs(30)).await, 5);
        assert!(!registry.is_preserving());
    }
}
