//! The registry contract: registration, heartbeats, expiry, queries, updates, bad input.

use std::time::Duration;

use muster_agent::Agent;
use muster_core::{
    Address, Change, DeregisterReason, DiscoveryOptions, EventKind, NodeId, NodeStatus, NodeUpdate,
    Registration, Registry, ServiceInfo, ServiceQuery, VersionQuery, WatchStart,
};
use tokio::time::{Instant, sleep};

use super::*;

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
    assert_eq!(duplicate.unwrap().services(), [svc("a@1")], "an entry listed twice is kept once");
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

/// A service limit holds under concurrent writers: the check is part of the store's write. Nodes
/// already in the service may heartbeat and re-register; an update that would add a node to a full
/// service is refused and changes nothing.
pub async fn service_limit_is_atomic<R: Registry + Clone>(registry: R, timing: Timing) {
    const MAX: usize = 5;
    let writers: Vec<_> = (0..40)
        .map(|n| {
            let registry = registry.clone();
            let reg = registration(&format!("w{n}"), &format!("h:{}", 1000 + n), &["full"], timing)
                .with_service_limit(MAX);
            tokio::spawn(async move { registry.heartbeat(reg).await })
        })
        .collect();
    let mut accepted = Vec::new();
    for (n, writer) in writers.into_iter().enumerate() {
        match writer.await.expect("writer task") {
            Ok(_) => accepted.push(format!("w{n}")),
            Err(e) => assert_eq!(e.kind(), muster_core::ErrorKind::LimitExceeded, "{e}"),
        }
    }
    assert_eq!(accepted.len(), MAX, "exactly the limit is admitted: {accepted:?}");
    assert_eq!(registry.count_service("full").await.unwrap(), MAX);
    assert_eq!(registry.find(&ServiceQuery::new("full").unwrap()).await.unwrap().len(), MAX);
    // A member re-registers (with a change) at the limit.
    let member = &accepted[0];
    let port = 1000 + member[1..].parse::<usize>().unwrap();
    let again = registration(member, &format!("h:{port}"), &["full@2.0.0"], timing).with_service_limit(MAX);
    registry.heartbeat(again).await.expect("a member may re-register at the limit");
    // An outsider may not join by update either; its node stays as it was.
    registry.heartbeat(registration("outsider", "h:9", &["other"], timing)).await.unwrap();
    let before = registry.current_revision().await.unwrap();
    let update = NodeUpdate::new().services(vec![svc("other"), svc("full")]).unwrap().with_service_limit(MAX);
    let err = registry.update(&id("outsider"), update).await.unwrap_err();
    assert_eq!(err.kind(), muster_core::ErrorKind::LimitExceeded, "{err}");
    assert!(err.message().contains("`full`"), "{err}");
    assert_eq!(registry.get(&id("outsider")).await.unwrap().unwrap().services, vec![svc("other")]);
    assert_eq!(registry.current_revision().await.unwrap(), before, "a refused write publishes nothing");
    // Without a limit, or below it, writes go through.
    registry.deregister(&id(member), DeregisterReason::Graceful).await.unwrap();
    let update = NodeUpdate::new().services(vec![svc("full")]).unwrap().with_service_limit(MAX);
    registry.update(&id("outsider"), update).await.expect("a free slot");
    assert_eq!(registry.count_service("full").await.unwrap(), MAX);
}

