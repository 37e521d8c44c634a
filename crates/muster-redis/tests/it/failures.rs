//! Failures: Redis killed and restarted, Sentinel failover, watchers that disconnect, trimmed
//! history, and several sweepers competing.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use muster_agent::Agent;
use muster_core::{
    DeregisterReason, DiscoveryOptions, EventKind, Registry, ServiceQuery, WatchEvent, WatchStart,
};
use muster_redis::{RedisConfig, RedisRegistry};
use muster_testkit::conformance::{addr, id, next_event, next_item, registration, svc};
use muster_testkit::redis_server::{RedisCluster, RedisServer, SentinelSetup};
use tokio::time::{Instant, sleep};

use crate::{TIMING, registry};

fn options() -> DiscoveryOptions {
    DiscoveryOptions {
        heartbeat_interval: TIMING.interval,
        heartbeat_ttl: TIMING.ttl,
        retry_delay: Duration::from_millis(50),
        ..DiscoveryOptions::default()
    }
}

async fn agent(registry: &RedisRegistry, node: &str, service: &str) -> Agent {
    let agent = Agent::builder(registry.clone())
        .options(options())
        .node_id(id(node))
        .address(addr("127.0.0.1:9000"))
        .service(svc(service))
        .build()
        .unwrap();
    agent.start().await.unwrap();
    agent
}

