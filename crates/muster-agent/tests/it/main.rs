//! Agent behaviour that does not depend on the backend, on the embedded store and paused time.
//! (The agent's behaviour on every backend is covered by the conformance suite in
//! `muster-testkit`.)

use std::time::Duration;

use muster_agent::Agent;
use muster_core::{DiscoveryOptions, EventKind, NodeStatus, Registry, WatchStart};
use muster_memory::MemoryRegistry;
use muster_testkit::conformance::{Recorder, addr, id, next_event, svc};
use muster_testkit::faults::FaultyRegistry;
use tokio::time::{Instant, sleep};

fn options() -> DiscoveryOptions {
    DiscoveryOptions::default()
}

/// Retries follow the Titan schedule (1 s, then 2 s) within the jitter bound.
#[tokio::test(start_paused = true)]
async fn retry_backoff_doubles() {
    let registry = MemoryRegistry::new();
    let faulty = FaultyRegistry::new(registry.clone());
    let agent = Agent::builder_shared(faulty.clone())
        .options(options())
        .node_id(id("n1"))
        .address(addr("h:1"))
        .build()
        .unwrap();
    faulty.fail_heartbeats(2);
    let started = Instant::now();
    agent.start().await.unwrap();
    let waited = started.elapsed();
    // 1000 ms + 2000 ms, each scaled by a factor in 0.8..=1.2.
    assert!(
        waited >= Duration::from_millis(2400) && waited <= Duration::from_millis(3600),
        "waited {waited:?}"
    );
    agent.stop().await.unwrap();
}

/// The library reads no environment: an agent without an address is refused, whatever `HOST` and
/// `PORT` say; the application passes Titan's rule explicitly.
#[tokio::test]
async fn an_address_is_given_not_read_from_the_environment() {
    let error = Agent::builder(MemoryRegistry::new()).node_id(id("n1")).build().err().expect("refused");
    assert!(error.is_invalid_input() && error.to_string().contains("address"), "{error}");
    let titan = muster_agent::detect_address(|key| (key == "PORT").then(|| "7000".to_owned())).unwrap();
    let agent = Agent::builder(MemoryRegistry::new()).node_id(id("n1")).address(titan).build().unwrap();
    assert_eq!(agent.address().as_str(), "localhost:7000");
}

/// Dropping every handle without `stop` behaves like a crash: no deregistration, the node expires.
#[tokio::test(start_paused = true)]
async fn dropped_agent_expires_like_a_crash() {
    let registry = MemoryRegistry::new();
    let agent = Agent::builder(registry.clone())
        .options(options())
        .node_id(id("n1"))
        .address(addr("h:1"))
        .build()
        .unwrap();
    agent.start().await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    drop(agent);
    let event = next_event(&mut watch, Duration::from_secs(60)).await;
    assert_eq!(
        (event.kind, event.reason),
        (EventKind::Deregistered, Some(muster_core::DeregisterReason::Expired))
    );
}

/// The status is sent with heartbeats and a change reaches the store at once.
#[tokio::test(start_paused = true)]
async fn status_is_reported() {
    let registry = MemoryRegistry::new();
    let agent = Agent::builder(registry.clone())
        .options(options())
        .node_id(id("n1"))
        .address(addr("h:1"))
        .status(NodeStatus::Starting)
        .service(svc("a@1"))
        .build()
        .unwrap();
    agent.start().await.unwrap();
    assert_eq!(registry.get(&id("n1")).await.unwrap().unwrap().status, NodeStatus::Starting);
    agent.set_status(NodeStatus::Up).await.unwrap();
    assert_eq!(registry.get(&id("n1")).await.unwrap().unwrap().status, NodeStatus::Up);
    agent.stop().await.unwrap();
}

/// A handler added after start sees later events; `off_event` stops them.
#[tokio::test(start_paused = true)]
async fn handler_added_after_start_sees_later_events() {
    let registry = MemoryRegistry::new();
    let client = Agent::builder(registry.clone())
        .options(DiscoveryOptions { client_mode: true, ..options() })
        .address(addr("h:1"))
        .build()
        .unwrap();
    client.start().await.unwrap();
    let seen = Recorder::default();
    let subscription = client.on_event(seen.handler());
    let peer = Agent::builder(registry.clone())
        .options(options())
        .node_id(id("p"))
        .address(addr("h:2"))
        .build()
        .unwrap();
    peer.start().await.unwrap();
    seen.wait_for(Duration::from_secs(5), |s| s == [(EventKind::Registered, "p".to_owned())]).await;
    client.off_event(subscription);
    peer.stop().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(seen.seen().len(), 1, "no events after off_event");
    client.stop().await.unwrap();
}
