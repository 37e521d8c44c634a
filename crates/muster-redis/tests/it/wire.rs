//! Titan wire compatibility, checked with plain Redis commands.

use std::time::Duration;

use futures::StreamExt;
use muster_core::{EventKind, Registry, ServiceQuery, WatchEvent, WatchStart};
use muster_redis::{RedisConfig, RedisRegistry};
use muster_testkit::conformance::{Timing, id, next_event, registration};
use muster_testkit::redis_server::RedisServer;
use muster_testkit::titan::REGISTER_HEARTBEAT_LUA as TITAN_HEARTBEAT_SCRIPT;

use crate::{TIMING, registry, standalone};

const P: &str = "titan:discovery";

fn titan_timing() -> Timing {
    Timing { ttl: Duration::from_millis(15_000), ..TIMING }
}

/// What Muster writes is exactly what a Titan reader expects.
#[tokio::test]
async fn muster_writes_titan_keys() {
    let (server, registry) = standalone().await;
    registry
        .heartbeat(registration("m1", "10.0.0.1:3000", &["users@1.0.0", "auth"], titan_timing()))
        .await
        .unwrap();

    assert_eq!(server.cli(&["hget", &format!("{P}:nodes:m1"), "address"]), "10.0.0.1:3000");
    assert_eq!(
        server.cli(&["hget", &format!("{P}:nodes:m1"), "services"]),
        r#"[{"name":"users","version":"1.0.0"},{"name":"auth"}]"#
    );
    let timestamp = server.cli(&["hget", &format!("{P}:nodes:m1"), "timestamp"]);
    assert!(timestamp.len() == 13 && timestamp.bytes().all(|b| b.is_ascii_digit()), "{timestamp}");
    assert_eq!(server.cli(&["ttl", &format!("{P}:nodes:m1")]), "15", "hash EXPIRE is ceil(ttl/1000)");
    let pttl: u64 = server.cli(&["pttl", &format!("{P}:heartbeat:m1")]).parse().unwrap();
    assert!((14_000..=15_000).contains(&pttl), "heartbeat PX ttl, got {pttl}");
    assert_eq!(server.cli(&["get", &format!("{P}:heartbeat:m1")]), "1");
    assert_eq!(server.cli(&["smembers", &format!("{P}:index:nodes")]), "m1");
    assert_eq!(server.cli(&["smembers", &format!("{P}:index:services:users")]), "m1");

    // A Titan reader: SMEMBERS, then HGETALL and EXISTS per node.
    for node in server.cli(&["smembers", &format!("{P}:index:nodes")]).lines() {
        assert_eq!(server.cli(&["exists", &format!("{P}:heartbeat:{node}")]), "1");
        let hash = server.cli(&["hgetall", &format!("{P}:nodes:{node}")]);
        let fields: Vec<&str> = hash.lines().step_by(2).collect();
        for field in ["address", "services", "timestamp"] {
            assert!(fields.contains(&field), "{field} missing from {hash}");
        }
    }
}

