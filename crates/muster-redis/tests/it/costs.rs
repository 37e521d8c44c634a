//! Cost budgets in Redis round trips, counted by the registry (deterministic, unlike timings):
//! what an agent's heartbeat, a lookup and a listing cost. A change that adds a round trip to one
//! of them fails here.

use std::time::Duration;

use muster_core::{Registry, ServiceQuery};
use muster_redis::{RedisConfig, RedisRegistry};
use muster_testkit::conformance::{Timing, registration};
use muster_testkit::redis_server::RedisServer;

use crate::TIMING;

/// Round trips per steady-state heartbeat (one script call).
const HEARTBEAT_BUDGET: u64 = 1;
/// Round trips per `find` (one read of the service's index, deadlines and nodes).
const FIND_BUDGET: u64 = 1;
/// Round trips per listing while the registry is unchanged (the view's header only).
const UNCHANGED_LIST_BUDGET: u64 = 1;
/// Round trips of the first listing after a change (the header, then the view).
const CHANGED_LIST_BUDGET: u64 = 2;

/// Runs `op` once uncounted (a script's first call loads it), then `times` times, and returns the
/// round trips per counted run.
async fn per_call<F: std::future::Future<Output = ()>>(
    registry: &RedisRegistry,
    times: u64,
    mut op: impl FnMut(u64) -> F,
) -> f64 {
    op(0).await;
    let before = registry.round_trips();
    for n in 0..times {
        op(n).await;
    }
    (registry.round_trips() - before) as f64 / times as f64
}

#[tokio::test]
async fn heartbeats_lookups_and_listings_cost_what_their_budgets_say() {
    let server = RedisServer::start().await;
    // No sweeper: nothing but the calls below talks to Redis.
    let config = RedisConfig {
        prefix: "costs".to_owned(),
        sweeper: false,
        ..RedisConfig::from_url(&server.url()).unwrap()
    };
    let registry = RedisRegistry::connect(config).await.unwrap();
    let timing = Timing { ttl: Duration::from_secs(600), ..TIMING };
    for i in 0..100 {
        let services = [format!("svc-{}@1.0.0", i % 10)];
        let services: Vec<&str> = services.iter().map(String::as_str).collect();
        registry
            .heartbeat(registration(&format!("n{i}"), &format!("10.0.0.{}:80", i + 1), &services, timing))
            .await
            .unwrap();
    }

    let heartbeat = per_call(&registry, 100, |n| {
        let registry = &registry;
        async move {
            let services = [format!("svc-{}@1.0.0", n % 10)];
            let services: Vec<&str> = services.iter().map(String::as_str).collect();
            let address = format!("10.0.0.{}:80", n + 1);
            registry.heartbeat(registration(&format!("n{n}"), &address, &services, timing)).await.unwrap();
        }
    })
    .await;
    let query = ServiceQuery::parse("svc-3@^1").unwrap();
    let find = per_call(&registry, 50, |_| {
        let (registry, query) = (&registry, &query);
        async move { assert_eq!(registry.find(query).await.unwrap().len(), 10) }
    })
    .await;
    // A change, then the first listing after it (the listing script loaded before), then
    // listings of the unchanged registry.
    registry.list_active().await.unwrap();
    registry.heartbeat(registration("n-new", "10.0.1.1:80", &["svc-0@1.0.0"], timing)).await.unwrap();
    let before = registry.round_trips();
    assert_eq!(registry.list_active().await.unwrap().len(), 101);
    let changed_list = (registry.round_trips() - before) as f64;
    let unchanged_list = per_call(&registry, 50, |_| async {
        assert_eq!(registry.list_active().await.unwrap().len(), 101);
    })
    .await;

    eprintln!(
        "round trips: heartbeat {heartbeat}, find {find}, listing after a change {changed_list}, unchanged listing {unchanged_list}"
    );
    let over: Vec<String> = [
        ("heartbeat", heartbeat, HEARTBEAT_BUDGET),
        ("find", find, FIND_BUDGET),
        ("listing after a change", changed_list, CHANGED_LIST_BUDGET),
        ("unchanged listing", unchanged_list, UNCHANGED_LIST_BUDGET),
    ]
    .into_iter()
    .filter(|(_, cost, budget)| *cost > *budget as f64)
    .map(|(what, cost, budget)| format!("{what}: {cost} round trips, budget {budget}"))
    .collect();
    assert!(over.is_empty(), "over budget:\n{}", over.join("\n"));
    assert!(heartbeat >= 1.0, "the counter counts");
}