/// A health check's verdict is a condition of the store's write: while a check holds a node
/// `DOWN`, no registration, heartbeat or update lifts it (the failure description stays; an
/// unchanged heartbeat stays unchanged); only the check's own update does, or a registration that
/// no longer asks for a check.
pub async fn check_verdict_holds_against_every_write<R: Registry>(registry: R, timing: Timing) {
    let long = Timing { ttl: timing.ttl * 20, ..timing };
    let meta = |pairs: &[(&str, &str)]| -> muster_core::Metadata {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    let asking = |pairs: &[(&str, &str)]| {
        registration("c1", "h:1", &["web"], long)
            .with_status(NodeStatus::Up)
            .with_metadata(meta(&[&[("check.type", "http")], pairs].concat()))
            .unwrap()
    };
    registry.heartbeat(asking(&[("zone", "a")])).await.unwrap();
    let down = NodeUpdate::new()
        .status(NodeStatus::Down)
        .metadata(meta(&[
            ("check.type", "http"),
            ("zone", "a"),
            ("check.output", "GET /health: HTTP 503"),
            ("check.since", "1700000000000"),
        ]))
        .unwrap()
        .as_check_verdict();
    let held = registry.update(&id("c1"), down).await.unwrap();
    assert!(held.held_by_check(), "{held:?}");
    // The failure description, with the time the verdict began.
    let output = |node: &muster_core::NodeInfo| {
        node.metadata
            .get("check.output")
            .map(|output| format!("{output} since {}", node.metadata.get("check.since").map_or("?", |s| s)))
    };
    let reason = Some("GET /health: HTTP 503 since 1700000000000".to_owned());

    // A registration asking for UP, with other metadata: still DOWN, reason kept, metadata applied.
    let outcome = registry.heartbeat(asking(&[("zone", "b")])).await.unwrap();
    assert_eq!((outcome.node.status, output(&outcome.node)), (NodeStatus::Down, reason.clone()));
    assert_eq!(outcome.node.metadata.get("zone").map(String::as_str), Some("b"));
    // The same again changes nothing.
    let again = registry.heartbeat(asking(&[("zone", "b")])).await.unwrap();
    assert_eq!(again.change, Change::Unchanged, "{again:?}");
    // A heartbeat asking for UP.
    let beat = registry.refresh(&id("c1"), Some(NodeStatus::Up)).await.unwrap();
    assert_eq!(beat.node.status, NodeStatus::Down);
    // Updates that are not the check's.
    let node = registry.update(&id("c1"), NodeUpdate::new().status(NodeStatus::Up)).await.unwrap();
    assert_eq!((node.status, output(&node)), (NodeStatus::Down, reason.clone()));
    let update = NodeUpdate::new().metadata(meta(&[("check.type", "http"), ("zone", "c")])).unwrap();
    let node = registry.update(&id("c1"), update).await.unwrap();
    assert_eq!((node.status, output(&node)), (NodeStatus::Down, reason.clone()));
    let stored = registry.get(&id("c1")).await.unwrap().unwrap();
    assert_eq!((stored.status, output(&stored)), (NodeStatus::Down, reason.clone()), "as stored");

    // The check's own update lifts it.
    let up = NodeUpdate::new()
        .status(NodeStatus::Up)
        .metadata(meta(&[("check.type", "http"), ("zone", "c")]))
        .unwrap()
        .as_check_verdict();
    let node = registry.update(&id("c1"), up).await.unwrap();
    assert_eq!((node.status, output(&node)), (NodeStatus::Up, None));

    // A registration that drops the check drops its verdict too.
    let down = NodeUpdate::new()
        .status(NodeStatus::Down)
        .metadata(meta(&[("check.type", "http"), ("check.output", "refused")]))
        .unwrap()
        .as_check_verdict();
    registry.update(&id("c1"), down).await.unwrap();
    let plain = registration("c1", "h:1", &["web"], long).with_status(NodeStatus::Up);
    let outcome = registry.heartbeat(plain).await.unwrap();
    assert_eq!((outcome.node.status, output(&outcome.node)), (NodeStatus::Up, None));
}

/// A write — registration, update, removal — can carry, as a condition checked inside the store's
/// atomic write, what an access decision read of the stored node (`StoredServices`): when the node
/// changed in between, the write is refused with `Conflict` and changes nothing.
pub async fn writes_conditional_on_the_stored_node<R: Registry>(registry: R, timing: Timing) {
    use muster_core::{ErrorKind, StoredServices};
    let long = Timing { ttl: timing.ttl * 20, ..timing };
    let names = |list: &[&str]| StoredServices::Names(list.iter().map(|s| (*s).to_owned()).collect());
    // Decided on "absent", but the node exists by now.
    registry.heartbeat(registration("w1", "h:1", &["web", "db"], long)).await.unwrap();
    let before = registry.get(&id("w1")).await.unwrap().unwrap();
    let takeover = registration("w1", "h:2", &["web"], long);
    let refused = registry.heartbeat(takeover.clone().if_stored(StoredServices::Absent)).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict, "{refused}");
    // Decided on a node providing only `web`, but it provides `db` too.
    let refused = registry.heartbeat(takeover.clone().if_stored(names(&["web"]))).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict, "{refused}");
    let update = NodeUpdate::new().services(vec![svc("web")]).unwrap();
    let refused = registry.update(&id("w1"), update.clone().if_stored(names(&["web"]))).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict, "{refused}");
    assert_eq!(registry.get(&id("w1")).await.unwrap().unwrap(), before, "refusals change nothing");
    // What the decision saw still holds: the writes go through.
    let node = registry.update(&id("w1"), update.if_stored(names(&["db", "web"]))).await.unwrap();
    assert_eq!(node.services, vec![svc("web")]);
    let outcome = registry.heartbeat(takeover.if_stored(names(&["web"]))).await.unwrap();
    assert_eq!(outcome.node.address.as_str(), "h:2");
    let fresh = registration("w2", "h:3", &["web"], long).if_stored(StoredServices::Absent);
    assert_eq!(registry.heartbeat(fresh).await.unwrap().change, Change::Registered);

    // Removals too.
    for stale in [StoredServices::Absent, names(&["web", "db"])] {
        let refused =
            registry.deregister_if(&id("w2"), DeregisterReason::Graceful, &stale).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Conflict, "{refused}");
    }
    assert!(registry.is_active(&id("w2")).await.unwrap(), "a refused removal removes nothing");
    assert!(registry.deregister_if(&id("w2"), DeregisterReason::Graceful, &names(&["web"])).await.unwrap());
    assert!(
        !registry
            .deregister_if(&id("w2"), DeregisterReason::Graceful, &StoredServices::Absent)
            .await
            .unwrap()
    );
}
