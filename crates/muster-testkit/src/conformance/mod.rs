//! The backend conformance suite.
//!
//! Every case takes a fresh registry and a [`Timing`], and panics with a message naming what broke.
//! Cases use `tokio::time` only, so on paused time (in-process backends) they run instantly and
//! deterministically, and on real time (external stores) they run with short TTLs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use muster_agent::Agent;
use muster_core::{
    Address, DeregisterReason, DiscoveryEvent, DiscoveryOptions, EventKind, NodeId, NodeInfo, Registration,
    Registry, ServiceInfo, WatchEvent, WatchStream,
};
use tokio::time::{Instant, sleep, timeout};

use crate::faults::FaultyRegistry;

mod agent;
mod registry;
mod watch;

pub use agent::*;
pub use registry::*;
pub use watch::*;

/// The time scale a backend runs the suite at.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeat interval of agents in the suite.
    pub interval: Duration,
    /// Heartbeat TTL of nodes in the suite.
    pub ttl: Duration,
    /// How long after its TTL an expired node may still be listed and its expiry event pending.
    pub expiry_slack: Duration,
}

impl Default for Timing {
    /// The Titan defaults (5 s / 15 s) with the embedded store's bound of 100 ms.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            ttl: Duration::from_secs(15),
            expiry_slack: Duration::from_millis(100),
        }
    }
}

impl Timing {
    fn options(&self) -> DiscoveryOptions {
        DiscoveryOptions {
            heartbeat_interval: self.interval,
            heartbeat_ttl: self.ttl,
            retry_delay: self.interval / 10,
            ..DiscoveryOptions::default()
        }
    }

    /// Longest wait for one event.
    fn event_wait(&self) -> Duration {
        self.ttl * 2 + self.expiry_slack
    }
}

// ----- helpers -------------------------------------------------------------------------------------

/// A node id (panics on an invalid literal; test input only).
pub fn id(text: &str) -> NodeId {
    NodeId::new(text).expect("valid test node id")
}

/// An address (panics on an invalid literal; test input only).
pub fn addr(text: &str) -> Address {
    Address::parse(text).expect("valid test address")
}

/// A service from `name` or `name@version` (panics on an invalid literal; test input only).
pub fn svc(text: &str) -> ServiceInfo {
    ServiceInfo::parse(text).expect("valid test service")
}

/// A registration with the suite's TTL.
pub fn registration(node: &str, address: &str, services: &[&str], timing: Timing) -> Registration {
    Registration::new(id(node), addr(address), services.iter().map(|s| svc(s)).collect(), timing.ttl)
        .expect("valid test registration")
}

/// A node as a store holds it: at `h:1`, `UP`, providing `services` (`name@version`), its times
/// zero and a 1 s TTL — the fixture of unit tests that need a `NodeInfo` without a store.
pub fn node_info(node: &str, services: &[&str]) -> NodeInfo {
    registration(node, "h:1", services, Timing { ttl: Duration::from_secs(1), ..Timing::default() })
        .to_node(0, 0)
}

pub(crate) fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
    nodes.iter().map(|n| n.node_id.as_str()).collect()
}

/// The next watch item, failing the test if none arrives within `wait`.
pub async fn next_item(stream: &mut WatchStream, wait: Duration) -> WatchEvent {
    match timeout(wait, stream.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("watch stream failed: {e}"),
        Ok(None) => panic!("watch stream ended"),
        Err(_) => panic!("no watch item within {wait:?}"),
    }
}

/// The next watch item, which must be an event.
pub async fn next_event(stream: &mut WatchStream, wait: Duration) -> DiscoveryEvent {
    match next_item(stream, wait).await {
        WatchEvent::Event(e) => e,
        WatchEvent::Resync(s) => panic!("expected an event, got a resync at {}", s.revision),
        WatchEvent::Peer(e) => panic!("expected a logged event, got a peer event {e:?}"),
    }
}

/// Fails the test if the stream yields anything within `wait`.
pub async fn assert_quiet(stream: &mut WatchStream, wait: Duration) {
    if let Ok(item) = timeout(wait, stream.next()).await {
        panic!("expected no watch item, got {item:?}");
    }
}

pub(crate) fn summary(e: &DiscoveryEvent) -> (EventKind, &str, Option<DeregisterReason>) {
    (e.kind, e.node.node_id.as_str(), e.reason)
}

/// Collects events handed to agent handlers.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<DiscoveryEvent>>>);

impl Recorder {
    /// A handler that records into this recorder.
    pub fn handler(&self) -> impl Fn(&DiscoveryEvent) + Send + Sync + 'static {
        let events = Arc::clone(&self.0);
        move |e: &DiscoveryEvent| events.lock().unwrap_or_else(|p| p.into_inner()).push(e.clone())
    }

    /// `(kind, node id)` of everything recorded so far.
    pub fn seen(&self) -> Vec<(EventKind, String)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| (e.kind, e.node.node_id.to_string()))
            .collect()
    }

    /// Waits (on tokio time) until `predicate` holds for the recorded events, up to `wait`.
    pub async fn wait_for(&self, wait: Duration, predicate: impl Fn(&[(EventKind, String)]) -> bool) {
        let deadline = Instant::now() + wait;
        while !predicate(&self.seen()) {
            assert!(Instant::now() < deadline, "handlers saw {:?}", self.seen());
            sleep(Duration::from_millis(5)).await;
        }
    }
}

pub(crate) fn agent_for<R: Registry + Clone>(
    registry: &R,
    timing: Timing,
    node: &str,
    port: u16,
    services: &[&str],
) -> Agent {
    let mut builder = Agent::builder(registry.clone())
        .options(timing.options())
        .node_id(id(node))
        .address(addr(&format!("127.0.0.1:{port}")));
    for s in services {
        builder = builder.service(svc(s));
    }
    builder.build().expect("valid agent")
}

/// Waits until `check` returns true, polling on tokio time, up to `wait`.
pub(crate) async fn eventually<F: std::future::Future<Output = bool>>(
    wait: Duration,
    what: &str,
    check: impl Fn() -> F,
) {
    let deadline = Instant::now() + wait;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(5)).await;
    }
}
