//! Integration tests of the Redis backend against real `redis-server` processes that the tests
//! start themselves: the conformance suite on standalone, Cluster and Sentinel; Titan wire
//! compatibility; failures (SIGKILL and restart, failover, disconnected watchers).

mod acl_user;
mod costs;
mod failures;
mod mixed;
mod topologies;
mod wire;

use std::time::Duration;

use muster_redis::{RedisConfig, RedisRegistry};
use muster_testkit::conformance::Timing;
use muster_testkit::redis_server::RedisServer;

/// Real-time scale of the suite on Redis: heartbeat 150 ms, TTL 600 ms, expiry within 1 s after.
pub(crate) const TIMING: Timing = Timing {
    interval: Duration::from_millis(150),
    ttl: Duration::from_millis(600),
    expiry_slack: Duration::from_secs(1),
};

/// A registry on `url` with a key prefix of its own.
pub(crate) async fn registry(url: &str, prefix: &str) -> RedisRegistry {
    let config = RedisConfig { prefix: prefix.to_owned(), ..RedisConfig::from_url(url).expect("url") };
    RedisRegistry::connect(config).await.expect("connect")
}

/// A fresh standalone server and a registry on it.
pub(crate) async fn standalone() -> (RedisServer, RedisRegistry) {
    let server = RedisServer::start().await;
    let registry = registry(&server.url(), "titan:discovery").await;
    (server, registry)
}

mod standalone {
    muster_testkit::conformance_tests!(
        setup = super::standalone().await,
        timing = super::TIMING,
        start_paused = false
    );
}
