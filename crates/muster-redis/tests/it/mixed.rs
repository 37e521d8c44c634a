//! Mixed fleets: Muster and Titan peers (the emulator of `muster_testkit::titan`, seed 001's wire
//! operations) on one Redis. Every case runs with Titan's pub/sub off and on, on a standalone server
//! and on a Cluster.

use std::time::Duration;

use futures::StreamExt;
use muster_core::{
    DeregisterReason, DiscoveryEvent, EventKind, NodeId, Registry, ServiceQuery, WatchEvent, WatchStart,
};
use muster_redis::{RedisConfig, RedisRegistry};
use muster_testkit::conformance::{Timing, registration};
use muster_testkit::redis_server::{RedisCluster, RedisServer};
use muster_testkit::titan::{Titan, TitanOptions};
use serde_json::json;

/// Where the fleet runs.
enum Store {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

/// A Redis, a Titan process on it, and what Muster needs to connect.
struct Fleet {
    store: Store,
    titan: Titan,
    pubsub: bool,
}

impl Fleet {
    async fn start(cluster: bool, pubsub: bool) -> Self {
        let store = if cluster {
            Store::Cluster(RedisCluster::start().await)
        } else {
            Store::Standalone(RedisServer::start().await)
        };
        let mut options = TitanOptions::titan(pubsub);
        let urls = match &store {
            Store::Standalone(server) => vec![server.url()],
            Store::Cluster(cluster) => {
                // Titan's three-key script needs one slot: a hash-tagged prefix, as Muster uses.
                options.prefix = "{titan:discovery}".to_owned();
                cluster.servers.iter().map(RedisServer::url).collect()
            }
        };
        let titan = Titan::connect(&urls, options).await;
        Self { store, titan, pubsub }
    }

    /// Every key of every server, with type, value and whether it has a TTL.
    fn keyspace(&self) -> Vec<String> {
        match &self.store {
            Store::Standalone(server) => server.keyspace(),
            Store::Cluster(cluster) => cluster.servers.iter().flat_map(RedisServer::keyspace).collect(),
        }
    }

    fn url(&self) -> String {
        match &self.store {
            Store::Standalone(server) => server.url(),
            Store::Cluster(cluster) => cluster.url(),
        }
    }

    fn config(&self) -> RedisConfig {
        RedisConfig {
            pubsub_enabled: self.pubsub,
            reconcile_interval: Duration::from_millis(100),
            ..RedisConfig::from_url(&self.url()).unwrap()
        }
    }

    /// A Muster process with a sweeper (as `muster serve --redis` or an agent runs it).
    async fn muster(&self) -> RedisRegistry {
        RedisRegistry::connect(self.config()).await.unwrap()
    }

    /// A Muster process with a sweeper whose full reconciliation passes are a minute away: changes
    /// are found by hints or by the sweep only.
    async fn muster_with_far_passes(&self) -> RedisRegistry {
        let config = RedisConfig {
            reconcile_interval: Duration::from_secs(60),
            safety_interval: Duration::from_secs(60),
            ..self.config()
        };
        RedisRegistry::connect(config).await.unwrap()
    }

    /// A read-only inspection (as `muster nodes --redis` runs it).
    async fn inspector(&self) -> RedisRegistry {
        RedisRegistry::connect(RedisConfig { read_only: true, ..self.config() }).await.unwrap()
    }

