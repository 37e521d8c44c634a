//! The conformance suite on a Redis Cluster and behind Sentinel, each fixture started once.

use muster_core::Registry;
use muster_testkit::redis_server::{RedisCluster, SentinelSetup};

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
