//! The workload of the fault runs: concurrent clients registering, heartbeating, deregistering
//! and abandoning nodes (a crash without deregistration) on any of a fleet's `muster serve`
//! processes, and SSE watchers that resume on another server when theirs fails — everything
//! recorded as a [`History`] for the checker. Faults are the caller's: it injects them while the
//! workload runs and marks their windows with [`Harness::fault`].
//!
//! Faults are placed by operation count, not by the clock: [`schedule`] derives from the seed at
//! which operation each fault comes and which kind it is, and [`Harness::until_ops`] waits for
//! that count, so a printed seed gives a failing run's faults in the same order at the same points
//! of the workload. [`Lockstep`] goes further: one operation at a time, the client and node chosen
//! by the seed, so against a store whose faults act on operations (not on time) the same seed
//! gives the same operations with the same outcomes — a failing history replays.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use muster_client::{Client, ClientConfig, RegistrationSpec, WatchOptions};
use muster_core::{NodeStatus, Revision, WatchEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::history::{History, Observed, Op, OpKind, Seen, WatchLog, now_ms};

mod actors;

use actors::*;

/// Where the faults of a run come, derived from its seed: `count` faults, each as `(operation
/// count, kind)` with `kind < kinds`; the gaps between them are drawn from `gap`, and the kinds go
/// round in an order drawn from the seed (every kind once before any repeats).
pub fn schedule(seed: u64, kinds: usize, count: usize, gap: std::ops::Range<usize>) -> Vec<(usize, usize)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut order: Vec<usize> = (0..kinds).collect();
    // Fisher-Yates with the seeded generator.
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut at = 0;
    (0..count)
        .map(|n| {
            at += rng.random_range(gap.clone());
            (at, order[n % kinds.max(1)])
        })
        .collect()
}

/// What the clients and watchers do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Seeds every random choice (printed by the runs so a failure can be replayed).
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Nodes each client owns (a node is only ever touched by its client, one operation at a time).
    pub nodes_per_client: usize,
    /// SSE watchers.
    pub watchers: usize,
    /// The nodes' TTL; nodes heartbeat about four times per TTL.
    pub ttl: Duration,
}

/// An observer's view of the registry, read on demand: an entry per active node, [`entry`] of its
/// id and address (the workload moves a node to another port at every registration, so a view
/// that stopped following differs soon); `None` when it cannot say now (not started, or its
/// source is down).
pub type View = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<BTreeSet<String>>> + Send + Sync>;

/// One node in a [`View`]: `<id> <address>`.
pub fn entry(id: &str, address: &str) -> String {
    format!("{id} {address}")
}

/// The view of an SDK resolver: the instances of `service` (any version) its cache holds, `None`
/// when it has none to give (it never reached its registry).
pub fn resolver_view(client: Arc<Client>, service: &str) -> View {
    let service = service.to_owned();
    Arc::new(move || {
        let (client, service) = (Arc::clone(&client), service.clone());
        Box::pin(async move {
            let found = client.instances(&service, &muster_core::VersionQuery::Any).await.ok()?;
            Some(found.instances.iter().map(|i| entry(&i.id, &format!("{}:{}", i.host, i.port))).collect())
        })
    })
}

/// An observer apart from the watchers, and how long it took to converge after each fault.
struct Observer {
    name: String,
    view: View,
    convergence_ms: Vec<Option<u64>>,
    /// How its view differed from the registry's each time it did not converge in time.
    evidence: Vec<String>,
}

/// How an observer's view differs from the registry's, for a violation's evidence.
fn difference(view: Option<&BTreeSet<String>>, registry: Option<&BTreeSet<String>>) -> String {
    match (view, registry) {
        (None, _) => "the observer had no view to give".to_owned(),
        (_, None) => "no server answered for the registry's view".to_owned(),
        (Some(view), Some(registry)) => format!(
            "missing {:?}, extra {:?}",
            registry.difference(view).collect::<Vec<_>>(),
            view.difference(registry).collect::<Vec<_>>()
        ),
    }
}

/// A running workload.
pub struct Harness {
    servers: Vec<String>,
    ops: Arc<Mutex<Vec<Op>>>,
    watches: Vec<Arc<Mutex<WatchLog>>>,
    faults: Arc<Mutex<Vec<(u64, u64)>>>,
    stop_clients: CancellationToken,
    stop_watchers: CancellationToken,
    clients: Vec<tokio::task::JoinHandle<()>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    workload: Workload,
    observers: Vec<Observer>,
}