/// Nodes written by Titan processes (its Lua script, or plain commands with a timestamp as the
/// heartbeat value) are listed, found and followed by Muster.
#[tokio::test]
async fn titan_nodes_are_read_adopted_and_expired() {
    let (server, registry) = standalone().await;
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    // Titan's own heartbeat script, as Titan runs it.
    let out = server.cli(&[
        "eval",
        TITAN_HEARTBEAT_SCRIPT,
        "3",
        &format!("{P}:nodes:titan-1"),
        &format!("{P}:heartbeat:titan-1"),
        &format!("{P}:index:nodes"),
        "titan-1",
        "localhost:3000",
        r#"[{"name":"users","version":"1.0.0"}]"#,
        "1700000000000",
        "1",
        "900",
    ]);
    assert_eq!(out, "1");
    // A Titan node whose heartbeat value is the timestamp.
    server.cli(&[
        "hset",
        &format!("{P}:nodes:titan-2"),
        "address",
        "10.0.0.2:4000",
        "services",
        r#"[{"name":"users"}]"#,
        "timestamp",
        "1700000000001",
    ]);
    server.cli(&["set", &format!("{P}:heartbeat:titan-2"), "1700000000001", "px", "60000"]);
    server.cli(&["sadd", &format!("{P}:index:nodes"), "titan-2"]);

    let active = registry.list_active().await.unwrap();
    let ids: Vec<&str> = active.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["titan-1", "titan-2"]);
    assert_eq!(active[0].address.as_str(), "localhost:3000");
    assert_eq!(active[0].timestamp_ms, 1_700_000_000_000);
    assert!(registry.is_active(&id("titan-2")).await.unwrap());

    // The sweeper adopts them: announced with registration events, then found by service.
    registry.sweep_now().await.unwrap();
    let mut announced = Vec::new();
    for _ in 0..2 {
        let event = next_event(&mut watch, Duration::from_secs(5)).await;
        assert_eq!(event.kind, EventKind::Registered);
        announced.push(event.node.node_id.to_string());
    }
    announced.sort();
    assert_eq!(announced, ["titan-1", "titan-2"]);
    let found = registry.find(&ServiceQuery::parse("users@1.0.0").unwrap()).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].node_id, id("titan-1"));
    assert_eq!(registry.find(&ServiceQuery::new("users").unwrap()).await.unwrap().len(), 2);

    // titan-1 stops heartbeating (its key had PX 900): the expiry is observed and announced.
    let expired = next_event(&mut watch, Duration::from_secs(5)).await;
    assert_eq!((expired.kind, expired.node.node_id.as_str()), (EventKind::Deregistered, "titan-1"));
    assert_eq!(expired.reason, Some(muster_core::DeregisterReason::Expired));
    assert_eq!(server.cli(&["sismember", &format!("{P}:index:nodes"), "titan-1"]), "0");
}

/// Hashes with a missing or empty field or unparsable services are skipped by reads, which remove
/// nothing; the sweeper removes them as Titan's reader would; valid neighbours are untouched.
#[tokio::test]
async fn corrupted_hashes_are_skipped_and_cleaned() {
    let server = RedisServer::start().await;
    let config = RedisConfig { sweeper: false, ..RedisConfig::from_url(&server.url()).unwrap() };
    let registry = RedisRegistry::connect(config).await.unwrap();
    registry.heartbeat(registration("good", "h:1", &["a"], titan_timing())).await.unwrap();
    let broken: [(&str, &[&str]); 4] = [
        ("no-address", &["services", "[]", "timestamp", "1"]),
        ("empty-address", &["address", "", "services", "[]", "timestamp", "1"]),
        ("bad-json", &["address", "h:1", "services", "{not json", "timestamp", "1"]),
        ("no-time", &["address", "h:1", "services", "[]", "timestamp", ""]),
    ];
    for (node, fields) in broken {
        let key = format!("{P}:nodes:{node}");
        let mut args = vec!["hset", key.as_str()];
        args.extend_from_slice(fields);
        server.cli(&args);
        server.cli(&["set", &format!("{P}:heartbeat:{node}"), "1", "px", "60000"]);
        server.cli(&["sadd", &format!("{P}:index:nodes"), node]);
    }
    let active = registry.list_active().await.unwrap();
    assert_eq!(active.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["good"]);
    assert_eq!(server.cli(&["scard", &format!("{P}:index:nodes")]), "5", "a read removes nothing");
    registry.sweep_now().await.unwrap();
    assert_eq!(server.cli(&["smembers", &format!("{P}:index:nodes")]), "good", "broken nodes are cleaned up");
    for (node, _) in broken {
        assert_eq!(
            server.cli(&["exists", &format!("{P}:nodes:{node}"), &format!("{P}:heartbeat:{node}")]),
            "0"
        );
    }
    assert_eq!(registry.list_all().await.unwrap().len(), 1);
}

