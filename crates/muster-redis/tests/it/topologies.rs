//! The conformance suite on a Redis Cluster and behind Sentinel, each fixture started once.

use muster_core::Registry;
use muster_testkit::redis_server::{RedisCluster, RedisServer, SentinelSetup};

use crate::{TIMING, registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_cluster() {
    let cluster = RedisCluster::start().await;
    let url = cluster.url();
    let made = registry(&url, "probe").await;
    assert!(made.config().key_prefix().starts_with('{'), "cluster keys are hash-tagged");
    made.heartbeat(muster_testkit::conformance::registration("n", "h:1", &["a"], TIMING)).await.unwrap();
    // Every key of the prefix is in one slot, on one node.
    let holders: Vec<usize> = cluster
        .servers
        .iter()
        .map(|s| s.cli(&["--scan", "--pattern", "{probe}:*"]).lines().count())
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(holders.len(), 1, "keys spread over several nodes: {holders:?}");
    muster_testkit::conformance_sequence!(
        make = |case: &'static str| {
            let url = url.clone();
            async move { registry(&url, &format!("cluster-{case}")).await }
        },
        timing = TIMING,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_behind_sentinel() {
    let setup = SentinelSetup::start().await;
    let url = setup.url();
    muster_testkit::conformance_sequence!(
        make = |case: &'static str| {
            let url = url.clone();
            async move { registry(&url, &format!("sentinel-{case}")).await }
        },
        timing = TIMING,
    );
}

/// With pub/sub on in a cluster, a Titan peer's channel message reaches a read-only inspection of
/// a prefix no sweeper holds (published messages reach every node) as a hint: the change is found
/// at once, not at the next comparison (here a minute away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_pubsub_delivers_titan_events() {
    use futures::StreamExt;
    use muster_core::{WatchEvent, WatchStart};
    let cluster = RedisCluster::start().await;
    let config = muster_redis::RedisConfig {
        pubsub_enabled: true,
        read_only: true,
        reconcile_interval: std::time::Duration::from_secs(60),
        safety_interval: std::time::Duration::from_secs(60),
        ..muster_redis::RedisConfig::from_url(&cluster.url()).unwrap()
    };
    let registry = muster_redis::RedisRegistry::connect(config).await.unwrap();
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    let urls: Vec<String> = cluster.servers.iter().map(RedisServer::url).collect();
    let options = muster_testkit::titan::TitanOptions {
        prefix: "{titan:discovery}".to_owned(),
        ..muster_testkit::titan::TitanOptions::titan(true)
    };
    let titan = muster_testkit::titan::Titan::connect(&urls, options).await;
    let mut node = titan.node("titan-c", "10.0.0.1:1", serde_json::json!([]));
    node.heartbeat().await;
    let item = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(&item, WatchEvent::Peer(e) if e.node.node_id.as_str() == "titan-c"), "{item:?}");
}