/// Polls `check` every 50 ms until it holds, failing after `wait`.
async fn until<F: std::future::Future<Output = bool>>(wait: Duration, what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + wait;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

async fn active_ids(registry: &RedisRegistry) -> Vec<String> {
    match registry.list_active().await {
        Ok(nodes) => nodes.into_iter().map(|n| n.node_id.to_string()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Redis dies (SIGKILL, no persistence) and comes back empty: agents re-register within a
/// heartbeat or two, caches and watchers resynchronise, and every node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_without_persistence() {
    let mut server = RedisServer::start().await;
    let registry = registry(&server.url(), "titan:discovery").await;
    let a = agent(&registry, "a", "users@1.0.0").await;
    let b = agent(&registry, "b", "orders@1.0.0").await;
    let client = Agent::builder(registry.clone())
        .options(DiscoveryOptions { client_mode: true, ..options() })
        .address(addr("127.0.0.1:1"))
        .build()
        .unwrap();
    client.start().await.unwrap();
    let mut watch = registry.watch(WatchStart::Snapshot).await.unwrap();
    let WatchEvent::Resync(before) = next_item(&mut watch, Duration::from_secs(5)).await else {
        panic!("a snapshot watch starts with a resync");
    };
    assert_eq!(before.nodes.len(), 2);

    server.kill();
    sleep(TIMING.interval * 3).await;
    assert!(registry.list_active().await.unwrap_err().is_retryable(), "a dead store is a retryable error");
    server.restart().await;

    until(Duration::from_secs(10), "both agents re-registered", || async {
        active_ids(&registry).await == ["a", "b"]
    })
    .await;
    until(Duration::from_secs(10), "the client's cache holds both again", || async {
        client.cache().find(&ServiceQuery::new("users").unwrap()).is_ok_and(|n| n.len() == 1)
            && client.cache().find(&ServiceQuery::new("orders").unwrap()).is_ok_and(|n| n.len() == 1)
    })
    .await;
    // The watcher's stream broke with a retryable error; resumed, it is told to resync.
    let mut last = before.revision;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("an item") {
            Some(Ok(item)) => last = item.revision(),
            Some(Err(error)) => {
                assert!(error.is_retryable(), "{error}");
                break;
            }
            None => break,
        }
    }
    let mut resumed = registry.watch(WatchStart::After(last)).await.unwrap();
    match next_item(&mut resumed, Duration::from_secs(5)).await {
        WatchEvent::Resync(snapshot) => assert_eq!(snapshot.nodes.len(), 2),
        WatchEvent::Event(e) | WatchEvent::Peer(e) => panic!("expected a resync after data loss, got {e:?}"),
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    client.stop().await.unwrap();
}

/// With persistence (AOF), a watcher resumes from its revision across a restart and receives
/// exactly the events it missed — no resync needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_across_a_restart_with_persistence() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let url = server.url();
    let registry = registry(&url, "titan:discovery").await;
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    registry.heartbeat(registration("n1", "h:1", &["a"], long)).await.unwrap();
    let mark = registry.current_revision().await.unwrap();
    server.restart().await;
    for i in 2..=6 {
        let node = format!("n{i}");
        // The first call after the restart may meet the broken connection; the registry reconnects.
        until(Duration::from_secs(5), "the write lands", || async {
            registry.heartbeat(registration(&node, "h:1", &["a"], long)).await.is_ok()
        })
        .await;
    }
    let mut watch = registry.watch(WatchStart::After(mark)).await.unwrap();
    for i in 2..=6 {
        let event = next_event(&mut watch, Duration::from_secs(5)).await;
        assert_eq!((event.kind, event.node.node_id.to_string()), (EventKind::Registered, format!("n{i}")));
    }
}

/// A watcher that disconnects while events happen receives every one of them, in order, when it
/// comes back with its last revision.
#[tokio::test]
async fn disconnected_watcher_receives_everything() {
    let (_server, registry) = crate::standalone().await;
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    registry.heartbeat(registration("first", "h:1", &["a"], long)).await.unwrap();
    let seen = next_event(&mut watch, Duration::from_secs(5)).await.revision;
    drop(watch);
    for i in 0..50 {
        registry.heartbeat(registration(&format!("n{i}"), "h:1", &["a"], long)).await.unwrap();
    }
    registry.deregister(&id("first"), muster_core::DeregisterReason::Graceful).await.unwrap();
    let mut watch = registry.watch(WatchStart::After(seen)).await.unwrap();
    let mut previous = seen;
    for i in 0..50 {
        let event = next_event(&mut watch, Duration::from_secs(5)).await;
        assert_eq!(event.revision, previous.next(), "no gaps, no duplicates");
        assert_eq!(event.node.node_id.to_string(), format!("n{i}"));
        previous = event.revision;
    }
    assert_eq!(next_event(&mut watch, Duration::from_secs(5)).await.kind, EventKind::Deregistered);
}

/// A revision trimmed from the log gets the resync signal.
#[tokio::test]
async fn trimmed_revision_resyncs() {
    let server = RedisServer::start().await;
    let config = RedisConfig { event_history: 10, ..RedisConfig::from_url(&server.url()).unwrap() };
    let registry = RedisRegistry::connect(config).await.unwrap();
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    registry.heartbeat(registration("n0", "h:1", &["a"], long)).await.unwrap();
    let mark = registry.current_revision().await.unwrap();
    for i in 1..=30 {
        registry.heartbeat(registration(&format!("n{i}"), "h:1", &["a"], long)).await.unwrap();
    }
    assert_eq!(server.cli(&["xlen", "titan:discovery:log"]), "10", "the log is trimmed to its history");
    let mut watch = registry.watch(WatchStart::After(mark)).await.unwrap();
    match next_item(&mut watch, Duration::from_secs(5)).await {
        WatchEvent::Resync(snapshot) => {
            assert_eq!(snapshot.nodes.len(), 31);
            assert_eq!(snapshot.revision, registry.current_revision().await.unwrap());
        }
        other => panic!("expected a resync, got {other:?}"),
    }
}

/// Several processes run sweepers; each expiry is announced exactly once, and a node whose
/// heartbeat is still there when its recorded deadline passes is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_sweepers_expire_once_and_recheck_heartbeats() {
    let server = RedisServer::start().await;
    let mut registries = Vec::new();
    for _ in 0..3 {
        registries.push(registry(&server.url(), "titan:discovery").await);
    }
    let mut watch = registries[0].watch(WatchStart::Now).await.unwrap();
    registries[1].heartbeat(registration("doomed", "h:1", &["a"], TIMING)).await.unwrap();
    assert_eq!(next_event(&mut watch, Duration::from_secs(5)).await.kind, EventKind::Registered);
    let expiry = next_event(&mut watch, TIMING.ttl + TIMING.expiry_slack).await;
    assert_eq!(
        (expiry.kind, expiry.reason),
        (EventKind::Deregistered, Some(muster_core::DeregisterReason::Expired))
    );
    assert!(
        tokio::time::timeout(TIMING.ttl, watch.next()).await.is_err(),
        "one expiry event, not one per sweeper"
    );

    // A deadline in the past with a live heartbeat key: the sweep re-checks and keeps the node.
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    registries[2].heartbeat(registration("lively", "h:1", &["a"], long)).await.unwrap();
    server.cli(&["zadd", "titan:discovery:index:deadlines", "1", "lively"]);
    registries[0].sweep_now().await.unwrap();
    assert!(registries[0].is_active(&id("lively")).await.unwrap());
    let score: f64 = server.cli(&["zscore", "titan:discovery:index:deadlines", "lively"]).parse().unwrap();
    assert!(score > 1_600_000_000_000.0, "the deadline was moved to the heartbeat's, got {score}");
}

/// The master dies while agents heartbeat through Sentinel: they follow the new master and no node
/// is lost once the failover has converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_while_agents_heartbeat() {
    let mut setup = SentinelSetup::start().await;
    let registry = registry(&setup.url(), "titan:discovery").await;
    let mut agents = Vec::new();
    for (node, service) in [("s1", "users"), ("s2", "users"), ("s3", "orders")] {
        agents.push(agent(&registry, node, service).await);
    }
    let old_master = setup.master.port();
    setup.master.kill();
    until(Duration::from_secs(30), "the sentinels promote the replica", || async {
        setup.current_master_port().is_some_and(|port| port != old_master)
    })
    .await;
    assert_eq!(setup.current_master_port(), Some(setup.replica.port()));
    until(Duration::from_secs(15), "every agent is registered on the new master", || async {
        active_ids(&registry).await == ["s1", "s2", "s3"]
    })
    .await;
    assert_eq!(
        setup.replica.cli(&["scard", "titan:discovery:index:nodes"]),
        "3",
        "written on the new master"
    );
    for agent in &agents {
        assert!(agent.is_registered());
    }
    for agent in agents {
        agent.stop().await.unwrap();
    }
    assert!(active_ids(&registry).await.is_empty());
}