/// Events go out on the Titan channel in Titan's JSON, in Titan's sequence: `NODE_REGISTERED`
/// first, then `NODE_UPDATED` for every heartbeat (unless turned off: then only for changes). A
/// Muster watcher gets Muster's changes once, through the log, and neither channel garbage nor a
/// Titan peer's message about a node that is not in Redis.
#[tokio::test]
async fn channel_events_both_ways() {
    let server = RedisServer::start().await;
    let config = RedisConfig { pubsub_enabled: true, ..RedisConfig::from_url(&server.url()).unwrap() };
    let registry = RedisRegistry::connect(config.clone()).await.unwrap();

    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("titan:discovery:events").await.unwrap();
    let mut messages = pubsub.into_on_message();
    let mut next_message = async || -> serde_json::Value {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next()).await.unwrap().unwrap();
        serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap()
    };
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();

    registry.heartbeat(registration("m1", "h:1", &["a@1"], titan_timing())).await.unwrap();
    registry.heartbeat(registration("m1", "h:1", &["a@1"], titan_timing())).await.unwrap(); // unchanged
    let json = next_message().await;
    assert_eq!(json["type"], "NODE_REGISTERED");
    assert_eq!(json["nodeId"], "m1");
    assert_eq!(json["address"], "h:1");
    assert_eq!(json["services"], serde_json::json!([{"name": "a", "version": "1"}]));
    assert!(json["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    let json = next_message().await;
    assert_eq!((json["type"].as_str(), json["nodeId"].as_str()), (Some("NODE_UPDATED"), Some("m1")));
    assert_eq!(json["services"], serde_json::json!([{"name": "a", "version": "1"}]));
    // A heartbeat through `refresh` (the server's) too.
    registry.refresh(&id("m1"), None).await.unwrap();
    assert_eq!(next_message().await["type"], "NODE_UPDATED");

    // Without per-heartbeat messages, an unchanged heartbeat is silent and a change is not.
    let quiet = RedisRegistry::connect(RedisConfig { heartbeat_events: false, sweeper: false, ..config })
        .await
        .unwrap();
    quiet.heartbeat(registration("m1", "h:1", &["a@1"], titan_timing())).await.unwrap();
    quiet.refresh(&id("m1"), None).await.unwrap();
    quiet.heartbeat(registration("m1", "h:2", &["a@1"], titan_timing())).await.unwrap();
    let json = next_message().await;
    assert_eq!((json["type"].as_str(), json["address"].as_str()), (Some("NODE_UPDATED"), Some("h:2")));

    // Muster's own events arrive once each, through the log.
    assert!(matches!(next_item(&mut watch).await, WatchEvent::Event(e) if e.kind == EventKind::Registered));
    assert!(matches!(next_item(&mut watch).await, WatchEvent::Event(e) if e.kind == EventKind::Updated));
    server.cli(&["publish", "titan:discovery:events", "this is not json"]);
    server.cli(&["publish", "titan:discovery:events", r#"{"type":"NODE_EXPLODED","nodeId":"x"}"#]);
    server.cli(&[
        "publish",
        "titan:discovery:events",
        r#"{"type":"NODE_UPDATED","nodeId":"titan-9","address":"h:9","services":[{"name":"b"}],"timestamp":1700000000000}"#,
    ]);
    assert!(
        tokio::time::timeout(Duration::from_millis(700), watch.next()).await.is_err(),
        "nothing else arrives"
    );
}

async fn next_item(watch: &mut muster_core::WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("an item")
        .expect("open")
        .expect("ok")
}

/// Custom prefixes (Netron's) and the hash-tag option keep keys where they are configured.
#[tokio::test]
async fn prefix_and_hash_tag_options() {
    let server = RedisServer::start().await;
    let netron = registry(&server.url(), "netron:discovery").await;
    netron.heartbeat(registration("n1", "h:1", &["a"], TIMING)).await.unwrap();
    assert_eq!(server.cli(&["exists", "netron:discovery:nodes:n1"]), "1");
    let config = RedisConfig { hash_tag: Some(true), ..RedisConfig::from_url(&server.url()).unwrap() };
    let tagged = RedisRegistry::connect(config).await.unwrap();
    tagged.heartbeat(registration("n2", "h:1", &["a"], TIMING)).await.unwrap();
    assert_eq!(server.cli(&["exists", "{titan:discovery}:nodes:n2"]), "1");
    assert!(netron.get(&id("n2")).await.unwrap().is_none(), "prefixes do not see each other");
}

/// `rediss://` works end to end: registration, listing and a watch over TLS.
#[tokio::test]
async fn tls_connections() {
    let server = muster_testkit::redis_server::TlsRedisServer::start().await;
    let registry = RedisRegistry::connect_url(&server.url()).await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    registry.heartbeat(registration("secure", "h:1", &["a@1.0.0"], titan_timing())).await.unwrap();
    assert_eq!(next_event(&mut watch, Duration::from_secs(5)).await.node.node_id, id("secure"));
    assert_eq!(registry.list_active().await.unwrap().len(), 1);
    let plain = RedisRegistry::connect_url(&server.url().replace("rediss://", "redis://")).await;
    assert!(plain.is_err(), "a plain-text client cannot talk to a TLS-only server");
}