/// Marks a fault window until dropped.
pub struct FaultWindow {
    started: u64,
    faults: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl Drop for FaultWindow {
    fn drop(&mut self) {
        lock(&self.faults).push((self.started, now_ms()));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn client_of(base: &str) -> Client {
    let config = ClientConfig {
        registry_url: base.to_owned(),
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    Client::with_config(config).expect("a client for a loopback URL")
}

impl Harness {
    /// Starts the clients and watchers against `servers` (base URLs).
    pub fn start(servers: Vec<String>, workload: Workload) -> Self {
        muster_client::install_tls_provider();
        let ops = Arc::new(Mutex::new(Vec::new()));
        let stop_clients = CancellationToken::new();
        let stop_watchers = CancellationToken::new();
        let mut watches = Vec::new();
        let mut watchers = Vec::new();
        for n in 0..workload.watchers {
            let log = Arc::new(Mutex::new(WatchLog { name: format!("watcher-{n}"), seen: Vec::new() }));
            watches.push(Arc::clone(&log));
            let rng = StdRng::seed_from_u64(workload.seed.wrapping_add(1_000 + n as u64));
            watchers.push(tokio::spawn(watch(servers.clone(), log, rng, stop_watchers.clone())));
        }
        let clients = (0..workload.clients)
            .map(|n| {
                let rng = StdRng::seed_from_u64(workload.seed.wrapping_add(n as u64));
                let state = ClientState::new(&servers, node_names(&workload, n), workload.ttl, rng);
                tokio::spawn(client(state, Arc::clone(&ops), stop_clients.clone()))
            })
            .collect();
        Self {
            servers,
            ops,
            watches,
            faults: Arc::new(Mutex::new(Vec::new())),
            stop_clients,
            stop_watchers,
            clients,
            watchers,
            workload,
            observers: Vec::new(),
        }
    }

    /// Adds an observer apart from the watchers (an embedded agent's cache, an SDK resolver, a
    /// peer's discovery): [`Harness::converge`] and [`Harness::finish`] compare its view with the
    /// registry's (invariant 8).
    pub fn observe(&mut self, name: impl Into<String>, view: View) {
        self.observers.push(Observer {
            name: name.into(),
            view,
            convergence_ms: Vec::new(),
            evidence: Vec::new(),
        });
    }

    /// After a fault healed: waits until every observer's view equals the registry's (its active
    /// nodes, read from the servers just before and just after the view, so a change between the
    /// two reads does not count against it), at most `bound`; records how long each took, or that
    /// it did not converge. The workload goes on meanwhile.
    pub async fn converge(&mut self, bound: Duration) {
        let started = tokio::time::Instant::now();
        let mut pending: Vec<usize> = (0..self.observers.len()).collect();
        while !pending.is_empty() {
            let before = self.active_nodes().await;
            let mut views = Vec::new();
            for &n in &pending {
                views.push((self.observers[n].view)().await);
            }
            let after = self.active_nodes().await;
            let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let mut still = Vec::new();
            let mut differences = Vec::new();
            for (n, view) in pending.into_iter().zip(views) {
                let agrees =
                    view.as_ref().is_some_and(|v| Some(v) == before.as_ref() || Some(v) == after.as_ref());
                if agrees {
                    self.observers[n].convergence_ms.push(Some(elapsed));
                } else {
                    still.push(n);
                    differences.push(difference(view.as_ref(), after.as_ref()));
                }
            }
            pending = still;
            if started.elapsed() >= bound {
                for (&n, difference) in pending.iter().zip(differences) {
                    let round = self.observers[n].convergence_ms.len() + 1;
                    self.observers[n].convergence_ms.push(None);
                    self.observers[n]
                        .evidence
                        .push(format!("after fault {round}, at the bound: {difference}"));
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The registry's active nodes as one server that answers says now, as [`View`] entries.
    async fn active_nodes(&self) -> Option<BTreeSet<String>> {
        for base in &self.servers {
            if let Ok(list) = client_of(base).nodes(false).await {
                return Some(
                    list.nodes.iter().map(|n| entry(n.node_id.as_str(), n.address.as_str())).collect(),
                );
            }
        }
        None
    }

    /// True once an operation on `node` was acknowledged.
    pub fn acknowledged(&self, node: &str) -> bool {
        lock(&self.ops).iter().any(|op| op.node == node && op.acked_ms.is_some())
    }

    /// Operations recorded so far.
    pub fn ops(&self) -> usize {
        lock(&self.ops).len()
    }

    /// Waits until `count` operations are recorded (polled; the clients run meanwhile).
    pub async fn until_ops(&self, count: usize) {
        while self.ops() < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Marks a fault from now until the returned guard drops.
    pub fn fault(&self) -> FaultWindow {
        FaultWindow { started: now_ms(), faults: Arc::clone(&self.faults) }
    }

    /// Stops the clients, reads the final state from the first server that answers, lets the
    /// watchers catch up with it (bounded), and returns the history.
    pub async fn finish(mut self, expiry_bound: Duration) -> History {
        self.stop_clients.cancel();
        for client in std::mem::take(&mut self.clients) {
            let _ = client.await;
        }
        let (final_nodes, final_revision) = self.final_state().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::time::Instant::now() < deadline {
            let behind =
                self.watches.iter().any(|w| last_revision(&lock(w)).is_none_or(|r| r < final_revision));
            if !behind {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop_watchers.cancel();
        for watcher in std::mem::take(&mut self.watchers) {
            let _ = watcher.await;
        }
        // Each observer's final view against the registry's as read around it (nodes abandoned
        // at the end expire meanwhile), until they agree or 15 s passed.
        let mut observers = Vec::new();
        for observer in std::mem::take(&mut self.observers) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            let (final_view, registry_view) = loop {
                let before = self.active_nodes().await.unwrap_or_default();
                let view = (observer.view)().await.unwrap_or_default();
                let after = self.active_nodes().await.unwrap_or_default();
                if view == before || view == after || tokio::time::Instant::now() >= deadline {
                    break (view.clone(), if view == before { before } else { after });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            observers.push(Observed {
                name: observer.name,
                convergence_ms: observer.convergence_ms,
                evidence: observer.evidence,
                final_view,
                registry_view,
            });
        }
        History {
            ops: std::mem::take(&mut *lock(&self.ops)),
            watches: self.watches.iter().map(|w| lock(w).clone()).collect(),
            ttl_ms: u64::try_from(self.workload.ttl.as_millis()).unwrap_or(u64::MAX),
            expiry_bound_ms: u64::try_from(expiry_bound.as_millis()).unwrap_or(u64::MAX),
            faults: std::mem::take(&mut *lock(&self.faults)),
            final_nodes,
            final_revision,
            observers,
        }
    }

    async fn final_state(&self) -> (BTreeSet<String>, u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            for base in &self.servers {
                if let Ok(list) = client_of(base).nodes(false).await {
                    return (list.nodes.iter().map(|n| n.node_id.to_string()).collect(), list.revision.0);
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no server answered for the final state");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The workload one operation at a time: each step, the seed chooses a client, which chooses and
/// performs one operation and waits for its outcome before the next step; watchers run beside it.
/// The caller injects faults between steps (see the module's documentation).
pub struct Lockstep {
    harness: Harness,
    states: Vec<ClientState>,
    order: StdRng,
}

impl Lockstep {
    /// Starts the watchers against `servers`; the clients act only through [`Lockstep::step`].
    pub fn start(servers: Vec<String>, workload: Workload) -> Self {
        let mut harness = Harness::start(servers.clone(), Workload { clients: 0, ..workload.clone() });
        harness.workload = workload.clone();
        let states = (0..workload.clients)
            .map(|n| {
                let rng = StdRng::seed_from_u64(workload.seed.wrapping_add(n as u64));
                ClientState::new(&servers, node_names(&workload, n), workload.ttl, rng)
            })
            .collect();
        Self { harness, states, order: StdRng::seed_from_u64(workload.seed ^ 0x0bde_7000) }
    }

    /// One operation (steps that abandon a node send nothing and are not counted): recorded, and
    /// returned.
    pub async fn step(&mut self) -> Op {
        loop {
            let client = self.order.random_range(0..self.states.len());
            if let Some(op) = self.states[client].step().await {
                lock(&self.harness.ops).push(op.clone());
                return op;
            }
        }
    }

    /// The harness (fault windows, [`Harness::finish`]).
    pub fn harness(&self) -> &Harness {
        &self.harness
    }

    /// Stops the watchers once they caught up and returns the history (see [`Harness::finish`]).
    pub async fn finish(self, expiry_bound: Duration) -> History {
        self.harness.finish(expiry_bound).await
    }
}
