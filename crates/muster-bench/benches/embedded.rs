//! Criterion benchmarks of the embedded store and the agent's cache.
//!
//! `cargo bench -p muster-bench --bench embedded`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use muster_agent::Agent;
use muster_bench::{node_registration, populate};
use muster_core::{Address, DiscoveryOptions, Registry, ServiceQuery};
use muster_memory::MemoryRegistry;
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
}

/// A heartbeat of a node that is already registered and unchanged (the steady state).
fn heartbeat_existing(c: &mut Criterion) {
    let rt = runtime();
    let registry = rt.block_on(async {
        let registry = MemoryRegistry::new();
        populate(&registry, 1_000, 10).await.expect("populate");
        registry
    });
    let registration = node_registration(500, "filler-0").expect("registration");
    rt.block_on(registry.heartbeat(registration.clone())).expect("heartbeat");
    c.bench_function("memory/heartbeat_existing_node", |b| {
        b.to_async(&rt).iter(|| async { registry.heartbeat(registration.clone()).await.expect("heartbeat") });
    });
}

/// Find 10 instances of one service among 10, 1,000 and 100,000 registered nodes.
fn find_by_service(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("memory/find_by_service");
    for total in [10usize, 1_000, 100_000] {
        let registry = rt.block_on(async {
            let registry = MemoryRegistry::new();
            populate(&registry, total, 10).await.expect("populate");
            registry
        });
        let query = ServiceQuery::parse("target-service@^1").expect("query");
        assert_eq!(rt.block_on(registry.find(&query)).expect("find").len(), 10);
        group.bench_with_input(BenchmarkId::from_parameter(total), &total, |b, _| {
            b.to_async(&rt).iter(|| async { registry.find(&query).await.expect("find") });
        });
    }
    group.finish();
}

/// An agent's cached lookup of a service with 3 instances among 1,000 nodes.
fn cached_lookup(c: &mut Criterion) {
    let rt = runtime();
    let (agent, query) = rt.block_on(async {
        let registry = MemoryRegistry::new();
        populate(&registry, 1_000, 3).await.expect("populate");
        let agent = Agent::builder(registry)
            .options(DiscoveryOptions { client_mode: true, ..DiscoveryOptions::default() })
            .address(Address::parse("127.0.0.1:1").expect("address"))
            .build()
            .expect("agent");
        agent.start().await.expect("start");
        let query = ServiceQuery::titan("target-service", None).expect("query");
        while agent.cache().find(&query).map(|n| n.len()).unwrap_or(0) != 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (agent, query)
    });
    c.bench_function("agent/cached_lookup_3_of_1000", |b| {
        b.iter(|| agent.cache().find(&query).expect("cache synced"));
    });
    let exact = ServiceQuery::titan("target-service", Some("1.1.0")).expect("query");
    c.bench_function("agent/cached_lookup_exact_1_of_1000", |b| {
        b.iter(|| agent.cache().find(&exact).expect("cache synced"));
    });
}

criterion_group!(benches, heartbeat_existing, find_by_service, cached_lookup);
criterion_main!(benches);
