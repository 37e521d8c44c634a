//! The history checker on in-process servers: a run with severed and cleanly ended watch feeds and failing
//! heartbeats keeps every promise, and a seeded bug — a store that acknowledges a registration it
//! never keeps — is caught and shown, and replays from its seed with the same history; an observer
//! that stops following is caught too.

use std::time::Duration;

use muster_memory::MemoryRegistry;
use muster_server::ServerConfig;
use muster_testkit::faults::FaultyRegistry;
use muster_testkit::harness::{Harness, Lockstep, Workload, schedule};
use muster_testkit::history::OpKind;

use crate::TestServer;

fn workload(seed: u64) -> Workload {
    Workload { seed, clients: 4, nodes_per_client: 4, watchers: 3, ttl: Duration::from_millis(1_000) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_faults_keeps_every_promise() {
    let seed = 1 + u64::from(std::process::id() % 1000);
    eprintln!("history seed {seed}");
    let store = FaultyRegistry::new(MemoryRegistry::new());
    let servers = [
        TestServer::start(store.clone(), ServerConfig::default()).await,
        TestServer::start(store.clone(), ServerConfig::default()).await,
    ];
    let harness = Harness::start(servers.iter().map(|s| s.base.clone()).collect(), workload(seed));
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _fault = harness.fault();
        // The servers' change feeds break with an error, or end cleanly (as a restarting server's do).
        if round % 2 == 0 {
            store.sever_watches();
        } else {
            store.end_watches();
        }
        store.fail_heartbeats(5);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let history = harness.finish(Duration::from_secs(1)).await;
    assert!(history.ops.iter().filter(|op| op.acked_ms.is_some()).count() > 50, "the workload ran");
    assert!(history.watches.iter().all(|w| w.seen.len() > 5), "the watchers saw it");
    assert_eq!(history.caught_up(), history.watches.len(), "every watcher is replayed");
    let violations = history.check();
    assert!(
        violations.is_empty(),
        "seed {seed}:\n{}",
        violations.iter().map(ToString::to_string).collect::<String>()
    );
}

/// An observer that stops following — an SDK resolver whose server became unreachable (its network
/// blackholed for good), left with its last list — is caught: it does not converge after the
/// fault, and ends with another view than the registry's; a resolver with a working network
/// converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_that_stops_following_is_caught() {
    use muster_testkit::proxy::{Fault, FaultProxy};
    use std::sync::Arc;
    let server = TestServer::memory().await;
    let mut harness = Harness::start(vec![server.base.clone()], workload(11));
    let proxy = FaultProxy::start(server.base.trim_start_matches("http://").parse().unwrap()).await;
    for (name, base) in
        [("following", server.base.clone()), ("cut off", format!("http://{}", proxy.address()))]
    {
        let config = muster_client::ClientConfig { registry_url: base, ..Default::default() };
        let client = Arc::new(muster_client::Client::with_config(config).unwrap());
        harness.observe(name, muster_testkit::harness::resolver_view(client, "svc"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    harness.converge(Duration::from_secs(2)).await;
    let fault = harness.fault();
    proxy.set(Fault::Blackhole);
    // Nodes come and go meanwhile (TTL 1 s, some abandoned, some deregistered).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    drop(fault);
    harness.converge(Duration::from_secs(2)).await;
    let history = harness.finish(Duration::from_secs(1)).await;
    let violations = history.check();
    let about = |name: &str| {
        violations
            .iter()
            .filter(|v| v.invariant == "observers converge" && v.detail.starts_with(name))
            .count()
    };
    assert_eq!(about("following"), 0, "{violations:?}");
    assert_eq!(about("cut off"), 2, "not converged after the fault, another view at the end: {violations:?}");
    assert!(
        history.observers.iter().all(|o| o.convergence_ms[0].is_some()),
        "both converged before the fault"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_seeded_bug() {
    let seed = 7;
    // Client 0's first node; the lost registration is the last word on it only if the client
    // never registers it again, so the node is the only one of its client.
    let workload = Workload { clients: 2, nodes_per_client: 1, ..workload(seed) };
    let victim = format!("s{seed}-c0-n0");
    let store = FaultyRegistry::new(MemoryRegistry::new());
    store.lose_next_registration_of(&victim);
    let server = TestServer::start(store, ServerConfig::default()).await;
    let harness = Harness::start(vec![server.base.clone()], workload);
    // Stopped as soon as the lost registration is acknowledged: before the client learns of the
    // loss (its next heartbeat, 250 ms later, would find the node missing and register again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !harness.acknowledged(&victim) {
        assert!(tokio::time::Instant::now() < deadline, "the victim's registration is acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let history = harness.finish(Duration::from_secs(1)).await;
    let violations = history.check();
    let caught = violations
        .iter()
        .find(|v| v.invariant == "acknowledged registrations" && v.detail.contains(&victim))
        .unwrap_or_else(|| {
            panic!("the lost registration of {victim} is caught: {violations:?}\n{history:?}")
        });
    let shown = caught.to_string();
    assert!(shown.contains("Register") && shown.contains("acked"), "the history that shows it:\n{shown}");
}

/// What a run leaves to compare with its replay: the faults (operation count, kind), every
/// operation (node, kind, acknowledged) and the violations found (invariant and the nodes named).
type Replay = (Vec<(usize, usize)>, Vec<(String, OpKind, bool)>, Vec<String>);

/// A failing run replays from its seed: in lockstep (one operation at a time, chosen by the seed)
/// against an in-process store whose faults act on operations — watch feeds severed or ended,
/// heartbeats failed, and a seeded bug (a registration acknowledged and not kept) — two runs of
/// one seed have the same faults at the same operations, the same operations with the same
/// outcomes, and the same violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_replays_from_its_seed() {
    let seed = 3;
    let first = replay(seed).await;
    assert!(
        first.2.iter().any(|v| v.starts_with("acknowledged registrations")),
        "the seeded bug is caught: {:?}",
        first.2
    );
    let second = replay(seed).await;
    assert_eq!(first.0, second.0, "the same faults at the same operations");
    assert_eq!(first.1, second.1, "the same operations with the same outcomes");
    assert_eq!(first.2, second.2, "the same violation");
    assert!(first.1.len() > 20, "the run did something: {:?}", first.1);
}

async fn replay(seed: u64) -> Replay {
    // A TTL far above the run's length: no outcome depends on how fast the steps go.
    let workload =
        Workload { clients: 3, nodes_per_client: 3, ttl: Duration::from_secs(30), ..workload(seed) };
    let nodes: Vec<String> = (0..3).flat_map(|c| (0..3).map(move |n| format!("s{seed}-c{c}-n{n}"))).collect();
    let store = FaultyRegistry::new(MemoryRegistry::new());
    let servers = [
        TestServer::start(store.clone(), ServerConfig::default()).await,
        TestServer::start(store.clone(), ServerConfig::default()).await,
    ];
    let mut run = Lockstep::start(servers.iter().map(|s| s.base.clone()).collect(), workload);
    let plan = schedule(seed, 4, 8, 5..15);
    let mut pending = plan.iter().peekable();
    let mut victim: Option<&String> = None;
    // Whether each node's last acknowledged operation left it registered.
    let mut registered: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
    for step in 0..400 {
        while let Some(&(_, kind)) = pending.next_if(|(at, _)| *at == step) {
            match kind {
                0 => store.sever_watches(),
                1 => store.end_watches(),
                2 => store.fail_heartbeats(3),
                _ => {
                    // The seeded bug: the next registration of a node not in the store now (its
                    // last acknowledged word took it out, or it never had one) is lost.
                    let absent: Vec<&String> =
                        nodes.iter().filter(|n| !registered.get(*n).copied().unwrap_or(false)).collect();
                    let chosen = absent.get(step % absent.len().max(1)).copied().unwrap_or(&nodes[0]);
                    store.lose_next_registration_of(chosen);
                    victim = Some(chosen);
                }
            }
        }
        let op = run.step().await;
        if op.acked_ms.is_some() {
            registered.insert(op.node.clone(), op.kind != OpKind::Deregister);
        }
        // Stopped once the lost registration is acknowledged: before its owner learns of the loss.
        if victim == Some(&op.node) && op.kind == OpKind::Register && op.acked_ms.is_some() {
            break;
        }
    }
    let history = run.finish(Duration::from_secs(1)).await;
    let ops = history.ops.iter().map(|op| (op.node.clone(), op.kind, op.acked_ms.is_some())).collect();
    let violations = history
        .check()
        .iter()
        .map(|v| {
            let named: Vec<&String> = nodes.iter().filter(|n| v.detail.contains(n.as_str())).collect();
            format!("{} {named:?}", v.invariant)
        })
        .collect();
    (plan, ops, violations)
}