/// `shutdown` stops the background work and waits for it: the sweeper's lease is released when it
/// returns, watch streams end, and another process's sweeper takes over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_lease_and_ends_watches() {
    let server = RedisServer::start().await;
    let first = registry(&server.url(), "shut").await;
    until(Duration::from_secs(5), "the sweeper holds its lease", || async {
        server.cli(&["exists", "shut:sweeper"]).trim() == "1"
    })
    .await;
    let mut watch = first.watch(WatchStart::Now).await.unwrap();
    first.shutdown().await.unwrap();
    assert_eq!(server.cli(&["exists", "shut:sweeper"]).trim(), "0", "released before shutdown returned");
    let ended = tokio::time::timeout(Duration::from_secs(2), watch.next()).await.expect("the watch ends");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    // Another registry expires nodes at once.
    let second = registry(&server.url(), "shut").await;
    let quick =
        muster_core::Registration::new(id("quick"), addr("h:1"), vec![svc("a")], Duration::from_millis(300))
            .unwrap();
    second.heartbeat(quick).await.unwrap();
    until(Duration::from_secs(3), "the node expires", || async { active_ids(&second).await.is_empty() })
        .await;
}

/// An event-log entry the watcher cannot read (written by something else, or damaged) is a gap
/// like any other: the watcher resyncs instead of skipping the change silently.
#[tokio::test]
async fn unreadable_log_entry_resyncs() {
    let server = RedisServer::start().await;
    let registry = registry(&server.url(), "titan:discovery").await;
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    registry.heartbeat(registration("n0", "h:1", &["a"], long)).await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let revision = server.cli(&["incr", "titan:discovery:revision"]);
    server.cli(&["xadd", "titan:discovery:log", &format!("{revision}-0"), "garbage", "1"]);
    registry.heartbeat(registration("n1", "h:2", &["a"], long)).await.unwrap();
    match next_item(&mut watch, Duration::from_secs(5)).await {
        WatchEvent::Resync(snapshot) => {
            let ids: Vec<_> = snapshot.nodes.iter().map(|n| n.node_id.to_string()).collect();
            assert!(ids.contains(&"n0".to_owned()), "{ids:?}");
            assert!(snapshot.revision.0 >= revision.parse::<u64>().unwrap(), "{snapshot:?}");
        }
        other => panic!("expected a resync in place of the unreadable entry, got {other:?}"),
    }
}