    /// A Muster process that never sweeps: the test reconciles by hand.
    async fn manual(&self) -> RedisRegistry {
        RedisRegistry::connect(RedisConfig { sweeper: false, ..self.config() }).await.unwrap()
    }
}

/// Generates `standalone_pubsub_off`, `standalone_pubsub_on`, `cluster_pubsub_off`,
/// `cluster_pubsub_on` tests of one case.
macro_rules! fleet_cases {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone_pubsub_off() { super::$case(super::Fleet::start(false, false).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone_pubsub_on() { super::$case(super::Fleet::start(false, true).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster_pubsub_off() { super::$case(super::Fleet::start(true, false).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster_pubsub_on() { super::$case(super::Fleet::start(true, true).await).await }
        }
    )*};
}

fleet_cases!(
    reads_keep_what_titan_accepts,
    titan_changes_are_one_event_each,
    titan_removals_of_muster_nodes,
    find_sees_titan_nodes_at_once,
    one_validity_rule,
    store_reads_write_nothing,
    muster_nodes_speak_titan_on_the_channel,
);

/// Nodes that outlive every case unless removed.
const TIMING_LONG_TTL: Timing = Timing {
    interval: Duration::from_secs(5),
    ttl: Duration::from_secs(60),
    expiry_slack: Duration::from_secs(1),
};

fn ids(nodes: &[muster_core::NodeInfo]) -> Vec<&str> {
    nodes.iter().map(|n| n.node_id.as_str()).collect()
}

/// Items of a watch until nothing arrives for `quiet`.
async fn drain(watch: &mut muster_core::WatchStream, quiet: Duration) -> Vec<DiscoveryEvent> {
    let mut events = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(quiet, watch.next()).await {
        match item.expect("watch item") {
            WatchEvent::Event(event) | WatchEvent::Peer(event) => events.push(event),
            WatchEvent::Resync(snapshot) => panic!("unexpected resync {snapshot:?}"),
        }
    }
    events
}

/// The next event, waiting up to 5 s (detection takes at most the reconcile interval).
async fn next(watch: &mut muster_core::WatchStream) -> DiscoveryEvent {
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(Ok(WatchEvent::Event(event)))) => event,
        other => panic!("expected a logged event, got {other:?}"),
    }
}

/// Ids and addresses Titan accepts but Muster's own rules refuse are read as written, and no read
/// (nor the sweeper) deletes such nodes from under Titan.
async fn reads_keep_what_titan_accepts(fleet: Fleet) {
    let odd =
        [("worker@host-1", "10.0.0.1:1"), ("ws-node", "ws://10.8.8.9:9000"), ("v6-node", "fe80::1:9000")];
    for (id, address) in odd {
        fleet.titan.node(id, address, json!([{"name": "users", "version": "1.0.0"}])).heartbeat().await;
    }
    let inspector = fleet.inspector().await;
    let listed = inspector.list_active().await.unwrap();
    assert_eq!(ids(&listed), ["v6-node", "worker@host-1", "ws-node"]);
    let ws = listed.iter().find(|n| n.node_id.as_str() == "ws-node").unwrap();
    assert_eq!(
        (ws.address.as_str(), ws.address.host(), ws.address.port()),
        ("ws://10.8.8.9:9000", "10.8.8.9", 9000)
    );
    let v6 = inspector.get(&NodeId::from_wire("v6-node")).await.unwrap().unwrap();
    assert_eq!((v6.address.as_str(), v6.address.host_unbracketed()), ("fe80::1:9000", "fe80::1"));

    // A process with a sweeper adopts them; still nothing is removed from under Titan.
    let muster = fleet.manual().await;
    let mut watch = muster.watch(WatchStart::Now).await.unwrap();
    muster.sweep_now().await.unwrap();
    let mut adopted: Vec<String> = Vec::new();
    for _ in 0..3 {
        let event = next(&mut watch).await;
        assert_eq!(event.kind, EventKind::Registered);
        adopted.push(event.node.node_id.to_string());
    }
    adopted.sort();
    assert_eq!(adopted, ["v6-node", "worker@host-1", "ws-node"]);
    let found = muster.find(&ServiceQuery::parse("users@1.0.0").unwrap()).await.unwrap();
    assert_eq!(ids(&found), ["v6-node", "worker@host-1", "ws-node"]);
    let titan_view: Vec<String> =
        fleet.titan.get_active_nodes().await.into_iter().map(|n| n.node_id).collect();
    assert_eq!(titan_view, ["v6-node", "worker@host-1", "ws-node"], "Titan still lists them");
}

/// Every change a Titan peer makes becomes exactly one event, with the new values, whatever its
/// pub/sub setting; an unchanged heartbeat is none.
async fn titan_changes_are_one_event_each(fleet: Fleet) {
    let muster = fleet.muster().await;
    let mut watch = muster.watch(WatchStart::Now).await.unwrap();
    let mut node =
        fleet.titan.node("titan-1", "10.0.0.1:3000", json!([{"name": "auth", "version": "1.0.0"}]));

    node.heartbeat().await;
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.node.node_id.as_str()), (EventKind::Registered, "titan-1"));
    node.heartbeat().await; // unchanged
    node.update_services(json!([{"name": "auth", "version": "2.0.0"}])).await;
    let event = next(&mut watch).await;
    assert_eq!(event.kind, EventKind::Updated);
    assert_eq!(event.node.services[0].version.as_deref(), Some("2.0.0"));
    assert_eq!(muster.find(&ServiceQuery::parse("auth@2.0.0").unwrap()).await.unwrap().len(), 1);
    assert!(muster.find(&ServiceQuery::parse("auth@1.0.0").unwrap()).await.unwrap().is_empty());

