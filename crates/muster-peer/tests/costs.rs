//! What a call costs, counted where a loaded machine cannot fool it: the heap allocations per
//! `add(5, 3)` call on the caller's side and on the serving side, each side on a thread and a
//! single-threaded runtime of its own, so everything a side does for a call — encoding, queueing,
//! the socket, decoding, dispatch, the answer — runs and is counted on its thread. Each budget sits
//! a little above today's figure: a change that allocates more fails here. Speed itself is
//! measured in docs/BENCHMARKS.md (`muster-bench peer --separate`), never asserted in tests.
//!
//! A binary of its own: the counting allocator replaces the global one for the whole binary.

use std::sync::Arc;
use std::sync::mpsc;

use muster_peer::wire::Value;
use muster_peer::{Peer, PeerConfig, ServiceBuilder};

/// Allocations per call (debug build, as `cargo test` runs it), today's figures (2026-12-07):
/// caller 7 (8 before the request's array was sized at once), server 12; plus about 10 %. Lower
/// them with every change that saves allocations; `calls_cost_what_their_budgets_say` prints the
/// figures.
const CALLER_BUDGET: u64 = 8;
const SERVER_BUDGET: u64 = 13;

const CALLS: u64 = 200;

/// The service every test here serves: `calculator` 1.2.0 with `add(a, b)`.
fn calculator() -> Arc<muster_peer::Service> {
    ServiceBuilder::new("calculator", "1.2.0")
        .unwrap()
        .method("add", &["Number", "Number"], "Number", |(a, b): (f64, f64)| async move { Ok(a + b) })
        .build()
}

fn single_threaded() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn calls_cost_what_their_budgets_say() {
    // The serving side: it runs (and allocates) only while its thread is inside `block_on`, which
    // it enters on `start` and leaves when the caller says its calls are answered.
    let (address_tx, address_rx) = mpsc::channel();
    let (start_tx, start_rx) = mpsc::channel::<Arc<tokio::sync::Notify>>();
    let (count_tx, count_rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let runtime = single_threaded();
        let peer = runtime.block_on(async {
            let peer = Peer::new(PeerConfig::default());
            peer.expose_service(calculator()).unwrap();
            address_tx.send(peer.listen("127.0.0.1:0").await.unwrap()).unwrap();
            peer
        });
        for done in start_rx {
            let info = allocation_counter::measure(|| runtime.block_on(done.notified()));
            count_tx.send(info.count_total).unwrap();
        }
        runtime.block_on(peer.stop());
    });

    let runtime = single_threaded();
    let address = address_rx.recv().unwrap();
    // Connecting needs the serving side running too: a phase of its own, not counted.
    let connected = Arc::new(tokio::sync::Notify::new());
    start_tx.send(Arc::clone(&connected)).unwrap();
    let calculator = runtime.block_on(async {
        let remote = Peer::new(PeerConfig::default()).connect(&format!("ws://{address}")).await.unwrap();
        remote.query_interface("calculator").unwrap()
    });
    connected.notify_one();
    count_rx.recv().unwrap();
    let (mut caller, mut serving) = (u64::MAX, u64::MAX);
    // The first rounds warm caches up; the fewest is the steady state.
    for _ in 0..5 {
        let done = Arc::new(tokio::sync::Notify::new());
        start_tx.send(Arc::clone(&done)).unwrap();
        let info = allocation_counter::measure(|| {
            runtime.block_on(async {
                for _ in 0..CALLS {
                    let sum = calculator.call("add", vec![Value::Int(5), Value::Int(3)]).await.unwrap();
                    assert_eq!(sum, Value::Int(8));
                }
            })
        });
        done.notify_one();
        caller = caller.min(info.count_total / CALLS);
        serving = serving.min(count_rx.recv().unwrap() / CALLS);
    }
    // An interface is cloned into every task that calls through it: a clone shares the
    // definition instead of copying it.
    let clone = allocation_counter::measure(|| drop(std::hint::black_box(calculator.clone())));
    assert_eq!(clone.count_total, 0, "cloning an interface allocates");
    drop(start_tx);
    server.join().unwrap();
    eprintln!("allocations per call: caller {caller}, server {serving}");
    assert!(
        caller <= CALLER_BUDGET,
        "a call costs the caller {caller} allocations; the budget is {CALLER_BUDGET}"
    );
    assert!(
        serving <= SERVER_BUDGET,
        "a call costs the server {serving} allocations; the budget is {SERVER_BUDGET}"
    );
}

/// The value of counter `name` in a peer's metrics text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{metrics}"))
}

