//! What a request costs, counted where it cannot be fooled by a loaded machine: the heap
//! allocations made on the thread that serves a resolve, a heartbeat and a registration through
//! the whole router (extractors, access control, metrics, the store, the JSON answer), on the
//! embedded store. Background work (the hub following the store) runs on another thread and is not
//! counted. Each budget sits a little above today's figure: a change that allocates more fails
//! here. Speed itself is measured in docs/BENCHMARKS.md, never asserted in tests.
//!
//! A binary of its own: the counting allocator replaces the global one for the whole binary.

use std::sync::Arc;

use axum::body::Body;
use http::Request;
use muster_server::{AppState, ServerConfig};
use tower::ServiceExt;

/// Allocations per request (debug build, as `cargo test` runs it): today's figure (2026-12-06,
/// after the hand-written front services and the borrowed seed-003 views: resolve 81, seed-003
/// resolve 80, heartbeat 43, registration 55 — 64 before JSON bodies decoded without path tracking;
/// before them 144, 266, 102, 123) plus about 10 %.
/// Lower them with every change that saves allocations; `costs_are_counted` prints the figures.
const RESOLVE_BUDGET: u64 = 89;
const SEED_RESOLVE_BUDGET: u64 = 88;
const HEARTBEAT_BUDGET: u64 = 48;
const REGISTRATION_BUDGET: u64 = 61;

/// Fewest allocations of `runs` sends of the request `make(n)` builds (the first sends warm caches
/// up; the fewest is the steady state), with the status of the last.
fn allocations(
    runtime: &tokio::runtime::Runtime,
    router: &axum::Router,
    runs: usize,
    make: impl Fn(usize) -> Request<Body>,
) -> (u64, u16) {
    let mut fewest = u64::MAX;
    let mut status = 0;
    for n in 0..runs {
        let (router, request) = (router.clone(), make(n));
        let info = allocation_counter::measure(|| {
            let response = runtime.block_on(router.oneshot(request)).expect("the router answers");
            status = response.status().as_u16();
        });
        fewest = fewest.min(info.count_total);
    }
    (fewest, status)
}

fn put_json(uri: &str, body: String) -> Request<Body> {
    Request::put(uri).header("content-type", "application/json").body(Body::from(body)).unwrap()
}

#[test]
fn costs_are_counted() {
    // Requests run on this thread (`block_on`); the server's tasks on the runtime's worker.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _entered = runtime.enter();
    let state = AppState::new(Arc::new(muster_memory::MemoryRegistry::new()), ServerConfig::default());
    let router = muster_server::router(state);
    // 100 instances over 10 services, as the benchmark.
    for i in 0..100 {
        let body = format!(
            r#"{{"address":"10.0.0.{}:8080","services":[{{"name":"svc-{}","version":"1.{}.0"}}],"ttlMs":600000}}"#,
            i + 1,
            i % 10,
            i % 3
        );
        let response =
            runtime.block_on(router.clone().oneshot(put_json(&format!("/v1/nodes/bench-{i}"), body)));
        assert_eq!(response.unwrap().status(), 201);
    }

    let (resolve, status) = allocations(&runtime, &router, 20, |_| {
        Request::get("/v1/services/svc-3/instances").body(Body::empty()).unwrap()
    });
    assert_eq!(status, 200);
    let (seed_resolve, status) =
        allocations(&runtime, &router, 20, |_| Request::get("/resolve/svc-3").body(Body::empty()).unwrap());
    assert_eq!(status, 200);
    let (heartbeat, status) = allocations(&runtime, &router, 20, |n| {
        Request::put(format!("/v1/nodes/bench-{}/heartbeat", n % 100)).body(Body::empty()).unwrap()
    });
    assert_eq!(status, 200);
    let (registration, status) = allocations(&runtime, &router, 20, |n| {
        let body = format!(
            r#"{{"address":"10.1.0.{}:8080","services":[{{"name":"reg-{}"}}],"ttlMs":600000}}"#,
            n % 250 + 1,
            n % 10
        );
        put_json(&format!("/v1/nodes/reg-{n}"), body)
    });
    assert_eq!(status, 201);

    eprintln!(
        "allocations per request: resolve {resolve}, seed-003 resolve {seed_resolve}, heartbeat {heartbeat}, registration {registration}"
    );
    assert!(resolve > 0, "the counting allocator is in place");
    let over: Vec<String> = [
        ("resolve", resolve, RESOLVE_BUDGET),
        ("seed-003 resolve", seed_resolve, SEED_RESOLVE_BUDGET),
        ("heartbeat", heartbeat, HEARTBEAT_BUDGET),
        ("registration", registration, REGISTRATION_BUDGET),
    ]
    .into_iter()
    .filter(|(_, count, budget)| count > budget)
    .map(|(what, count, budget)| format!("{what}: {count} allocations, budget {budget}"))
    .collect();
    assert!(over.is_empty(), "over budget:\n{}", over.join("\n"));
}