/// A replica promoted without the primary's last writes (a failover after asynchronous
/// replication): a registry on the new primary does not issue again a revision the old one issued
/// (watchers saw it for another change); the counter jumps past it, so watchers resync.
#[tokio::test]
async fn a_promoted_replica_does_not_reissue_revisions() {
    let primary = RedisServer::start().await;
    let replica = RedisServer::replica_of(&primary).await;
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    let old = registry(&primary.url(), "titan:discovery").await;
    old.heartbeat(registration("n1", "h:1", &["a"], long)).await.unwrap();
    let replicated = old.current_revision().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while replica.cli(&["get", "titan:discovery:revision"]) != replicated.0.to_string() {
        assert!(tokio::time::Instant::now() < deadline, "n1 reached the replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The replica is promoted; the old primary, not yet told, takes one more write.
    assert_eq!(replica.cli(&["replicaof", "no", "one"]), "OK");
    let outcome = old.heartbeat(registration("n2", "h:2", &["a"], long)).await.unwrap();
    let lost = outcome.revision.expect("n2 got a revision");
    assert!(lost > replicated);
    // A registry of the new primary writes next.
    let new = registry(&replica.url(), "titan:discovery").await;
    let mut watch = new.watch(WatchStart::After(replicated)).await.unwrap();
    let outcome = new.heartbeat(registration("n3", "h:3", &["a"], long)).await.unwrap();
    let next = outcome.revision.expect("n3 got a revision");
    assert!(next > lost, "revision {} was issued by the old primary for n2; n3 got {}", lost.0, next.0);
    // A watcher that had followed the old primary resyncs rather than read n3 as the next change.
    match next_item(&mut watch, Duration::from_secs(5)).await {
        WatchEvent::Resync(snapshot) => {
            let ids: Vec<String> = snapshot.nodes.iter().map(|n| n.node_id.to_string()).collect();
            assert_eq!(ids, ["n1", "n3"], "the new primary's state");
        }
        other => panic!("expected a resync, got {other:?}"),
    }
}

/// With `replica_acks`, a write is acknowledged only once a replica has it: while the replica is
/// frozen, writes fail as unavailable within the timeout (and stand once it thaws); without the
/// setting the same write is acknowledged at once.
#[tokio::test]
async fn replica_acks_hold_writes_until_a_replica_has_them() {
    let primary = RedisServer::start().await;
    let replica = RedisServer::replica_of(&primary).await;
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    let acked = acked_registry(&primary, Duration::from_millis(300)).await;
    let plain = registry(&primary.url(), "plain").await;
    acked.heartbeat(registration("a1", "h:1", &["a"], long)).await.unwrap();
    replica.signal("STOP");
    let refused = acked.heartbeat(registration("a2", "h:2", &["a"], long)).await.unwrap_err();
    assert_eq!(refused.kind(), muster_core::ErrorKind::Unavailable, "{refused}");
    assert!(refused.message().contains("0 of 1 replicas"), "{refused}");
    let refused = acked
        .deregister(&muster_core::NodeId::new("a1").unwrap(), DeregisterReason::Graceful)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), muster_core::ErrorKind::Unavailable, "{refused}");
    plain.heartbeat(registration("p1", "h:1", &["a"], long)).await.expect("acknowledged without the setting");
    replica.signal("CONT");
    // Every write is safe to repeat: the client's retry is acknowledged.
    acked.heartbeat(registration("a2", "h:2", &["a"], long)).await.unwrap();
    let removed =
        acked.deregister(&muster_core::NodeId::new("a1").unwrap(), DeregisterReason::Graceful).await;
    assert!(removed.is_ok(), "{removed:?}");
}

