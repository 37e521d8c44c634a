//! The embedded agent on a Redis that limits it with an ACL user: keys and channels under the
//! registry's prefix, no dangerous commands. Muster has no access control of its own here; Redis's
//! users are the boundary.

use std::time::Duration;

use muster_agent::Agent;
use muster_core::{DiscoveryOptions, Registry, ServiceQuery};
use muster_testkit::conformance::{addr, id, svc};
use muster_testkit::redis_server::RedisServer;

use crate::registry;

/// A server with the user `agent` limited to `titan:discovery:*`.
async fn limited_server() -> RedisServer {
    let server = RedisServer::start().await;
    let answer = server.cli(&[
        "ACL",
        "SETUSER",
        "agent",
        "on",
        ">agent-secret-1",
        "~titan:discovery:*",
        "&titan:discovery:*",
        "+@all",
        "-@dangerous",
    ]);
    assert_eq!(answer.trim(), "OK");
    server
}

fn user_url(server: &RedisServer) -> String {
    format!("redis://agent:agent-secret-1@127.0.0.1:{}", server.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_works_with_a_redis_user_limited_to_its_prefix() {
    let server = limited_server().await;
    let url = user_url(&server);
    let registry = registry(&url, "titan:discovery").await;
    let agent = Agent::builder(registry.clone())
        .options(DiscoveryOptions {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_ttl: Duration::from_millis(1000),
            ..DiscoveryOptions::default()
        })
        .node_id(id("limited-1"))
        .address(addr("127.0.0.1:7000"))
        .service(svc("billing"))
        .build()
        .unwrap();
    agent.start().await.unwrap();
    let found = registry.find(&ServiceQuery::new("billing").unwrap()).await.unwrap();
    assert_eq!(found.len(), 1);
    // Expiry works too (the sweeper's lease and indexes are under the prefix).
    let quick =
        muster_core::Registration::new(id("quick"), addr("h:1"), vec![svc("a")], Duration::from_millis(300))
            .unwrap();
    registry.heartbeat(quick).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while registry.is_active(&id("quick")).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "the node did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await.unwrap();
    assert!(registry.find(&ServiceQuery::new("billing").unwrap()).await.unwrap().is_empty());
    // The user cannot touch keys outside the prefix, so a registry under another prefix fails
    // with Redis's refusal instead of writing there.
    let elsewhere = muster_redis::RedisConfig {
        prefix: "other".into(),
        ..muster_redis::RedisConfig::from_url(&url).unwrap()
    };
    let outside = muster_redis::RedisRegistry::connect(elsewhere).await.unwrap();
    let refused = outside
        .heartbeat(
            muster_core::Registration::new(id("x"), addr("h:1"), vec![svc("a")], Duration::from_secs(5))
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().to_lowercase().contains("noperm") || refused.to_string().contains("permission"),
        "{refused}"
    );
    assert_eq!(server.cli(&["exists", "other:index:nodes"]).trim(), "0");
}

/// The token store lies outside the agents' key space: the Redis user an embedded agent needs
/// (`~titan:discovery:*`) gets NOPERM on it, so it cannot make itself an admin of the servers,
/// while the servers' user (`~titan:discovery:* ~muster:acl:*`) keeps the tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_redis_user_cannot_touch_the_token_store() {
    use muster_core::acl::{Access, Rule, TokenRecord, TokenStore};
    let server = limited_server().await;
    let answer = server.cli(&[
        "ACL",
        "SETUSER",
        "registry",
        "on",
        ">registry-secret-1",
        "~titan:discovery:*",
        "~muster:acl:*",
        "&titan:discovery:*",
        "+@all",
        "-@dangerous",
    ]);
    assert_eq!(answer.trim(), "OK");
    let record = |name: &str| TokenRecord {
        name: name.to_owned(),
        secret_hash: "0".repeat(64),
        rules: vec![Rule::everything(Access::Admin)],
        created_ms: 1,
        description: None,
    };
    let agent = registry(&user_url(&server), "titan:discovery").await;
    let refused = agent.token_store().create(&record("intruder"), false).await.unwrap_err();
    assert!(refused.to_string().to_lowercase().contains("noperm"), "{refused}");
    assert!(agent.token_store().load().await.is_err(), "the agent's user cannot read tokens either");
    let key = agent.token_store().key().to_owned();
    assert!(!key.starts_with("titan:discovery:"), "{key}");
    let raw = server.cli(&["--user", "agent", "--pass", "agent-secret-1", "HSET", &key, "t:x", "{}"]);
    assert!(raw.to_lowercase().contains("noperm"), "{raw}");

    let url = format!("redis://registry:registry-secret-1@127.0.0.1:{}", server.port());
    let servers = registry(&url, "titan:discovery").await;
    servers.token_store().create(&record("ops"), false).await.unwrap();
    let (_, tokens) = servers.token_store().load().await.unwrap();
    assert_eq!(tokens.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["ops"]);
    assert_eq!(server.cli(&["exists", "titan:discovery:acl"]).trim(), "0");
}

/// A Redis user without `PUBLISH` and pub/sub on: as Titan does, the write is made and the
/// refused publish is counted (and logged), never an error for a write that was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_never_fails_a_stored_write() {
    let server = RedisServer::start().await;
    let url = server.user_without_publish();
    let config = muster_redis::RedisConfig {
        pubsub_enabled: true,
        ..muster_redis::RedisConfig::from_url(&url).unwrap()
    };
    let registry = muster_redis::RedisRegistry::connect(config).await.unwrap();
    let registration = |node: &str| {
        muster_core::Registration::new(
            id(node),
            addr("10.0.0.1:80"),
            vec![svc("billing")],
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let outcome = registry.heartbeat(registration("p1")).await.unwrap();
    assert_eq!(outcome.change, muster_core::Change::Registered);
    assert!(registry.is_active(&id("p1")).await.unwrap());
    registry.heartbeat(registration("p1")).await.unwrap();
    assert!(registry.deregister(&id("p1"), muster_core::DeregisterReason::Graceful).await.unwrap());
    assert!(registry.publish_failures() >= 2, "{}", registry.publish_failures());
}