    node.update_address("10.0.0.2:3000").await;
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.node.address.as_str()), (EventKind::Updated, "10.0.0.2:3000"));
    fleet.titan.update_node_address("titan-1", "10.0.0.3:3000").await;
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.node.address.as_str()), (EventKind::Updated, "10.0.0.3:3000"));
    fleet.titan.update_node_services("titan-1", &json!([{"name": "billing"}])).await;
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.node.services[0].name.as_str()), (EventKind::Updated, "billing"));
    assert!(
        muster.find(&ServiceQuery::new("auth").unwrap()).await.unwrap().is_empty(),
        "left the service index"
    );
    assert_eq!(muster.find(&ServiceQuery::new("billing").unwrap()).await.unwrap().len(), 1);

    node.stop().await;
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.reason), (EventKind::Deregistered, Some(DeregisterReason::Graceful)));
    assert_eq!(event.node.address.as_str(), "10.0.0.3:3000", "the node as last seen");
    assert!(muster.list_active().await.unwrap().is_empty());

    // A node that stops heartbeating expires (its key had a 700 ms TTL).
    let short = TitanOptions { heartbeat_ttl_ms: 700, ..fleet.titan.options.clone() };
    let mut quiet = fleet.titan.with_options(short).node("titan-2", "10.0.0.9:1", json!([]));
    quiet.heartbeat().await;
    assert_eq!(next(&mut watch).await.kind, EventKind::Registered);
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.reason), (EventKind::Deregistered, Some(DeregisterReason::Expired)));

    let rest = drain(&mut watch, Duration::from_millis(600)).await;
    assert!(rest.is_empty(), "one event per change, nothing more: {rest:?}");
}

/// A Titan peer removing a Muster node (`deregisterNode`, or its reader cleaning up a dead one)
/// ends it for every Muster reader at once, with one event carrying the right reason.
async fn titan_removals_of_muster_nodes(fleet: Fleet) {
    let muster = fleet.manual().await;
    let mut watch = muster.watch(WatchStart::Now).await.unwrap();
    muster.heartbeat(registration("m1", "10.0.0.1:1", &["users@1.0.0"], TIMING_LONG_TTL)).await.unwrap();
    assert_eq!(next(&mut watch).await.kind, EventKind::Registered);

    fleet.titan.deregister_node("m1").await;
    let query = ServiceQuery::new("users").unwrap();
    assert!(muster.find(&query).await.unwrap().is_empty(), "find agrees with get at once");
    assert!(muster.list_active().await.unwrap().is_empty());
    assert!(muster.get(&NodeId::new("m1").unwrap()).await.unwrap().is_none());
    muster.reconcile_now().await.unwrap();
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.reason), (EventKind::Deregistered, Some(DeregisterReason::Graceful)));
    assert_eq!(muster.count_service("users").await.unwrap(), 0);

    // A dead Muster node cleaned up by Titan's reader before any sweep: it expired.
    let short = Timing { ttl: Duration::from_millis(600), ..TIMING_LONG_TTL };
    muster.heartbeat(registration("m2", "10.0.0.2:1", &["users"], short)).await.unwrap();
    assert_eq!(next(&mut watch).await.kind, EventKind::Registered);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(fleet.titan.get_active_nodes().await.is_empty());
    muster.reconcile_now().await.unwrap();
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.reason), (EventKind::Deregistered, Some(DeregisterReason::Expired)));
    assert!(drain(&mut watch, Duration::from_millis(300)).await.is_empty());
}