/// A registry under the prefix `acked` on `primary` whose writes wait up to `wait` for one replica.
async fn acked_registry(primary: &RedisServer, wait: Duration) -> RedisRegistry {
    let base = RedisConfig::from_url(&primary.url()).unwrap();
    let config = RedisConfig {
        prefix: "acked".into(),
        replica_acks: 1,
        replica_ack_timeout: wait,
        response_timeout: base.response_timeout.max(wait * 2),
        ..base
    };
    RedisRegistry::connect(config).await.unwrap()
}

/// With replica acks, a write's `WAIT` does not hold up the process's other traffic: reads go on
/// while a write waits for a replica that is frozen. The shared connection is a pipeline; a `WAIT`
/// on it blocked everything behind it until the replica answered or the timeout passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waiting_for_a_replica_holds_up_no_read() {
    let primary = RedisServer::start().await;
    let replica = RedisServer::replica_of(&primary).await;
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    // The write waits far longer than any read may take on a loaded machine: it ends only when the
    // replica thaws (below), so "the read answered first" is an ordering, not a margin.
    let acked = Arc::new(acked_registry(&primary, Duration::from_secs(600)).await);
    acked.heartbeat(registration("a1", "h:1", &["a"], long)).await.unwrap();
    replica.signal("STOP");
    let writing = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move { acked.heartbeat(registration("a2", "h:2", &["a"], long)).await })
    };
    // The write is in its WAIT once the primary holds a2 (the script ran; the replica cannot ack).
    let deadline = Instant::now() + Duration::from_secs(10);
    while primary.cli(&["exists", "acked:nodes:a2"]).trim() != "1" {
        assert!(Instant::now() < deadline, "the write reached the primary");
        sleep(Duration::from_millis(10)).await;
    }
    // Reads answer while the write still waits (the 20 s bound only turns a hang into a failure).
    let read = tokio::time::timeout(Duration::from_secs(20), acked.list_active()).await;
    let still_waiting = !writing.is_finished();
    replica.signal("CONT");
    let nodes = read.expect("a read waited behind the write's WAIT").unwrap();
    assert!(still_waiting, "the read answered only after the write's wait ended");
    assert!(nodes.iter().any(|n| n.node_id.as_str() == "a1"), "{nodes:?}");
    writing.await.unwrap().expect("acknowledged once the replica is back");
}

