//! The agent on the backend: lifecycle, service changes, handlers, cache, retries.

use std::time::Duration;

use muster_agent::Agent;
use muster_core::{
    DeregisterReason, DiscoveryOptions, EventKind, Registry, ServiceInfo, ServiceQuery, WatchStart,
};
use tokio::time::sleep;

use super::*;

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

    // An entry listed twice is kept once.
    agent.update_services(vec![svc("x"), svc("z@9"), svc("x")]).await.unwrap();
    assert_eq!(stored().await.services, vec![svc("x"), svc("z@9")]);
    assert_eq!(agent.services(), vec![svc("x"), svc("z@9")], "the agent keeps what the store has");
    agent.update_services(vec![svc("z@9")]).await.unwrap();
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

/// An agent in client mode on `registry` through a fault injector, its handlers recorded, once its
/// cache is synced.
async fn synced_client_through_faults<R: Registry + Clone>(
    registry: &R,
    timing: Timing,
) -> (std::sync::Arc<FaultyRegistry<R>>, Agent, Recorder, muster_agent::EventSubscription) {
    let faulty = FaultyRegistry::new(registry.clone());
    let client = Agent::builder_shared(faulty.clone())
        .options(DiscoveryOptions { client_mode: true, ..timing.options() })
        .address(addr("h:1"))
        .build()
        .unwrap();
    let seen = Recorder::default();
    let subscription = client.on_event(seen.handler());
    client.start().await.unwrap();
    eventually(timing.event_wait(), "the cache is synced", || async { client.cache().is_synced() }).await;
    (faulty, client, seen, subscription)
}

/// When the watch breaks, the cache stops answering until the agent has resumed, and handlers get
/// every change made meanwhile.
pub async fn agent_cache_resyncs_after_broken_watch<R: Registry + Clone>(registry: R, timing: Timing) {
    let (faulty, client, seen, _sub) = synced_client_through_faults(&registry, timing).await;

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

/// A watch stream that ends without an error (a registry server restarting ends its streams
/// cleanly) is a break the agent did not ask for: it resumes, and its cache and handlers follow
/// the changes made after the end.
pub async fn agent_follows_after_a_clean_watch_end<R: Registry + Clone>(registry: R, timing: Timing) {
    let (faulty, client, seen, _sub) = synced_client_through_faults(&registry, timing).await;

    for round in 0..2 {
        faulty.end_watches();
        let long = Timing { ttl: timing.ttl * 20, ..timing };
        let node = format!("n{round}");
        registry.heartbeat(registration(&node, "h:1", &["a"], long)).await.unwrap();
        seen.wait_for(timing.event_wait() * 2, |s| s.contains(&(EventKind::Registered, node.clone()))).await;
        eventually(timing.event_wait() * 2, "the cache catches up", || async {
            client.cache().is_synced()
                && client.cache().revision() == registry.current_revision().await.unwrap()
        })
        .await;
    }
    let cached: Vec<_> = client
        .cache()
        .find(&ServiceQuery::new("a").unwrap())
        .unwrap()
        .iter()
        .map(|n| n.node_id.to_string())
        .collect();
    assert_eq!(cached, ["n0", "n1"]);
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