/// A Titan node is found by service the moment it heartbeats, with or without a sweeper.
async fn find_sees_titan_nodes_at_once(fleet: Fleet) {
    let inspector = fleet.inspector().await;
    let muster = fleet.muster().await;
    fleet.titan.node("t1", "10.0.0.1:1", json!([{"name": "users", "version": "1.0.0"}])).heartbeat().await;
    for registry in [&inspector, &muster] {
        let found = registry.find(&ServiceQuery::parse("users@1.0.0").unwrap()).await.unwrap();
        assert_eq!(ids(&found), ["t1"]);
        assert!(registry.find(&ServiceQuery::parse("users@2.0.0").unwrap()).await.unwrap().is_empty());
    }
}

/// A node hash as a test writes it: id, address, services, timestamp (each absent when `None`), and
/// whether Titan's reader accepts it.
type HashCase = (&'static str, Option<&'static str>, Option<&'static str>, Option<&'static str>, bool);

/// One validity rule: Titan's reader, Muster's reader and the Lua scripts agree on each input.
async fn one_validity_rule(fleet: Fleet) {
    // Titan's reader keeps whatever `JSON.parse` accepts as services, a list or not.
    let cases: [HashCase; 15] = [
        ("ok", Some("h:1"), Some(r#"[{"name":"a"}]"#), Some("1"), true),
        ("odd-values", Some("anything at all"), Some(r#"[1, "x", {"name": 5}]"#), Some("soon"), true),
        ("spaced-list", Some("h:1"), Some(" [ ]"), Some("1"), true),
        ("object-services", Some("h:1"), Some(r#"{"name":"auth"}"#), Some("1"), true),
        ("empty-object-services", Some("h:1"), Some("{}"), Some("1"), true),
        ("null-services", Some("h:1"), Some("null"), Some("1"), true),
        ("string-services", Some("h:1"), Some(r#""abc""#), Some("1"), true),
        ("number-services", Some("h:1"), Some("42"), Some("1"), true),
        ("no-address", None, Some("[]"), Some("1"), false),
        ("empty-address", Some(""), Some("[]"), Some("1"), false),
        ("bad-json", Some("h:1"), Some("[not json"), Some("1"), false),
        ("bare-word-services", Some("h:1"), Some("abc"), Some("1"), false),
        ("no-services", Some("h:1"), None, Some("1"), false),
        ("no-timestamp", Some("h:1"), Some("[]"), None, false),
        ("empty-timestamp", Some("h:1"), Some("[]"), Some(""), false),
    ];
    let prefix = fleet.titan.options.prefix.clone();
    let titan = &fleet.titan;
    for (id, address, services, timestamp, _) in cases {
        let mut hset = redis::cmd("HSET");
        hset.arg(format!("{prefix}:nodes:{id}")).arg("other").arg("x");
        for (field, value) in [("address", address), ("services", services), ("timestamp", timestamp)] {
            if let Some(value) = value {
                hset.arg(field).arg(value);
            }
        }
        titan.query::<()>(&hset).await;
        titan
            .query::<()>(
                redis::cmd("SET").arg(format!("{prefix}:heartbeat:{id}")).arg("1").arg("PX").arg(60_000),
            )
            .await;
        titan.query::<()>(redis::cmd("SADD").arg(format!("{prefix}:index:nodes")).arg(id)).await;
    }
    let valid: Vec<&str> = cases.iter().filter(|c| c.4).map(|c| c.0).collect();
    // Muster's rule in Rust.
    for (id, address, services, timestamp, expected) in cases {
        let rust = muster_redis::check_node_hash(
            address.unwrap_or(""),
            services.unwrap_or(""),
            timestamp.unwrap_or(""),
        );
        assert_eq!(rust.is_ok(), expected, "Rust rule on {id}: {rust:?}");
    }
    // Muster's reader (read-only: removes nothing).
    let inspector = fleet.inspector().await;
    let mut listed: Vec<String> =
        inspector.list_active().await.unwrap().into_iter().map(|n| n.node_id.to_string()).collect();
    listed.sort();
    let mut want: Vec<String> = valid.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(listed, want, "Muster's reader");
    // The Lua rule: reconciliation adopts the valid ones and removes the rest, as Titan's reader would.
    let muster = fleet.manual().await;
    let done = muster.reconcile_now().await.unwrap();
    assert_eq!((done.adopted, done.removed), (valid.len() as u64, (cases.len() - valid.len()) as u64));
    let mut indexed: Vec<String> =
        titan.query(redis::cmd("SMEMBERS").arg(format!("{prefix}:index:nodes"))).await;
    indexed.sort();
    assert_eq!(indexed, want, "the Lua rule");
    // Titan's reader agrees (and has nothing left to clean).
    let seen: Vec<String> = titan.get_active_nodes().await.into_iter().map(|n| n.node_id).collect();
    assert_eq!(seen, want, "Titan's reader");
}

/// An agent's handlers and cache follow a Titan peer: one event per change, the new version served
/// from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_follows_titan_peers() {
    use std::sync::{Arc, Mutex};
    let fleet = Fleet::start(false, false).await;
    let agent = muster_agent::Agent::builder(fleet.muster().await)
        .options(muster_core::DiscoveryOptions {
            client_mode: true,
            ..muster_core::DiscoveryOptions::default()
        })
        .address(muster_core::Address::parse("127.0.0.1:1").unwrap())
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let _subscription =
        agent.on_event(move |event| sink.lock().unwrap().push((event.kind, event.node.services.clone())));
    agent.start().await.unwrap();

    let mut node = fleet.titan.node("titan-1", "10.0.0.1:1", json!([{"name": "users", "version": "1.0.0"}]));
    node.heartbeat().await;
    let seen_count = |n: usize| {
        let seen = Arc::clone(&seen);
        async move {
            for _ in 0..100 {
                if seen.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("fewer than {n} events");
        }
    };
    seen_count(1).await;
    node.heartbeat().await;
    node.update_services(json!([{"name": "users", "version": "2.0.0"}])).await;
    let query = ServiceQuery::parse("users@2.0.0").unwrap();
    let mut served = Vec::new();
    for _ in 0..100 {
        served = agent.cache().find(&query).unwrap_or_default();
        if !served.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served.len(), 1, "the cache serves the new version");
    assert!(agent.cache().find(&ServiceQuery::parse("users@1.0.0").unwrap()).unwrap().is_empty());
    node.stop().await;
    seen_count(3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let kinds: Vec<EventKind> = seen.lock().unwrap().iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds, [EventKind::Registered, EventKind::Updated, EventKind::Deregistered]);
    assert_eq!(seen.lock().unwrap()[1].1[0].version.as_deref(), Some("2.0.0"));
    agent.stop().await.unwrap();
}

/// With change hints, a Titan peer's changes are found at once, not at the next full pass (here a
/// minute away): through keyspace notifications where the server has them on (any Titan pub/sub
/// setting), or through Titan's channel messages when its pub/sub is on. Still one event each.
async fn hinted(fleet: Fleet) {
    let muster = fleet.muster_with_far_passes().await;
    let mut watch = muster.watch(WatchStart::Now).await.unwrap();
    // Let the first full pass (at start) go by.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut node = fleet.titan.node("titan-h", "10.0.0.1:1", json!([{"name": "users", "version": "1.0.0"}]));
    node.heartbeat().await;
    assert_eq!(next(&mut watch).await.kind, EventKind::Registered);
    node.heartbeat().await;
    node.update_services(json!([{"name": "users", "version": "2.0.0"}])).await;
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.node.services[0].version.as_deref()), (EventKind::Updated, Some("2.0.0")));
    node.stop().await;
    let event = next(&mut watch).await;
    assert_eq!((event.kind, event.reason), (EventKind::Deregistered, Some(DeregisterReason::Graceful)));
    assert!(drain(&mut watch, Duration::from_millis(500)).await.is_empty(), "one event per change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_notifications_are_hints() {
    let server = RedisServer::start_with(&["--notify-keyspace-events", "Kgh"]).await;
    let titan = Titan::connect(&[server.url()], TitanOptions::titan(false)).await;
    hinted(Fleet { store: Store::Standalone(server), titan, pubsub: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titan_channel_messages_are_hints() {
    hinted(Fleet::start(false, true).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titan_channel_messages_are_hints_in_a_cluster() {
    hinted(Fleet::start(true, true).await).await;
}

/// Every read of a read-only registry (lists, finds, gets, counts, watches and their snapshots)
/// leaves the key space as it was, with live, odd, dead and broken nodes of Muster and Titan peers.
async fn store_reads_write_nothing(fleet: Fleet) {
    let writer = fleet.manual().await;
    writer.heartbeat(registration("m1", "10.0.0.1:1", &["users@1.0.0"], TIMING_LONG_TTL)).await.unwrap();
    fleet
        .titan
        .node("worker@host-1", "ws://10.0.0.2:1", json!([{"name": "users", "version": "1.0.0"}]))
        .heartbeat()
        .await;
    let prefix = fleet.titan.options.prefix.clone();
    let titan = &fleet.titan;
    titan
        .query::<()>(
            redis::cmd("HSET")
                .arg(format!("{prefix}:nodes:dead"))
                .arg("address")
                .arg("h:1")
                .arg("services")
                .arg("[]")
                .arg("timestamp")
                .arg("1"),
        )
        .await;
    titan
        .query::<()>(
            redis::cmd("HSET")
                .arg(format!("{prefix}:nodes:broken"))
                .arg("address")
                .arg("h:1")
                .arg("services")
                .arg("{not json")
                .arg("timestamp")
                .arg("1"),
        )
        .await;
    titan.query::<()>(redis::cmd("SET").arg(format!("{prefix}:heartbeat:broken")).arg("1")).await;
    titan
        .query::<()>(redis::cmd("SADD").arg(format!("{prefix}:index:nodes")).arg("dead").arg("broken"))
        .await;
    let before = fleet.keyspace();

    let inspector = fleet.inspector().await;
    assert_eq!(ids(&inspector.list_active().await.unwrap()), ["m1", "worker@host-1"]);
    assert_eq!(inspector.list_all().await.unwrap().len(), 3, "the dead node is stored, not active");
    assert_eq!(inspector.find(&ServiceQuery::new("users").unwrap()).await.unwrap().len(), 2);
    assert!(inspector.get(&NodeId::from_wire("worker@host-1")).await.unwrap().is_some());
    assert!(!inspector.is_active(&NodeId::from_wire("dead")).await.unwrap());
    inspector.count_service("users").await.unwrap();
    let mut watch = inspector.watch(WatchStart::Snapshot).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(Ok(WatchEvent::Resync(snapshot)))) => assert_eq!(snapshot.nodes.len(), 2),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    drop(watch);
    let refused = inspector.heartbeat(registration("m2", "10.0.0.3:1", &["users"], TIMING_LONG_TTL)).await;
    assert!(refused.unwrap_err().is_invalid_input(), "a read-only registry refuses writes");
    assert_eq!(fleet.keyspace(), before, "a read wrote to Redis");
}

/// With pub/sub on, a Muster node publishes what a Titan node does: `NODE_REGISTERED`, then
/// `NODE_UPDATED` for every heartbeat, then `NODE_DEREGISTERED`; with it off, nothing.
async fn muster_nodes_speak_titan_on_the_channel(fleet: Fleet) {
    let url = match &fleet.store {
        Store::Standalone(server) => server.url(),
        Store::Cluster(cluster) => cluster.servers[1].url(),
    };
    let client = redis::Client::open(url).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("titan:discovery:events").await.unwrap();
    let mut messages = pubsub.into_on_message();
    let muster = fleet.manual().await;
    let timing = TIMING_LONG_TTL;
    muster.heartbeat(registration("m1", "10.0.0.1:1", &["users@1.0.0"], timing)).await.unwrap();
    muster.heartbeat(registration("m1", "10.0.0.1:1", &["users@1.0.0"], timing)).await.unwrap();
    muster.heartbeat(registration("m1", "10.0.0.1:1", &["users@1.0.0"], timing)).await.unwrap();
    muster.deregister(&NodeId::new("m1").unwrap(), DeregisterReason::Graceful).await.unwrap();
    let mut kinds = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
        let json: serde_json::Value =
            serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(json["nodeId"], "m1");
        kinds.push(json["type"].as_str().unwrap().to_owned());
    }
    if fleet.pubsub {
        assert_eq!(kinds, ["NODE_REGISTERED", "NODE_UPDATED", "NODE_UPDATED", "NODE_DEREGISTERED"]);
    } else {
        assert!(kinds.is_empty(), "pub/sub off publishes nothing: {kinds:?}");
    }
}

/// Without change hints (no keyspace notifications, Titan's pub/sub off) and with the full pass
/// far away, a Titan peer's graceful stop is found by the sweep at the node's deadline, not by the
/// reconciliation: it is still `graceful` (the node left the index), never `expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_titan_stop_found_by_the_sweep_is_graceful() {
    let fleet = Fleet::start(false, false).await;
    let muster = fleet.muster_with_far_passes().await;
    let mut watch = muster.watch(WatchStart::Now).await.unwrap();
    let short = TitanOptions { heartbeat_ttl_ms: 800, ..fleet.titan.options.clone() };
    let titan = fleet.titan.with_options(short);
    let mut nodes: Vec<_> =
        (0..3).map(|i| titan.node(&format!("stop-{i}"), &format!("10.0.0.{i}:1"), json!([]))).collect();
    // And one that just stops heartbeating: expired.
    let mut quiet = titan.node("quiet", "10.0.0.9:1", json!([]));
    quiet.heartbeat().await;
    for node in &mut nodes {
        node.heartbeat().await;
    }
    muster.reconcile_now().await.unwrap();
    for _ in 0..4 {
        assert_eq!(next(&mut watch).await.kind, EventKind::Registered);
    }
    for node in &mut nodes {
        node.stop().await;
    }
    let mut reasons = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let event = next(&mut watch).await;
        reasons.insert(event.node.node_id.to_string(), (event.kind, event.reason));
    }
    for i in 0..3 {
        assert_eq!(
            reasons[&format!("stop-{i}")],
            (EventKind::Deregistered, Some(DeregisterReason::Graceful)),
            "{reasons:?}"
        );
    }
    assert_eq!(reasons["quiet"], (EventKind::Deregistered, Some(DeregisterReason::Expired)), "{reasons:?}");
}

/// With Muster's pub/sub on, Muster publishes only about the nodes it registered: a Titan peer's
/// changes, found by reconciliation or the sweep, are never published again (a Titan subscriber
/// would get them twice) — nor announced for Titan peers that run with pub/sub off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muster_publishes_only_about_its_own_nodes() {
    for titan_pubsub in [false, true] {
        let fleet = Fleet::start(false, titan_pubsub).await;
        let client = redis::Client::open(fleet.url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("titan:discovery:events").await.unwrap();
        let mut messages = pubsub.into_on_message();
        let config = RedisConfig { pubsub_enabled: true, ..fleet.config() };
        let muster = RedisRegistry::connect(config).await.unwrap();
        let mut watch = muster.watch(WatchStart::Now).await.unwrap();
        muster.heartbeat(registration("m1", "10.0.0.1:1", &["users"], TIMING_LONG_TTL)).await.unwrap();
        let short = TitanOptions { heartbeat_ttl_ms: 700, ..fleet.titan.options.clone() };
        let titan = fleet.titan.with_options(short);
        let mut node = titan.node("titan-1", "10.0.0.2:1", json!([{"name": "auth"}]));
        let mut quiet = titan.node("titan-2", "10.0.0.3:1", json!([]));
        node.heartbeat().await;
        quiet.heartbeat().await;
        node.update_services(json!([{"name": "billing"}])).await;
        node.heartbeat().await;
        node.stop().await;
        // Registered m1; titan-1 registered, (updated), deregistered; titan-2 registered, expired.
        let mut seen = Vec::new();
        while seen.iter().filter(|e: &&DiscoveryEvent| e.node.node_id.as_str() == "titan-2").count() < 2 {
            seen.push(next(&mut watch).await);
        }
        let mut published = Vec::new();
        while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await
        {
            let json: serde_json::Value =
                serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
            published.push(json);
        }
        let republished: Vec<_> = published
            .iter()
            .filter(|m| m["nodeId"].as_str().unwrap().starts_with("titan") && m["muster"] == true)
            .collect();
        assert!(republished.is_empty(), "Titan pub/sub {titan_pubsub}: Muster published {republished:?}");
        assert!(
            published.iter().any(|m| m["nodeId"] == "m1" && m["type"] == "NODE_REGISTERED"),
            "its own node is published: {published:?}"
        );
        let from_titan = published.iter().filter(|m| m["nodeId"] == "titan-1").count();
        assert_eq!(from_titan > 0, titan_pubsub, "{published:?}");
    }
}

/// A read-only inspection of a prefix no sweeper holds (`muster watch --redis`) shows every
/// Titan-side change as one event, whatever Titan's pub/sub setting: a registration, a change of
/// services, a crash (expired), a stop (graceful) — never a heartbeat, never Titan's raw channel
/// messages; a message on the channel that is not a discovery event is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unswept_inspection_sees_each_titan_change_once() {
    for pubsub in [false, true] {
        let fleet = Fleet::start(false, pubsub).await;
        let inspector = fleet.inspector().await;
        let mut watch = inspector.watch(WatchStart::Now).await.unwrap();
        let short = TitanOptions { heartbeat_ttl_ms: 700, ..fleet.titan.options.clone() };
        let titan = fleet.titan.with_options(short);
        let mut node = fleet.titan.node("titan-1", "10.0.0.1:1", json!([{"name": "auth"}]));
        node.heartbeat().await;
        expect_peer(&mut watch, EventKind::Registered, None, "titan-1", pubsub).await;
        node.heartbeat().await;
        node.heartbeat().await;
        node.update_services(json!([{"name": "billing"}])).await;
        let event = expect_peer(&mut watch, EventKind::Updated, None, "titan-1", pubsub).await;
        assert_eq!(event.node.address.as_str(), "10.0.0.1:1", "the node's own address");
        let mut quiet = titan.node("titan-2", "10.0.0.2:1", json!([]));
        quiet.heartbeat().await;
        expect_peer(&mut watch, EventKind::Registered, None, "titan-2", pubsub).await;
        expect_peer(&mut watch, EventKind::Deregistered, Some(DeregisterReason::Expired), "titan-2", pubsub)
            .await;
        node.stop().await;
        expect_peer(&mut watch, EventKind::Deregistered, Some(DeregisterReason::Graceful), "titan-1", pubsub)
            .await;
        if pubsub {
            let url = fleet.url();
            redis::cmd("PUBLISH")
                .arg("titan:discovery:events")
                .arg("not a discovery event")
                .query_async::<i64>(
                    &mut redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap(),
                )
                .await
                .unwrap();
        }
        let rest = drain(&mut watch, Duration::from_millis(600)).await;
        assert!(rest.is_empty(), "pub/sub {pubsub}: one event per change, nothing more: {rest:?}");
        assert_eq!(inspector.unreadable_channel_messages(), u64::from(pubsub));
    }
}

/// The next item of `watch`, which must be a peer event of this kind, reason and node.
async fn expect_peer(
    watch: &mut muster_core::WatchStream,
    kind: EventKind,
    reason: Option<DeregisterReason>,
    id: &str,
    pubsub: bool,
) -> DiscoveryEvent {
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(Ok(WatchEvent::Peer(event)))) => {
            assert_eq!(
                (event.kind, event.reason, event.node.node_id.as_str()),
                (kind, reason, id),
                "pub/sub {pubsub}"
            );
            event
        }
        other => panic!("pub/sub {pubsub}: expected a peer event, got {other:?}"),
    }
}