/// `offset` of a server's `INFO replication` (`master_repl_offset`: what it has written or
/// received).
fn replication_offset(server: &RedisServer) -> u64 {
    let info = server.cli(&["info", "replication"]);
    info.lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// [`a_promoted_replica_does_not_reissue_revisions`] on a Cluster, whose client follows a failover
/// inside (no new connection to check first): the master of the prefix's slot takes a write its
/// replica never gets (the replica frozen and its link cut), is SIGKILLed, and the
/// cluster promotes the replica. The next change through the same registry gets a revision past
/// the lost one, and a watcher resyncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_cluster_replica_does_not_reissue_revisions() {
    let mut cluster = RedisCluster::start_with_replicas().await;
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    let registry = registry(&cluster.url(), "titan:discovery").await;
    registry.heartbeat(registration("n1", "h:1", &["a"], long)).await.unwrap();
    let replicated = registry.current_revision().await.unwrap();
    let (master, replica) = cluster.owner("{titan:discovery}:revision");
    let replica = replica.expect("a replica");
    let deadline = Instant::now() + Duration::from_secs(5);
    while replication_offset(&cluster.servers[replica]) < replication_offset(&cluster.servers[master]) {
        assert!(Instant::now() < deadline, "n1 reached the replica");
        sleep(Duration::from_millis(20)).await;
    }
    // The replica, frozen, loses its link to the master (closed by the master, with nothing
    // unsent in it); the master takes one more write and dies.
    cluster.servers[replica].signal("STOP");
    assert_eq!(cluster.servers[master].cli(&["client", "kill", "type", "replica"]), "1");
    let outcome = registry.heartbeat(registration("n2", "h:2", &["a"], long)).await.unwrap();
    let lost = outcome.revision.expect("n2 got a revision");
    assert!(lost > replicated);
    cluster.servers[master].kill();
    cluster.servers[replica].signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.servers[replica].cli(&["role"]).starts_with("master") {
        assert!(Instant::now() < deadline, "the cluster promoted the replica");
        sleep(Duration::from_millis(20)).await;
    }
    // The same registry writes next, on the promoted replica.
    let outcome = loop {
        match registry.heartbeat(registration("n3", "h:3", &["a"], long)).await {
            Ok(outcome) => break outcome,
            Err(error) => {
                assert!(Instant::now() < deadline, "no write after the failover: {error}");
                sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let next = outcome.revision.expect("n3 got a revision");
    assert!(next > lost, "revision {} was issued by the old master for n2; n3 got {}", lost.0, next.0);
    let mut watch = registry.watch(WatchStart::After(replicated)).await.unwrap();
    match next_item(&mut watch, Duration::from_secs(5)).await {
        WatchEvent::Resync(snapshot) => {
            let ids: Vec<String> = snapshot.nodes.iter().map(|n| n.node_id.to_string()).collect();
            assert_eq!(ids, ["n1", "n3"], "the new master's state");
        }
        other => panic!("expected a resync, got {other:?}"),
    }
}

/// `replica_acks` on a Cluster: a write waits for the replica of the master of the prefix's slot,
/// that one only (another master that lost its replica does not hold it up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acks_on_a_cluster_wait_for_the_slot_owners_replica() {
    let mut cluster = RedisCluster::start_with_replicas().await;
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    let config = RedisConfig {
        prefix: "acked".into(),
        replica_acks: 1,
        replica_ack_timeout: Duration::from_millis(300),
        ..RedisConfig::from_url(&cluster.url()).unwrap()
    };
    let acked = RedisRegistry::connect(config).await.unwrap();
    acked.heartbeat(registration("a1", "h:1", &["a"], long)).await.unwrap();
    let (master, replica) = cluster.owner("{acked}:revision");
    let replica = replica.expect("a replica");
    // Another master's replica dies: that master has none left.
    let other = (0..cluster.servers.len())
        .find(|&i| i != master && i != replica && cluster.servers[i].cli(&["role"]).starts_with("slave"))
        .expect("another master's replica");
    let other_master: u16 = cluster.servers[other].cli(&["role"]).lines().nth(2).unwrap().parse().unwrap();
    cluster.servers[other].kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !muster_testkit::redis_server::cli(other_master, &["info", "replication"])
        .contains("connected_slaves:0")
    {
        assert!(Instant::now() < deadline, "the other master noticed its replica gone");
        sleep(Duration::from_millis(20)).await;
    }
    let outcome = acked.heartbeat(registration("a2", "h:2", &["a"], long)).await;
    assert!(outcome.is_ok(), "another master's replica does not hold the write: {outcome:?}");
    let replica = &cluster.servers[replica];
    replica.signal("STOP");
    let refused = acked.heartbeat(registration("a3", "h:3", &["a"], long)).await.unwrap_err();
    replica.signal("CONT");
    assert_eq!(refused.kind(), muster_core::ErrorKind::Unavailable, "{refused}");
    assert!(refused.message().contains("0 of 1 replicas"), "{refused}");
    acked.heartbeat(registration("a3", "h:3", &["a"], long)).await.expect("the retry is acknowledged");
}

/// A failover that loses the primary's last writes (the replica cut off first, so changes the
/// watchers saw never reach it): an agent's cache, watching through it, holds the registry's view
/// again within seconds of each failover, while a writer keeps moving nodes to other ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_follow_failovers_that_lose_writes() {
    let mut setup = SentinelSetup::start().await;
    let acked = || RedisConfig {
        replica_acks: 1,
        replica_ack_timeout: Duration::from_millis(500),
        ..RedisConfig::from_url(&setup.url()).unwrap()
    };
    let writer = RedisRegistry::connect(acked()).await.unwrap();
    let observed = RedisRegistry::connect(acked()).await.unwrap();
    let cache = Agent::builder(observed)
        .options(DiscoveryOptions { client_mode: true, ..options() })
        .node_id(id("observer"))
        .address(addr("127.0.0.1:9000"))
        .build()
        .unwrap();
    cache.start().await.unwrap();
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    let moving = writer.clone();
    let writes = tokio::spawn(async move {
        for n in 0u32.. {
            let node = format!("n{}", n % 8);
            let _ =
                moving.heartbeat(registration(&node, &format!("10.0.0.1:{}", 1000 + n), &["a"], long)).await;
            sleep(Duration::from_millis(20)).await;
        }
    });
    let view = |nodes: Vec<std::sync::Arc<muster_core::NodeInfo>>| -> Vec<String> {
        nodes.iter().map(|n| format!("{} {}", n.node_id, n.address)).collect()
    };
    for round in 0..6 {
        if round % 2 == 0 {
            setup.fail_over_losing_writes(Duration::from_millis(700)).await;
        } else {
            setup.fail_over().await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = writer.list_active().await.map(|n| n.into_iter().map(std::sync::Arc::new).collect());
            let held = cache.cache().nodes().map(view);
            let after = writer.list_active().await.map(|n| n.into_iter().map(std::sync::Arc::new).collect());
            if let (Ok(held), Ok(before), Ok(after)) = (&held, before.map(view), after.map(view))
                && (held == &before || held == &after)
            {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: the cache holds {held:?}");
            sleep(Duration::from_millis(50)).await;
        }
    }
    writes.abort();
    cache.stop().await.unwrap();
}

/// A switchover (`SENTINEL FAILOVER`: the master demoted, alive) while a watch reads the log: the
/// reader follows the new master rather than staying on the old one, which — here made to take
/// no more replication, as a demoted master cut off would — never sees the next change. (The fault
/// runs found it: a Sentinel switch with the old master alive left every watch of a process
/// silent for as long as the old master was cut off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_a_switchover_to_another_master() {
    let setup = SentinelSetup::start().await;
    let config = RedisConfig {
        response_timeout: Duration::from_secs(10),
        ..RedisConfig::from_url(&setup.url()).unwrap()
    };
    let registry = RedisRegistry::connect(config).await.unwrap();
    let long = muster_testkit::conformance::Timing { ttl: Duration::from_secs(60), ..TIMING };
    registry.heartbeat(registration("before", "h:1", &["a"], long)).await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let old = setup.current_master_port().unwrap();
    let sentinel = setup.sentinel_ports()[0];
    assert_eq!(muster_testkit::redis_server::cli(sentinel, &["sentinel", "failover", "mymaster"]), "OK");
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.current_master_port() == Some(old) {
        assert!(Instant::now() < deadline, "the Sentinels switched masters");
        sleep(Duration::from_millis(20)).await;
    }
    // Writes reach the new master (the registry followed the switch)...
    let new = setup.current_master_port().unwrap();
    loop {
        let written = registry.heartbeat(registration("probe", "h:3", &["a"], long)).await;
        if written.is_ok()
            && muster_testkit::redis_server::cli(new, &["sismember", "titan:discovery:index:nodes", "probe"])
                == "1"
        {
            break;
        }
        assert!(Instant::now() < deadline, "the registry writes on the new master");
        sleep(Duration::from_millis(50)).await;
    }
    // ...and the old master, demoted, takes no more replication (it stands alone until the
    // Sentinels notice, seconds later): a reader left on it would see nothing more.
    assert_eq!(muster_testkit::redis_server::cli(old, &["replicaof", "no", "one"]), "OK");
    let outcome = registry.heartbeat(registration("after", "h:2", &["a"], long)).await.unwrap();
    assert!(outcome.revision.is_some());
    let seen = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match next_item(&mut watch, Duration::from_secs(10)).await {
                WatchEvent::Event(event) if event.node.node_id.as_str() == "after" => return,
                WatchEvent::Resync(snapshot)
                    if snapshot.nodes.iter().any(|n| n.node_id.as_str() == "after") =>
                {
                    return;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the watch never saw the change made on the new master");
}
