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
    Address, Change, DeregisterReason, DiscoveryEvent, DiscoveryOptions, EventKind, NodeId, NodeInfo,
    NodeStatus, NodeUpdate, Registration, Registry, Revision, ServiceInfo, ServiceQuery, VersionQuery,
    WatchEvent, WatchStart, WatchStream,
};
use tokio::time::{Instant, sleep, timeout};

use crate::faults::FaultyRegistry;

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

fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
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

fn summary(e: &DiscoveryEvent) -> (EventKind, &str, Option<DeregisterReason>) {
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

fn agent_for<R: Registry + Clone>(
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
async fn eventually<F: std::future::Future<Output = bool>>(
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

// ----- the registry contract -----------------------------------------------------------------------

/// What a heartbeat writes is what every read returns.
pub async fn registration_round_trip<R: Registry>(registry: R, timing: Timing) {
    let reg = registration("n1", "10.0.0.1:8080", &["users@1.0.0", "auth"], timing)
        .with_status(NodeStatus::Starting)
        .with_metadata([("zone".into(), "eu-1".into())].into())
        .unwrap();
    let outcome = registry.heartbeat(reg).await.unwrap();
    assert_eq!(outcome.change, Change::Registered);
    let revision = outcome.revision.expect("a registration is an event");
    assert_eq!(registry.current_revision().await.unwrap(), revision);

    let node = registry.get(&id("n1")).await.unwrap().expect("registered node is readable");
    assert_eq!(node, outcome.node);
    assert_eq!(node.address.as_str(), "10.0.0.1:8080");
    assert_eq!(node.services, vec![svc("users@1.0.0"), svc("auth")]);
    assert_eq!(node.status, NodeStatus::Starting);
    assert_eq!(node.metadata.get("zone").map(String::as_str), Some("eu-1"));
    assert_eq!(node.ttl_ms, u64::try_from(timing.ttl.as_millis()).unwrap());
    assert!(node.timestamp_ms > 0 && node.registered_at_ms == node.timestamp_ms);

    assert!(registry.exists(&id("n1")).await.unwrap());
    assert!(registry.is_active(&id("n1")).await.unwrap());
    assert!(!registry.exists(&id("other")).await.unwrap());
    assert!(!registry.is_active(&id("other")).await.unwrap());
    assert_eq!(registry.get(&id("other")).await.unwrap(), None);
    assert_eq!(registry.list_active().await.unwrap(), vec![node.clone()]);
    assert_eq!(registry.list_all().await.unwrap(), vec![node.clone()]);
    assert_eq!(registry.find(&ServiceQuery::new("users").unwrap()).await.unwrap(), vec![node.clone()]);
    assert_eq!(registry.find(&ServiceQuery::new("auth").unwrap()).await.unwrap(), vec![node]);
    assert!(registry.find(&ServiceQuery::new("nothing").unwrap()).await.unwrap().is_empty());

    registry.heartbeat(registration("n0", "10.0.0.2:8080", &["users@1.0.0"], timing)).await.unwrap();
    assert_eq!(ids(&registry.list_active().await.unwrap()), ["n0", "n1"], "lists are ordered by node id");
}

/// A heartbeat that changes nothing produces no event; one that changes something produces one.
pub async fn unchanged_heartbeat_publishes_nothing<R: Registry>(registry: R, timing: Timing) {
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let first = registry.heartbeat(registration("n1", "h:1", &["a@1"], timing)).await.unwrap();
    let registered = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!(summary(&registered), (EventKind::Registered, "n1", None));
    assert_eq!(Some(registered.revision), first.revision);

    for _ in 0..3 {
        sleep(timing.interval).await;
        let again = registry.heartbeat(registration("n1", "h:1", &["a@1"], timing)).await.unwrap();
        assert_eq!((again.change, again.revision), (Change::Unchanged, None));
        assert!(again.node.timestamp_ms >= first.node.timestamp_ms);
        assert_eq!(again.node.registered_at_ms, first.node.registered_at_ms);
    }
    assert_eq!(registry.current_revision().await.unwrap(), registered.revision);

    let changed = registry.heartbeat(registration("n1", "h:1", &["a@2"], timing)).await.unwrap();
    assert_eq!(changed.change, Change::Updated);
    let updated = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!(summary(&updated), (EventKind::Updated, "n1", None));
    assert!(updated.revision > registered.revision, "revisions strictly increase");
    assert_eq!(updated.node.services, vec![svc("a@2")]);
    let status =
        registry.heartbeat(registration("n1", "h:1", &["a@2"], timing).with_status(NodeStatus::Down));
    assert_eq!(status.await.unwrap().change, Change::Updated, "a status change is a change");
    assert_eq!(next_event(&mut watch, timing.event_wait()).await.node.status, NodeStatus::Down);
    assert_quiet(&mut watch, timing.interval).await;
}

/// Regular heartbeats keep a node active across many TTLs, with no expiry.
pub async fn heartbeats_keep_node_alive<R: Registry>(registry: R, timing: Timing) {
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < timing.ttl * 10 {
        registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
        sleep(timing.interval).await;
        assert!(registry.is_active(&id("n1")).await.unwrap(), "expired while heartbeating");
    }
    assert_eq!(summary(&next_event(&mut watch, timing.interval).await), (EventKind::Registered, "n1", None));
    assert_quiet(&mut watch, timing.interval).await;
}

/// A node that stops heartbeating disappears after its TTL, and its expiry event arrives in time.
pub async fn silent_node_expires_with_event<R: Registry>(registry: R, timing: Timing) {
    registry.heartbeat(registration("keeper", "h:2", &["a"], timing)).await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let last_heartbeat = Instant::now();
    registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    assert_eq!(next_event(&mut watch, timing.event_wait()).await.kind, EventKind::Registered);

    // Keep the other node alive while n1 goes silent.
    let keeper = {
        let registry_keeps = async {
            loop {
                sleep(timing.interval).await;
                registry.heartbeat(registration("keeper", "h:2", &["a"], timing)).await.unwrap();
            }
        };
        let expiry = next_event(&mut watch, timing.ttl + timing.expiry_slack + timing.interval);
        tokio::select! {
            expiry = expiry => expiry,
            () = registry_keeps => unreachable!(),
        }
    };
    let elapsed = last_heartbeat.elapsed();
    assert_eq!(summary(&keeper), (EventKind::Deregistered, "n1", Some(DeregisterReason::Expired)));
    assert_eq!(keeper.node.address.as_str(), "h:1", "the event carries the node as last known");
    assert!(elapsed >= timing.ttl, "expired early: after {elapsed:?}, ttl {:?}", timing.ttl);
    assert!(elapsed <= timing.ttl + timing.expiry_slack, "expiry observed after {elapsed:?}");
    assert!(!registry.is_active(&id("n1")).await.unwrap());
    assert_eq!(ids(&registry.list_active().await.unwrap()), ["keeper"]);
    assert_eq!(ids(&registry.find(&ServiceQuery::new("a").unwrap()).await.unwrap()), ["keeper"]);
}

/// Deregistration removes a node at once with one graceful event; a second one is a no-op.
pub async fn deregister_removes_at_once<R: Registry>(registry: R, timing: Timing) {
    registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    assert!(registry.deregister(&id("n1"), DeregisterReason::Graceful).await.unwrap());
    assert!(!registry.exists(&id("n1")).await.unwrap());
    assert!(registry.list_all().await.unwrap().is_empty());
    assert!(registry.find(&ServiceQuery::new("a").unwrap()).await.unwrap().is_empty());
    let event = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!(summary(&event), (EventKind::Deregistered, "n1", Some(DeregisterReason::Graceful)));
    assert!(!registry.deregister(&id("n1"), DeregisterReason::Graceful).await.unwrap());
    assert!(!registry.deregister(&id("never"), DeregisterReason::Evicted).await.unwrap());
    assert_quiet(&mut watch, timing.interval).await;
}

/// Registering the same id again after expiry gives one node with the new values.
pub async fn reregistration_after_expiry<R: Registry>(registry: R, timing: Timing) {
    let first = registry.heartbeat(registration("n1", "h:1", &["a@1"], timing)).await.unwrap();
    sleep(timing.ttl + timing.expiry_slack + Duration::from_millis(1)).await;
    assert!(!registry.is_active(&id("n1")).await.unwrap());
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let again = registry.heartbeat(registration("n1", "h:9", &["b@2"], timing)).await.unwrap();
    assert_eq!(again.change, Change::Registered);
    assert!(again.node.registered_at_ms > first.node.registered_at_ms, "a new registration starts anew");
    let event = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!(summary(&event), (EventKind::Registered, "n1", None));
    let all = registry.list_all().await.unwrap();
    assert_eq!(all.len(), 1, "one node, not two: {all:?}");
    assert_eq!((all[0].address.as_str(), &all[0].services), ("h:9", &vec![svc("b@2")]));
    assert!(registry.find(&ServiceQuery::new("a").unwrap()).await.unwrap().is_empty());
    assert_eq!(ids(&registry.find(&ServiceQuery::new("b").unwrap()).await.unwrap()), ["n1"]);
}

/// Exact (Titan) and semver queries, including unversioned services.
pub async fn version_queries<R: Registry>(registry: R, timing: Timing) {
    for (node, services) in [
        ("v100", &["users@1.0.0"][..]),
        ("v120", &["users@1.2.0"]),
        ("v200", &["users@2.0.0"]),
        ("vnone", &["users"]),
        ("vtext", &["users@latest"]),
        ("both", &["users@1.0.0", "users@2.0.0"]),
    ] {
        registry.heartbeat(registration(node, "h:1", services, timing)).await.unwrap();
    }
    let check = |query: ServiceQuery, expect: &'static [&'static str]| {
        let registry = &registry;
        async move {
            let got = registry.find(&query).await.unwrap();
            assert_eq!(ids(&got), expect, "query {query}");
        }
    };
    check(ServiceQuery::titan("users", None).unwrap(), &["both", "v100", "v120", "v200", "vnone", "vtext"])
        .await;
    check(ServiceQuery::titan("users", Some("1.0.0")).unwrap(), &["both", "v100"]).await;
    check(ServiceQuery::titan("users", Some("latest")).unwrap(), &["vtext"]).await;
    check(ServiceQuery::titan("users", Some("1.0")).unwrap(), &[]).await;
    check(ServiceQuery::parse("users@^1.0").unwrap(), &["both", "v100", "v120"]).await;
    check(ServiceQuery::parse("users@^1.1").unwrap(), &["v120"]).await;
    let range = ServiceQuery::new("users").unwrap().with_version(VersionQuery::semver(">=1.1, <3").unwrap());
    check(range, &["both", "v120", "v200"]).await;
    check(ServiceQuery::parse("users@>=3").unwrap(), &[]).await;
    check(ServiceQuery::parse("other@^1").unwrap(), &[]).await;
}

/// Find-by-service follows service changes (the service index is kept in step).
pub async fn find_follows_service_changes<R: Registry>(registry: R, timing: Timing) {
    registry.heartbeat(registration("n1", "h:1", &["a", "b"], timing)).await.unwrap();
    registry.heartbeat(registration("n2", "h:2", &["a"], timing)).await.unwrap();
    registry.heartbeat(registration("n1", "h:1", &["b", "c"], timing)).await.unwrap();
    let find = |name: &'static str| {
        let registry = &registry;
        async move { registry.find(&ServiceQuery::new(name).unwrap()).await.unwrap() }
    };
    assert_eq!(ids(&find("a").await), ["n2"]);
    assert_eq!(ids(&find("b").await), ["n1"]);
    assert_eq!(ids(&find("c").await), ["n1"]);
    assert_eq!(registry.count_service("a").await.unwrap(), 1);
    assert_eq!(registry.count_service("c").await.unwrap(), 1);
    assert_eq!(registry.count_service("none").await.unwrap(), 0);
    assert!(registry.count_service("bad name").await.unwrap_err().is_invalid_input());
    registry.update(&id("n2"), NodeUpdate::new().services(vec![svc("c")]).unwrap()).await.unwrap();
    assert!(find("a").await.is_empty());
    assert_eq!(ids(&find("c").await), ["n1", "n2"]);
    registry.deregister(&id("n1"), DeregisterReason::Graceful).await.unwrap();
    assert!(find("b").await.is_empty());
    assert_eq!(ids(&find("c").await), ["n2"]);
    // `find_at` answers the same nodes with the revision they reflect.
    let (revision, nodes) = registry.find_at(&ServiceQuery::new("c").unwrap()).await.unwrap();
    assert_eq!(ids(&nodes), ["n2"]);
    assert_eq!(revision, registry.current_revision().await.unwrap());
    let (revision, nodes) = registry.find_at(&ServiceQuery::new("none").unwrap()).await.unwrap();
    assert!(nodes.is_empty());
    assert_eq!(revision, registry.current_revision().await.unwrap());
}

/// `update` changes an active node, emits one event, and does not extend its life.
pub async fn update_changes_without_extending_life<R: Registry>(registry: R, timing: Timing) {
    registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    sleep(timing.ttl / 2).await;
    let updated = registry.update(&id("n1"), NodeUpdate::new().address(addr("h:2"))).await.unwrap();
    assert_eq!(updated.address.as_str(), "h:2");
    assert_eq!(registry.get(&id("n1")).await.unwrap().unwrap().address.as_str(), "h:2");
    assert_eq!(summary(&next_event(&mut watch, timing.event_wait()).await), (EventKind::Updated, "n1", None));
    // The same value again is not a change.
    registry.update(&id("n1"), NodeUpdate::new().address(addr("h:2"))).await.unwrap();
    assert_quiet(&mut watch, Duration::from_millis(10)).await;
    // The update did not move the deadline: the node expires on its original schedule.
    sleep(timing.ttl / 2 + timing.expiry_slack + Duration::from_millis(1)).await;
    assert!(!registry.is_active(&id("n1")).await.unwrap(), "an update must not extend a node's life");
    let err = registry.update(&id("n1"), NodeUpdate::new().status(NodeStatus::Down)).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let err = registry.update(&id("ghost"), NodeUpdate::new().status(NodeStatus::Down)).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

/// Concurrent updates of different fields of one node all land.
pub async fn concurrent_updates_all_land<R: Registry>(registry: R, timing: Timing) {
    registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    let n1 = id("n1");
    let (a, b, c) = tokio::join!(
        registry.update(&n1, NodeUpdate::new().address(addr("h:2"))),
        registry.update(&n1, NodeUpdate::new().services(vec![svc("b@1")]).unwrap()),
        registry.update(&n1, NodeUpdate::new().status(NodeStatus::Down)),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let node = registry.get(&id("n1")).await.unwrap().unwrap();
    assert_eq!(
        (node.address.as_str(), &node.services, node.status),
        ("h:2", &vec![svc("b@1")], NodeStatus::Down)
    );
}

/// `refresh` heartbeats an active node with its stored values, changes its status with one event,
/// and never brings back a node that is gone.
pub async fn refresh_never_resurrects<R: Registry>(registry: R, timing: Timing) {
    assert!(registry.refresh(&id("ghost"), None).await.unwrap_err().is_not_found());
    registry.heartbeat(registration("n1", "h:1", &["a@1"], timing)).await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    sleep(timing.ttl / 2).await;
    let refreshed = registry.refresh(&id("n1"), None).await.unwrap();
    assert_eq!((refreshed.change, refreshed.revision), (Change::Unchanged, None));
    assert_eq!((refreshed.node.address.as_str(), &refreshed.node.services), ("h:1", &vec![svc("a@1")]));
    // 1.25 TTL after registering, 0.75 TTL after the refresh.
    sleep(timing.ttl * 3 / 4).await;
    assert!(registry.is_active(&id("n1")).await.unwrap(), "refresh extends the node's life");
    let down = registry.refresh(&id("n1"), Some(NodeStatus::Down)).await.unwrap();
    assert_eq!(down.change, Change::Updated);
    let event = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!((event.kind, event.node.status), (EventKind::Updated, NodeStatus::Down));
    assert_eq!(registry.refresh(&id("n1"), Some(NodeStatus::Down)).await.unwrap().change, Change::Unchanged);
    assert_eq!(registry.get(&id("n1")).await.unwrap().unwrap().status, NodeStatus::Down);
    registry.deregister(&id("n1"), DeregisterReason::Graceful).await.unwrap();
    assert!(registry.refresh(&id("n1"), None).await.unwrap_err().is_not_found());
    assert!(!registry.exists(&id("n1")).await.unwrap(), "a refresh never resurrects a removed node");
    registry.heartbeat(registration("n2", "h:2", &["a"], timing)).await.unwrap();
    sleep(timing.ttl + timing.expiry_slack + Duration::from_millis(1)).await;
    assert!(registry.refresh(&id("n2"), None).await.unwrap_err().is_not_found(), "nor an expired one");
}

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

/// Invalid input is refused with typed errors and changes nothing.
pub async fn bad_input_changes_nothing<R: Registry + Clone>(registry: R, timing: Timing) {
    registry.heartbeat(registration("n1", "h:1", &["a"], timing)).await.unwrap();
    let before = (registry.current_revision().await.unwrap(), registry.list_all().await.unwrap());

    let long = "x".repeat(200);
    for bad in ["", long.as_str(), "with space", "{brace}"] {
        assert!(NodeId::new(bad).unwrap_err().is_invalid_input(), "node id {bad:?}");
        assert!(ServiceInfo::new(bad, None).unwrap_err().is_invalid_input(), "service {bad:?}");
    }
    for bad in ["nohost", "h:0", "h:99999", "::1:80", "bad host:1", ""] {
        assert!(Address::parse(bad).unwrap_err().is_invalid_input(), "address {bad:?}");
    }
    let too_short = Registration::new(id("n1"), addr("h:1"), vec![], Duration::from_millis(1));
    assert!(too_short.unwrap_err().is_invalid_input());
    let duplicate = Registration::new(id("n1"), addr("h:1"), vec![svc("a@1"), svc("a@1")], timing.ttl);
    assert!(duplicate.unwrap_err().is_invalid_input());
    let options = DiscoveryOptions { heartbeat_ttl: timing.interval, ..timing.options() };
    let err = Agent::builder(registry.clone()).options(options).address(addr("h:1")).build().err().unwrap();
    assert!(err.is_invalid_input() && err.to_string().contains("must exceed"), "{err}");
    assert!(
        registry
            .update(&id("missing"), NodeUpdate::new().status(NodeStatus::Down))
            .await
            .unwrap_err()
            .is_not_found()
    );

    let after = (registry.current_revision().await.unwrap(), registry.list_all().await.unwrap());
    assert_eq!(before, after, "rejected input changed state");
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

// ----- the agent on the backend --------------------------------------------------------------------

/// Titan defaults, overrides, and rejected options.
pub async fn agent_defaults_and_overrides<R: Registry + Clone>(registry: R, timing: Timing) {
    let agent = Agent::builder(registry.clone()).address(addr("h:1")).build().unwrap();
    assert_eq!(agent.options(), &DiscoveryOptions::default());
    assert!(agent.node_id().as_str().starts_with(&format!("muster-{}-", std::process::id())));
    let other = Agent::builder(registry.clone()).address(addr("h:1")).build().unwrap();
    assert_ne!(agent.node_id(), other.node_id(), "generated ids are unique per agent");
    assert!(!agent.is_registered());

    let options =
        DiscoveryOptions { client_mode: true, max_retries: 7, prefix: "app:disc".into(), ..timing.options() };
    let custom = Agent::builder(registry.clone())
        .options(options.clone())
        .node_id_prefix("titan")
        .address(addr("[::1]:9000"))
        .service(svc("a@1"))
        .service(svc("a@1"))
        .build()
        .unwrap();
    assert_eq!(custom.options(), &options);
    assert!(custom.node_id().as_str().starts_with("titan-"));
    assert_eq!(custom.address().as_str(), "[::1]:9000");
    assert_eq!(custom.services(), vec![svc("a@1")], "builder drops duplicate services");

    let zero = DiscoveryOptions { max_retries: 0, ..timing.options() };
    assert!(
        Agent::builder(registry.clone())
            .options(zero)
            .address(addr("h:1"))
            .build()
            .err()
            .unwrap()
            .is_invalid_input()
    );
    assert!(registry.list_all().await.unwrap().is_empty(), "building agents writes nothing");
}

/// `start` awaits the first heartbeat; heartbeats then keep the node alive with one event only.
pub async fn agent_start_registers_and_heartbeats<R: Registry + Clone>(registry: R, timing: Timing) {
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let agent = agent_for(&registry, timing, "svc-1", 7001, &["users@1.0.0"]);
    agent.start().await.unwrap();
    assert!(agent.is_registered());
    let node = registry.get(&id("svc-1")).await.unwrap().expect("registered by start");
    assert_eq!((node.address.as_str(), &node.services), ("127.0.0.1:7001", &vec![svc("users@1.0.0")]));
    agent.start().await.unwrap(); // starting again does nothing
    sleep(timing.ttl * 5).await;
    assert!(registry.is_active(&id("svc-1")).await.unwrap(), "heartbeats keep the node alive");
    assert_eq!(
        summary(&next_event(&mut watch, timing.interval).await),
        (EventKind::Registered, "svc-1", None)
    );
    assert_quiet(&mut watch, timing.interval).await;
    agent.stop().await.unwrap();
}

/// `stop` deregisters at once with one graceful event; it is idempotent and concurrent-safe, and
/// `start` after it is refused.
pub async fn agent_stop_deregisters_once<R: Registry + Clone>(registry: R, timing: Timing) {
    let agent = agent_for(&registry, timing, "svc-1", 7001, &["a"]);
    agent.start().await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let twin = agent.clone();
    let (a, b) = tokio::join!(agent.stop(), twin.stop());
    a.unwrap();
    b.unwrap();
    agent.stop().await.unwrap();
    assert!(!agent.is_registered());
    assert!(!registry.exists(&id("svc-1")).await.unwrap(), "stop removes the node at once");
    let event = next_event(&mut watch, timing.event_wait()).await;
    assert_eq!(summary(&event), (EventKind::Deregistered, "svc-1", Some(DeregisterReason::Graceful)));
    assert_quiet(&mut watch, timing.ttl).await;
    let err = agent.start().await.unwrap_err();
    assert_eq!(err.kind(), muster_core::ErrorKind::Conflict, "{err}");
    assert!(!registry.exists(&id("svc-1")).await.unwrap(), "no heartbeat after stop");
}

/// Service and address changes reach the store at once; duplicates are ignored; bad input is refused.
pub async fn agent_service_changes<R: Registry + Clone>(registry: R, timing: Timing) {
    let agent = agent_for(&registry, timing, "svc-1", 7001, &["a@1"]);
    // Before start, changes are local only.
    agent.register_service(svc("b@1")).await.unwrap();
    assert!(!registry.exists(&id("svc-1")).await.unwrap());
    agent.start().await.unwrap();
    let stored = || {
        let registry = &registry;
        async move { registry.get(&id("svc-1")).await.unwrap().unwrap() }
    };
    assert_eq!(stored().await.services, vec![svc("a@1"), svc("b@1")]);

    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    agent.register_service(svc("c@1")).await.unwrap();
    assert_eq!(stored().await.services, vec![svc("a@1"), svc("b@1"), svc("c@1")], "immediate heartbeat");
    assert_eq!(next_event(&mut watch, timing.event_wait()).await.kind, EventKind::Updated);
    agent.register_service(svc("c@1")).await.unwrap();
    assert_quiet(&mut watch, Duration::from_millis(10)).await;
    assert_eq!(agent.services().len(), 3, "duplicates are ignored");

    agent.unregister_service("b").await.unwrap();
    assert_eq!(stored().await.services, vec![svc("a@1"), svc("c@1")]);
    agent.update_services(vec![svc("z@9")]).await.unwrap();
    assert_eq!(stored().await.services, vec![svc("z@9")]);
    agent.update_address(addr("10.9.9.9:1")).await.unwrap();
    assert_eq!(stored().await.address.as_str(), "10.9.9.9:1");
    assert_eq!(agent.address().as_str(), "10.9.9.9:1");

    let dup = agent.update_services(vec![svc("x"), svc("x")]).await.unwrap_err();
    assert!(dup.is_invalid_input());
    assert_eq!(agent.services(), vec![svc("z@9")], "rejected input changes nothing");
    assert_eq!(stored().await.services, vec![svc("z@9")]);
    let bad =
        ServiceInfo { name: "bad name".into(), version: None, metadata: Default::default(), weight: None };
    assert!(agent.register_service(bad).await.unwrap_err().is_invalid_input());
    assert_eq!(agent.services(), vec![svc("z@9")]);
    agent.stop().await.unwrap();
}

/// Concurrent address and service updates of the agent's own node both land.
pub async fn agent_concurrent_updates_both_land<R: Registry + Clone>(registry: R, timing: Timing) {
    let agent = agent_for(&registry, timing, "svc-1", 7001, &["a"]);
    agent.start().await.unwrap();
    let (a, b, c) = tokio::join!(
        agent.update_address(addr("h:2")),
        agent.update_services(vec![svc("b@2")]),
        agent.register_service(svc("c@3")),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let node = registry.get(&id("svc-1")).await.unwrap().unwrap();
    assert_eq!(node.address.as_str(), "h:2");
    assert!(
        node.services.contains(&svc("b@2")) && node.services.contains(&svc("c@3")),
        "{:?}",
        node.services
    );
    assert_eq!(node.services, agent.services(), "store and agent agree");
    sleep(timing.interval * 2).await;
    let later = registry.get(&id("svc-1")).await.unwrap().unwrap();
    assert_eq!(
        (later.address, later.services),
        (node.address, node.services),
        "periodic heartbeats keep both"
    );
    agent.stop().await.unwrap();
}

/// Several handlers each see events from other nodes; an unsubscribed one sees no more.
pub async fn agent_handlers_and_unsubscribe<R: Registry + Clone>(registry: R, timing: Timing) {
    let watcher = agent_for(&registry, timing, "watcher", 7000, &["w"]);
    let (first, second) = (Recorder::default(), Recorder::default());
    let sub_first = watcher.on_event(first.handler());
    let _sub_second = watcher.on_event(second.handler());
    watcher.start().await.unwrap();

    let peer = agent_for(&registry, timing, "peer", 7001, &["p@1"]);
    peer.start().await.unwrap();
    let registered = |seen: &[(EventKind, String)]| seen.contains(&(EventKind::Registered, "peer".into()));
    first.wait_for(timing.event_wait(), registered).await;
    second.wait_for(timing.event_wait(), registered).await;

    sub_first.unsubscribe();
    peer.update_address(addr("h:9")).await.unwrap();
    second.wait_for(timing.event_wait(), |s| s.contains(&(EventKind::Updated, "peer".into()))).await;
    assert!(!first.seen().iter().any(|(k, _)| *k == EventKind::Updated), "unsubscribed handler was called");

    peer.stop().await.unwrap();
    second.wait_for(timing.event_wait(), |s| s.contains(&(EventKind::Deregistered, "peer".into()))).await;
    assert_eq!(
        second.seen(),
        [
            (EventKind::Registered, "peer".into()),
            (EventKind::Updated, "peer".into()),
            (EventKind::Deregistered, "peer".into())
        ],
        "exactly one event per change, in order"
    );
    watcher.stop().await.unwrap();
}

/// Own events are filtered by default and delivered when filtering is off.
pub async fn agent_own_event_filtering<R: Registry + Clone>(registry: R, timing: Timing) {
    let filtered = agent_for(&registry, timing, "filtered", 7000, &["a"]);
    let unfiltered = Agent::builder(registry.clone())
        .options(timing.options())
        .node_id(id("unfiltered"))
        .address(addr("h:1"))
        .filter_own_events(false)
        .build()
        .unwrap();
    let (seen_filtered, seen_unfiltered) = (Recorder::default(), Recorder::default());
    let _a = filtered.on_event(seen_filtered.handler());
    let _b = unfiltered.on_event(seen_unfiltered.handler());
    filtered.start().await.unwrap();
    unfiltered.start().await.unwrap();
    filtered.update_address(addr("h:5")).await.unwrap();
    unfiltered.update_address(addr("h:6")).await.unwrap();
    seen_unfiltered
        .wait_for(timing.event_wait(), |s| s.contains(&(EventKind::Updated, "unfiltered".into())))
        .await;
    seen_filtered
        .wait_for(timing.event_wait(), |s| s.contains(&(EventKind::Updated, "unfiltered".into())))
        .await;
    assert!(seen_unfiltered.seen().contains(&(EventKind::Updated, "filtered".into())));
    assert!(
        !seen_filtered.seen().iter().any(|(_, n)| n == "filtered"),
        "own events reached a filtering agent"
    );
    filtered.stop().await.unwrap();
    unfiltered.stop().await.unwrap();
}

/// A client-mode agent never registers but discovers and watches.
pub async fn agent_client_mode<R: Registry + Clone>(registry: R, timing: Timing) {
    let client = Agent::builder(registry.clone())
        .options(DiscoveryOptions { client_mode: true, ..timing.options() })
        .node_id(id("client"))
        .address(addr("h:1"))
        .service(svc("ignored"))
        .build()
        .unwrap();
    let seen = Recorder::default();
    let _sub = client.on_event(seen.handler());
    client.start().await.unwrap();
    sleep(timing.ttl).await;
    assert!(!client.is_registered());
    assert!(registry.list_all().await.unwrap().is_empty(), "client mode registered a node");
    assert_eq!(client.heartbeat().await.unwrap_err().kind(), muster_core::ErrorKind::Conflict);
    assert!(client.register_node(id("x"), addr("h:1"), vec![]).await.is_err());
    client.register_service(svc("still-local")).await.unwrap();
    assert!(registry.list_all().await.unwrap().is_empty());

    let server = agent_for(&registry, timing, "server", 7001, &["api@1"]);
    server.start().await.unwrap();
    assert_eq!(ids(&client.find_nodes_by_service("api", Some("1")).await.unwrap()), ["server"]);
    seen.wait_for(timing.event_wait(), |s| s.contains(&(EventKind::Registered, "server".into()))).await;
    client.stop().await.unwrap();
    assert!(registry.exists(&id("server")).await.unwrap(), "stopping a client removes nothing");
    server.stop().await.unwrap();
}

/// Failed heartbeats are retried with backoff; a run of failures never stops the loop, and the next
/// success restores the node.
pub async fn agent_heartbeat_retries<R: Registry + Clone>(registry: R, timing: Timing) {
    let faulty = FaultyRegistry::new(registry.clone());
    let agent = Agent::builder_shared(faulty.clone())
        .options(timing.options())
        .node_id(id("flaky"))
        .address(addr("h:1"))
        .build()
        .unwrap();
    // Two failures, three attempts: start still succeeds.
    faulty.fail_heartbeats(2);
    agent.start().await.unwrap();
    assert_eq!(faulty.pending_heartbeat_failures(), 0);
    assert!(registry.is_active(&id("flaky")).await.unwrap());

    // A long outage: the node expires, the loop keeps going.
    faulty.fail_heartbeats(u32::MAX);
    sleep(timing.ttl * 2 + timing.expiry_slack).await;
    assert!(!registry.is_active(&id("flaky")).await.unwrap(), "node should expire during the outage");
    assert!(faulty.pending_heartbeat_failures() < u32::MAX - 3, "heartbeats kept being attempted");
    // The store comes back: the next heartbeat restores the node.
    faulty.fail_heartbeats(0);
    eventually(timing.interval * 2 + timing.expiry_slack, "the node is restored", || async {
        registry.is_active(&id("flaky")).await.unwrap()
    })
    .await;
    agent.stop().await.unwrap();

    // When every attempt of the first heartbeat fails, start reports it and may be retried.
    let late = Agent::builder_shared(faulty.clone())
        .options(timing.options())
        .node_id(id("late"))
        .address(addr("h:2"))
        .build()
        .unwrap();
    faulty.fail_heartbeats(3);
    assert!(late.start().await.unwrap_err().is_retryable());
    assert!(!late.is_registered());
    late.start().await.unwrap();
    assert!(registry.is_active(&id("late")).await.unwrap());
    late.stop().await.unwrap();
}

/// The cache answers lookups without the store and follows registrations, updates and expiries.
pub async fn agent_cache_follows_registry<R: Registry + Clone>(registry: R, timing: Timing) {
    registry.heartbeat(registration("early", "h:1", &["api@1.0.0"], timing)).await.unwrap();
    let client = Agent::builder(registry.clone())
        .options(DiscoveryOptions { client_mode: true, ..timing.options() })
        .address(addr("h:1"))
        .build()
        .unwrap();
    let query = ServiceQuery::parse("api@^1").unwrap();
    assert!(client.cache().find(&query).unwrap_err().is_retryable(), "not synced before start");
    client.start().await.unwrap();
    let cached_ids = || {
        client
            .cache()
            .find(&query)
            .map(|nodes| nodes.iter().map(|n| n.node_id.to_string()).collect::<Vec<_>>())
    };
    eventually(timing.event_wait(), "the cache holds the snapshot", || async { cached_ids().is_ok() }).await;
    assert_eq!(cached_ids().unwrap(), ["early"]);

    let server = agent_for(&registry, timing, "server", 7001, &["api@1.2.0"]);
    server.start().await.unwrap();
    eventually(timing.event_wait(), "the cache sees the new server", || async {
        cached_ids().unwrap() == ["early", "server"]
    })
    .await;
    assert_eq!(client.resolve(&query).await.unwrap().len(), 2);

    // "early" stops heartbeating: the expiry reaches the cache.
    eventually(
        timing.ttl + timing.expiry_slack + timing.event_wait(),
        "the cache drops the expired node",
        || async { cached_ids().unwrap() == ["server"] },
    )
    .await;
    server.update_services(vec![svc("api@2.0.0")]).await.unwrap();
    eventually(timing.event_wait(), "the cache applies the update", || async {
        cached_ids().unwrap().is_empty()
    })
    .await;
    assert_eq!(client.cache().revision(), registry.current_revision().await.unwrap());
    server.stop().await.unwrap();
    client.stop().await.unwrap();
    assert!(!client.cache().is_synced(), "a stopped agent's cache is not used");
}

/// When the watch breaks, the cache stops answering until the agent has resumed, and handlers get
/// every change made meanwhile.
pub async fn agent_cache_resyncs_after_broken_watch<R: Registry + Clone>(registry: R, timing: Timing) {
    let faulty = FaultyRegistry::new(registry.clone());
    let client = Agent::builder_shared(faulty.clone())
        .options(DiscoveryOptions { client_mode: true, ..timing.options() })
        .address(addr("h:1"))
        .build()
        .unwrap();
    let seen = Recorder::default();
    let _sub = client.on_event(seen.handler());
    client.start().await.unwrap();
    eventually(timing.event_wait(), "the cache is synced", || async { client.cache().is_synced() }).await;

    faulty.fail_watches(3);
    faulty.sever_watches();
    eventually(timing.event_wait(), "the cache notices the break", || async { !client.cache().is_synced() })
        .await;
    // Changes made while the watch is down (long-lived nodes, so none expires during the test).
    let long = Timing { ttl: timing.ttl * 20, ..timing };
    registry.heartbeat(registration("n1", "h:1", &["a"], long)).await.unwrap();
    registry.heartbeat(registration("n2", "h:2", &["a"], long)).await.unwrap();
    registry.deregister(&id("n1"), DeregisterReason::Graceful).await.unwrap();
    let query = ServiceQuery::new("a").unwrap();
    assert_eq!(
        ids(&client.resolve(&query).await.unwrap().iter().map(|n| (**n).clone()).collect::<Vec<_>>()),
        ["n2"],
        "resolve falls back to the store"
    );

    eventually(timing.event_wait() * 2, "the cache resumes", || async { client.cache().is_synced() }).await;
    eventually(timing.event_wait(), "the cache catches up", || async {
        client.cache().revision() == registry.current_revision().await.unwrap()
    })
    .await;
    let cached: Vec<_> = client.cache().find(&query).unwrap().iter().map(|n| n.node_id.to_string()).collect();
    assert_eq!(cached, ["n2"]);
    seen.wait_for(timing.event_wait(), |s| s.contains(&(EventKind::Deregistered, "n1".into()))).await;
    assert!(seen.seen().contains(&(EventKind::Registered, "n2".into())));
    client.stop().await.unwrap();
}

/// Titan's operations on any node: info, existence, activity, updates and removal.
pub async fn agent_operations_on_other_nodes<R: Registry + Clone>(registry: R, timing: Timing) {
    let agent = agent_for(&registry, timing, "me", 7000, &["mine@1"]);
    agent.start().await.unwrap();
    registry.heartbeat(registration("other", "h:1", &["theirs@1"], timing)).await.unwrap();

    assert_eq!(ids(&agent.get_active_nodes().await.unwrap()), ["me", "other"]);
    assert_eq!(agent.find_nodes().await.unwrap(), agent.get_active_nodes().await.unwrap());
    assert!(agent.node_exists(&id("other")).await.unwrap());
    assert!(agent.is_node_active(&id("other")).await.unwrap());
    assert_eq!(agent.get_node_info(&id("other")).await.unwrap().unwrap().address.as_str(), "h:1");
    assert_eq!(agent.get_node_info(&id("none")).await.unwrap(), None);
    assert_eq!(ids(&agent.find_nodes_by_service("theirs", Some("1")).await.unwrap()), ["other"]);
    assert!(agent.find_nodes_by_service("theirs", Some("2")).await.unwrap().is_empty());
    assert!(agent.find_nodes_by_service("bad name", None).await.unwrap_err().is_invalid_input());

    let moved = agent.update_node_address(&id("other"), addr("h:2")).await.unwrap();
    assert_eq!(moved.address.as_str(), "h:2");
    agent.update_node_services(&id("other"), vec![svc("new@2.0.0")]).await.unwrap();
    assert_eq!(ids(&agent.find(&ServiceQuery::parse("new@^2").unwrap()).await.unwrap()), ["other"]);
    assert!(agent.update_node_address(&id("ghost"), addr("h:3")).await.unwrap_err().is_not_found());

    // Updating our own node through the any-node API keeps the agent's state in step.
    agent.update_node_address(&id("me"), addr("h:7")).await.unwrap();
    assert_eq!(agent.address().as_str(), "h:7");
    sleep(timing.interval * 2).await;
    assert_eq!(registry.get(&id("me")).await.unwrap().unwrap().address.as_str(), "h:7");

    assert!(agent.deregister_node(&id("other")).await.unwrap());
    assert!(!agent.node_exists(&id("other")).await.unwrap());
    assert_eq!(ids(&agent.get_all_nodes().await.unwrap()), ["me"]);

    // register_node replaces the agent's identity and removes the old one.
    agent.register_node(id("me-2"), addr("h:8"), vec![svc("mine@2")]).await.unwrap();
    assert_eq!(agent.node_id(), id("me-2"));
    assert_eq!(ids(&agent.get_active_nodes().await.unwrap()), ["me-2"]);
    agent.stop().await.unwrap();
    assert!(agent.get_active_nodes().await.unwrap().is_empty());
}