/// Socket writes per call on the caller's side, with 64 calls in flight on one connection: the
/// frames the callers queue together leave in one write. The callers run on tokio's
/// multi-threaded runtime (one worker), which runs a task as soon as another wakes it: unless the
/// writer lets the other ready callers queue first, it wakes on the first frame and writes it
/// alone — a write (a system call, and a wake of the other side) per call.
#[test]
fn calls_in_flight_share_socket_writes() {
    const CALLERS: u64 = 64;
    const ROUNDS: u64 = 40;
    let (address_tx, address_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        single_threaded().block_on(async {
            let peer = Peer::new(PeerConfig::default());
            peer.expose_service(calculator()).unwrap();
            address_tx.send(peer.listen("127.0.0.1:0").await.unwrap()).unwrap();
            let _ = stop_rx.await;
            peer.stop().await;
        });
    });
    let address = address_rx.recv().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (frames, writes) = runtime.block_on(async {
        let peer = Peer::new(PeerConfig::default());
        let calculator =
            peer.connect(&format!("ws://{address}")).await.unwrap().query_interface("calculator").unwrap();
        let before = peer.metrics_text();
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let calculator = calculator.clone();
                tokio::spawn(async move {
                    for _ in 0..ROUNDS {
                        let sum = calculator.call("add", vec![Value::Int(5), Value::Int(3)]).await.unwrap();
                        assert_eq!(sum, Value::Int(8));
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        let after = peer.metrics_text();
        let delta = |name| counter(&after, name) - counter(&before, name);
        (delta("netron_frames_written_total"), delta("netron_socket_writes_total"))
    });
    let _ = stop_tx.send(());
    server.join().unwrap();
    let calls = CALLERS * ROUNDS;
    eprintln!("{calls} calls: {frames} frames in {writes} socket writes");
    assert!(frames >= calls, "every call is a frame: {frames} frames for {calls} calls");
    assert!(
        writes * 4 <= calls,
        "{writes} socket writes for {calls} calls in flight 64 at a time: more than one per 4 calls"
    );
}

/// What calling by name adds to a direct call, in allocations per call (both sides on one
/// runtime, debug build): today 23 against 19 — the list of `UP` instances and its view for the
/// selector, the selector's order, the arguments kept for a retry. It was 8 more (27) while a
/// failover attempt copied the instance it called (its id, service, version and address). And a
/// named service, cloned into every task that calls through it like an interface, shares its query
/// and instance cache: a clone allocates nothing (it copied the query and its text before).
const BY_NAME_EXTRA_BUDGET: u64 = 5;

#[test]
fn calls_by_name_cost_little_more_than_direct_calls() {
    let runtime = single_threaded();
    let (server, client, named, direct) = runtime.block_on(async {
        let registry: Arc<dyn muster_core::Registry> = Arc::new(muster_memory::MemoryRegistry::new());
        let options = muster_core::DiscoveryOptions::default();
        let server = Peer::new(PeerConfig::default());
        server.expose_service(calculator()).unwrap();
        let address = server.listen("127.0.0.1:0").await.unwrap();
        let listed = muster_core::Address::parse(address.to_string()).unwrap();
        server.enable_discovery(Arc::clone(&registry), options.clone(), Some(listed)).await.unwrap();
        let client = Peer::new(PeerConfig::default());
        client.enable_discovery(registry, options, None).await.unwrap();
        let named = client.service("calculator@^1.2").unwrap();
        // A bound against hanging, not a measured margin: discovery sees the node on its first
        // read of the store.
        let found = async {
            while named.instances().await.unwrap().is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), found)
            .await
            .expect("the client's discovery finds the serving peer");
        let direct =
            client.connect(&format!("ws://{address}")).await.unwrap().query_interface("calculator").unwrap();
        (server, client, named, direct)
    });
    let clone = allocation_counter::measure(|| drop(std::hint::black_box(named.clone())));
    assert_eq!(clone.count_total, 0, "cloning a named service allocates");

    // Both sides run on this thread inside `block_on`: each count is a whole call's.
    let per_call = |by_name: bool| {
        let info = allocation_counter::measure(|| {
            runtime.block_on(async {
                for _ in 0..CALLS {
                    let args = vec![Value::Int(5), Value::Int(3)];
                    let sum =
                        if by_name { named.call("add", args).await } else { direct.call("add", args).await };
                    assert_eq!(sum.unwrap(), Value::Int(8));
                }
            })
        });
        info.count_total / CALLS
    };
    let (mut by_name, mut direct_cost) = (u64::MAX, u64::MAX);
    // The first rounds warm caches up (the named service's instance list and interface among
    // them); the fewest is the steady state.
    for _ in 0..5 {
        by_name = by_name.min(per_call(true));
        direct_cost = direct_cost.min(per_call(false));
    }
    eprintln!("allocations per call, both sides: by name {by_name}, direct {direct_cost}");
    assert!(
        by_name <= direct_cost + BY_NAME_EXTRA_BUDGET,
        "a call by name costs {by_name} allocations, a direct one {direct_cost}: more than {BY_NAME_EXTRA_BUDGET} extra"
    );
    runtime.block_on(async {
        client.stop().await;
        server.stop().await;
    });
}

/// A stream chunk's packet is encoded into one buffer allocated at its size: growing to a 64 KiB
/// payload reallocated (and copied) it twice more.
#[test]
fn a_chunk_is_encoded_in_one_allocation() {
    let chunk = muster_peer::wire::Packet::chunk(1, 2, 3, Value::Bin(vec![7; 64 * 1024]), true, false);
    let info = allocation_counter::measure(|| drop(std::hint::black_box(chunk.encode().unwrap())));
    assert_eq!(info.count_total, 1, "encoding a 64 KiB chunk allocates {} times", info.count_total);
}
