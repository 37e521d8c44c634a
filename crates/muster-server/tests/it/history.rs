//! The history checker on in-process servers: a run with severed and cleanly ended watch feeds and failing
//! heartbeats keeps every promise, and a seeded bug — a store that acknowledges a registration it
//! never keeps — is caught and shown.

use std::time::Duration;

use muster_memory::MemoryRegistry;
use muster_server::ServerConfig;
use muster_testkit::faults::FaultyRegistry;
use muster_testkit::harness::{Harness, Workload};

use crate::TestServer;

fn workload(seed: u64) -> Workload {
    Workload { seed, clients: 4, nodes_per_client: 4, watchers: 3, ttl: Duration::from_millis(1_000) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_faults_keeps_every_promise() {
    let seed = 1 + u64::from(std::process::id() % 1000);
    eprintln!("history seed {seed}");
    let store = FaultyRegistry::new(MemoryRegistry::new());
    let servers = [
        TestServer::start(store.clone(), ServerConfig::default()).await,
        TestServer::start(store.clone(), ServerConfig::default()).await,
    ];
    let harness = Harness::start(servers.iter().map(|s| s.base.clone()).collect(), workload(seed));
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _fault = harness.fault();
        // The servers' change feeds break with an error, or end cleanly (as a restarting server's do).
        if round % 2 == 0 {
            store.sever_watches();
        } else {
            store.end_watches();
        }
        store.fail_heartbeats(5);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let history = harness.finish(Duration::from_secs(1)).await;
    assert!(history.ops.iter().filter(|op| op.acked_ms.is_some()).count() > 50, "the workload ran");
    assert!(history.watches.iter().all(|w| w.seen.len() > 5), "the watchers saw it");
    assert_eq!(history.caught_up(), history.watches.len(), "every watcher is replayed");
    let violations = history.check();
    assert!(
        violations.is_empty(),
        "seed {seed}:\n{}",
        violations.iter().map(ToString::to_string).collect::<String>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_seeded_bug() {
    let seed = 7;
    // Client 0's first node; the lost registration is the last word on it only if the client
    // never registers it again, so the node is the only one of its client.
    let workload = Workload { clients: 2, nodes_per_client: 1, ..workload(seed) };
    let victim = format!("s{seed}-c0-n0");
    let store = FaultyRegistry::new(MemoryRegistry::new());
    store.lose_next_registration_of(&victim);
    let server = TestServer::start(store, ServerConfig::default()).await;
    let harness = Harness::start(vec![server.base.clone()], workload);
    // Stopped as soon as the lost registration is acknowledged: before the client learns of the
    // loss (its next heartbeat, 250 ms later, would find the node missing and register again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !harness.acknowledged(&victim) {
        assert!(tokio::time::Instant::now() < deadline, "the victim's registration is acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let history = harness.finish(Duration::from_secs(1)).await;
    let violations = history.check();
    let caught = violations
        .iter()
        .find(|v| v.invariant == "acknowledged registrations" && v.detail.contains(&victim))
        .unwrap_or_else(|| {
            panic!("the lost registration of {victim} is caught: {violations:?}\n{history:?}")
        });
    let shown = caught.to_string();
    assert!(shown.contains("Register") && shown.contains("acked"), "the history that shows it:\n{shown}");
}
