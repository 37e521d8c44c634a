//! Proof under faults: two `muster serve` processes on one Redis (append-only file, fsync on every
//! write), each reaching it through a fault proxy; clients and watchers from the history harness;
//! fault kinds in turn — Redis SIGKILLed and restarted, a server SIGKILLed and restarted, the
//! network between a server and Redis blackholed, slowed by 300 ms, partitioned (connections
//! reset), the network between the clients and a server blackholed, each healed, and a server
//! stopped gracefully and restarted (its watch streams end cleanly) — then every promise checked.
//!
//! Faults come at operation counts drawn from the seed (`harness::schedule`), each kind once in a
//! seeded order and then again, with an unreadable event-log entry among the kinds. The same
//! workload runs on Redis Sentinel and on Redis Cluster (`--redis-replica-acks 1`): the registry's
//! primary SIGKILLed and its replica promoted (also after the replica was cut off, losing the
//! primary's last writes), that replica frozen, servers killed or stopped, clients cut off, and on
//! a Cluster another master's failover.
//!
//! The seeds are printed; `MUSTER_FAULT_SEEDS=1,2` replays chosen ones (the same faults in the
//! same order at the same operation counts) and `MUSTER_FAULT_SECONDS` makes each run longer (the
//! faults repeat), for the long runs of docs/RELIABILITY.md.

use std::time::Duration;

use muster_redis::RedisConfig;
use muster_testkit::harness::{Harness, Workload};
use muster_testkit::proxy::{Fault, FaultProxy};
use muster_testkit::redis_server::{RedisCluster, RedisServer, free_port};

use super::spawn_serve;

/// The observers apart from the SSE watchers, each with its own view of the fleet: an SDK
/// resolver (its watch through `registry_url`, the server the clients reach through a fault
/// proxy), an embedded agent in client mode on the store itself (its cache, fed by the store's
/// own watch), and a Netron peer's discovery on the store (what `find_service` answers). Their
/// views must equal the registry's within [`CONVERGENCE`] after each fault heals, and at the end.
/// The returned value keeps them running.
async fn observe(harness: &mut Harness, registry_url: &str, store: muster_redis::RedisConfig) -> Observers {
    use muster_core::Registry;
    use muster_testkit::harness::entry;
    let entries = |nodes: &[std::sync::Arc<muster_core::NodeInfo>]| {
        nodes.iter().map(|n| entry(n.node_id.as_str(), n.address.as_str())).collect()
    };
    let config = muster_client::ClientConfig { registry_url: registry_url.to_owned(), ..Default::default() };
    let resolver = std::sync::Arc::new(muster_client::Client::with_config(config).unwrap());
    harness.observe(
        "SDK resolver",
        muster_testkit::harness::resolver_view(std::sync::Arc::clone(&resolver), "svc"),
    );
    let options = muster_core::DiscoveryOptions { client_mode: true, ..Default::default() };
    let registry: std::sync::Arc<dyn Registry> =
        std::sync::Arc::new(muster_redis::RedisRegistry::connect(store.clone()).await.unwrap());
    let agent = std::sync::Arc::new(
        muster_agent::Agent::builder_shared(registry)
            .options(options.clone())
            .node_id(muster_core::NodeId::new("observer-agent").unwrap())
            .address(muster_core::Address::parse("127.0.0.1:1").unwrap())
            .build()
            .unwrap(),
    );
    agent.start().await.unwrap();
    let cache = std::sync::Arc::clone(&agent);
    harness.observe(
        "embedded agent's cache",
        std::sync::Arc::new(move || {
            let view = cache.cache().nodes().ok().map(|nodes| entries(&nodes));
            Box::pin(async move { view })
        }),
    );
    let peer = muster_peer::Peer::new(muster_peer::PeerConfig::default());
    let registry: std::sync::Arc<dyn Registry> =
        std::sync::Arc::new(muster_redis::RedisRegistry::connect(store).await.unwrap());
    peer.enable_discovery(registry, options, None).await.unwrap();
    let discovery = peer.clone();
    harness.observe(
        "Netron peer's discovery",
        std::sync::Arc::new(move || {
            let peer = discovery.clone();
            Box::pin(async move {
                let found = peer.find_service("svc").await.ok()?;
                Some(entries(&found))
            })
        }),
    );
    Observers { _resolver: resolver, _agent: agent, _peer: peer }
}

/// How soon after a fault heals every observer must hold the registry's view: a promise, checked
/// on the wall clock, so with room for a loaded machine (the 20-minute runs saw at most 3.8 s; the
/// median is the first comparison, about 0.1 s).
const CONVERGENCE: Duration = Duration::from_secs(10);

/// Keeps the observers of [`observe`] running until dropped.
struct Observers {
    _resolver: std::sync::Arc<muster_client::Client>,
    _agent: std::sync::Arc<muster_agent::Agent>,
    _peer: muster_peer::Peer,
}

/// A `muster serve` on a fixed port (so a restart comes back at the same address).
struct Server {
    port: u16,
    redis_url: String,
    extra: Vec<String>,
    child: crate::Killed,
}

impl Server {
    fn start(port: u16, redis_url: &str) -> Self {
        Self::start_with(port, redis_url, &[])
    }

    fn start_with(port: u16, redis_url: &str, extra: &[&str]) -> Self {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--listen", listen.as_str(), "--redis", redis_url, "--log-level", "warn"];
        args.extend_from_slice(extra);
        let (child, _, _) = spawn_serve(args, &[]);
        Self {
            port,
            redis_url: redis_url.to_owned(),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            child,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        *self = self.again();
    }

    /// A new process with the same settings.
    fn again(&self) -> Self {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Self::start_with(self.port, &self.redis_url, &extra)
    }

    /// Stops the server with SIGTERM (it ends its watch streams cleanly and finishes its
    /// requests), waits for it, and starts it again.
    fn restart_gracefully(&mut self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
        *self = self.again();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("MUSTER_FAULT_SEEDS") {
        Ok(list) => list.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => {
            let base =
                u64::from(std::process::id()) * 1_000 + u64::from(muster_core::time::now_ms() as u32 % 1_000);
            vec![base, base + 1]
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_faults_keep_every_promise() {
    let seconds: u64 = std::env::var("MUSTER_FAULT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(44);
    for seed in seeds() {
        eprintln!("fault run: seed {seed} ({seconds} s); replay with MUSTER_FAULT_SEEDS={seed}");
        run(seed, Duration::from_secs(seconds)).await;
    }
}

async fn run(seed: u64, length: Duration) {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let target: std::net::SocketAddr = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxies = [FaultProxy::start(target).await, FaultProxy::start(target).await];
    let mut servers: Vec<Server> = proxies
        .iter()
        .map(|proxy| Server::start(free_port(), &format!("redis://{}", proxy.address())))
        .collect();
    // Clients reach the first server through a proxy too (faults between clients and a server).
    let front = FaultProxy::start(format!("127.0.0.1:{}", servers[0].port).parse().unwrap()).await;
    let urls = vec![format!("http://{}", front.address()), servers[1].base()];
    let workload =
        Workload { seed, clients: 4, nodes_per_client: 5, watchers: 3, ttl: Duration::from_secs(2) };
    let mut harness = Harness::start(urls.clone(), workload);
    let _observers = observe(&mut harness, &urls[0], RedisConfig::from_url(&redis.url()).unwrap()).await;
    let started = tokio::time::Instant::now();
    let mut injected = Vec::new();
    for &(at, kind) in &plan(seed, 8) {
        if started.elapsed() >= length {
            break;
        }
        at_op(&harness, at).await;
        let round = injected.len();
        let fault = harness.fault();
        match kind {
            0 => {
                redis.kill();
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                redis.restart().await;
                injected.push("redis SIGKILL + restart");
            }
            1 => {
                injected.push(kill_and_restart(&mut servers[(round / 8) % SERVERS]).await);
            }
            2 => {
                let victim = &proxies[(round / 8) % proxies.len()];
                victim.spell(Fault::Blackhole, Duration::from_millis(2_500)).await;
                injected.push("server-Redis blackhole, healed");
            }
            3 => {
                let victim = &proxies[(round / 8 + 1) % proxies.len()];
                victim.spell(Fault::Latency(Duration::from_millis(300)), Duration::from_secs(3)).await;
                injected.push("server-Redis latency 300 ms");
            }
            4 => {
                let victim = &proxies[(round / 8) % proxies.len()];
                victim.spell(Fault::Partition, Duration::from_secs(2)).await;
                injected.push("server-Redis partition (connections reset), healed");
            }
            5 => {
                front.spell(Fault::Blackhole, Duration::from_millis(2_500)).await;
                injected.push("clients-server blackhole, healed");
            }
            6 => {
                // An entry in the event log no reader can parse, under the next revision (as a
                // writer of another version might leave one): every watcher must resync, not skip it.
                let script = "local r = redis.call('INCR', KEYS[1]) \
                    redis.call('XADD', KEYS[2], string.format('%.0f-0', r), 'unreadable', 'entry') return r";
                let written =
                    redis.cli(&["eval", script, "2", "titan:discovery:revision", "titan:discovery:log"]);
                assert!(written.parse::<u64>().is_ok(), "the unreadable entry was written: {written}");
                injected.push("an unreadable event-log entry");
            }
            _ => {
                injected.push(stop_and_restart(&mut servers[(round / 8 + 1) % SERVERS]).await);
            }
        }
        // Let the fleet settle before the window closes (expiries delayed by the fault count in it).
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(fault);
        harness.converge(CONVERGENCE).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    judge(seed, harness, &injected, 8, "").await;
    drop(servers);
}

/// `muster serve` processes in a run.
const SERVERS: usize = 2;

/// A server SIGKILLed and started again a second later on the same port.
async fn kill_and_restart(server: &mut Server) -> &'static str {
    server.kill();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    server.restart();
    "muster serve SIGKILL + restart"
}

/// A server stopped with SIGTERM (its watch streams end cleanly: the watchers must take the end
/// as a break) and started again.
async fn stop_and_restart(server: &mut Server) -> &'static str {
    server.restart_gracefully();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    "muster serve SIGTERM + restart (watch streams end cleanly)"
}

/// The faults of a run, by operation count and kind, drawn from the seed (every kind once in an
/// order of its own, then again): the seed gives the same faults in the same order at the same
/// points of the workload. Printed, the first rounds.
fn plan(seed: u64, kinds: usize) -> Vec<(usize, usize)> {
    let plan = muster_testkit::harness::schedule(seed, kinds, 10_000, 50..90);
    eprintln!("seed {seed}: faults (operation count, kind) {:?} ...", &plan[..kinds * 2]);
    plan
}

/// Waits until the workload has made `count` operations, at most 10 s (a workload a fault
/// stalled does not stall the run).
async fn at_op(harness: &Harness, count: usize) {
    let _ = tokio::time::timeout(Duration::from_secs(10), harness.until_ops(count)).await;
}

/// Stops the workload, reads the history and checks every promise (the seed in every message).
async fn judge(seed: u64, harness: Harness, injected: &[&str], kinds: usize, store: &str) {
    let history = harness.finish(Duration::from_secs(1)).await;
    let acked = history.ops.iter().filter(|op| op.acked_ms.is_some()).count();
    let events: usize = history
        .watches
        .iter()
        .map(|w| w.seen.iter().filter(|s| matches!(s, muster_testkit::history::Seen::Event { .. })).count())
        .sum();
    eprintln!(
        "seed {seed}: {} operations ({acked} acknowledged), {events} events seen by {} watchers, faults: {injected:?}",
        history.ops.len(),
        history.watches.len()
    );
    for observed in &history.observers {
        let mut took: Vec<u64> = observed.convergence_ms.iter().flatten().copied().collect();
        took.sort_unstable();
        eprintln!(
            "seed {seed}: {} converged after {} faults, median {} ms, max {} ms (bound {} ms)",
            observed.name,
            took.len(),
            took.get(took.len() / 2).copied().unwrap_or(0),
            took.last().copied().unwrap_or(0),
            CONVERGENCE.as_millis()
        );
    }
    assert!(acked > 100, "the workload ran: {acked} acknowledged operations");
    assert_eq!(history.observers.len(), 3, "every observer was checked");
    assert!(injected.len() >= kinds, "every fault kind ran: {injected:?}");
    assert_eq!(
        history.caught_up(),
        history.watches.len(),
        "every watcher reached the final state (replayed)"
    );
    let violations = history.check();
    assert!(
        violations.is_empty(),
        "seed {seed} (replay with MUSTER_FAULT_SEEDS={seed}):\n{}{store}",
        violations.iter().map(ToString::to_string).collect::<String>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_sentinel_failovers_keep_every_promise() {
    let seconds: u64 = std::env::var("MUSTER_FAULT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    for seed in seeds().into_iter().take(1) {
        eprintln!("sentinel fault run: seed {seed} ({seconds} s); replay with MUSTER_FAULT_SEEDS={seed}");
        let store = Replicated::Sentinel(muster_testkit::redis_server::SentinelSetup::start().await);
        run_replicated(seed, Duration::from_secs(seconds), store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_cluster_failovers_keep_every_promise() {
    let seconds: u64 = std::env::var("MUSTER_FAULT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    for seed in seeds().into_iter().take(1) {
        eprintln!("cluster fault run: seed {seed} ({seconds} s); replay with MUSTER_FAULT_SEEDS={seed}");
        let store = Replicated::Cluster(RedisCluster::start_with_replicas().await);
        run_replicated(seed, Duration::from_secs(seconds), store).await;
    }
}

/// A replicated store whose primary can fail over.
enum Replicated {
    /// A master, a replica, three Sentinels.
    Sentinel(muster_testkit::redis_server::SentinelSetup),
    /// Three masters with a replica each; every key of the registry is in one slot.
    Cluster(RedisCluster),
}

/// A key in the slot that holds the registry's keys in a Cluster (the default prefix, hash-tagged).
const REGISTRY_SLOT_KEY: &str = "{titan:discovery}:revision";

impl Replicated {
    fn url(&self) -> String {
        match self {
            Self::Sentinel(sentinel) => sentinel.url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }

    /// Fault kinds: the Cluster has one more (a master that holds none of the registry's keys
    /// fails over).
    fn kinds(&self) -> usize {
        match self {
            Self::Sentinel(_) => 6,
            Self::Cluster(_) => 7,
        }
    }

    /// The registry's primary SIGKILLed; returns how long the promotion of its replica took.
    /// `losing`: the replica is cut off for that long first, so the writes the primary takes
    /// meanwhile (refused for want of a replica, but applied and seen by watchers) are lost.
    async fn fail_over(&mut self, losing: Option<Duration>) -> Duration {
        match (self, losing) {
            (Self::Sentinel(sentinel), None) => sentinel.fail_over().await,
            (Self::Sentinel(sentinel), Some(lag)) => sentinel.fail_over_losing_writes(lag).await,
            (Self::Cluster(cluster), None) => cluster.fail_over(REGISTRY_SLOT_KEY).await,
            (Self::Cluster(cluster), Some(lag)) => {
                cluster.fail_over_losing_writes(REGISTRY_SLOT_KEY, lag).await
            }
        }
    }

    /// The replica the registry's writes wait for, frozen for a while.
    async fn freeze_replica(&self, length: Duration) {
        let replica = match self {
            Self::Sentinel(sentinel) => sentinel.current_replica(),
            Self::Cluster(cluster) => {
                &cluster.servers
                    [cluster.owner(REGISTRY_SLOT_KEY).1.expect("the registry's master has a replica")]
            }
        };
        replica.signal("STOP");
        tokio::time::sleep(length).await;
        replica.signal("CONT");
    }

    /// Each server's role and what it replicates, as the run ends (shown with a failure).
    fn describe(&self) -> String {
        let servers: Vec<&RedisServer> = match self {
            Self::Sentinel(sentinel) => vec![&sentinel.master, &sentinel.replica],
            Self::Cluster(cluster) => cluster.servers.iter().collect(),
        };
        let mut lines = vec!["the store at the end:".to_owned()];
        for server in servers {
            let role = server.cli(&["role"]).replace('\n', " ");
            let info = server.cli(&["info", "replication"]);
            let link = info.lines().find(|l| l.starts_with("master_link_status")).unwrap_or("");
            let replicas = info.lines().find(|l| l.starts_with("connected_slaves")).unwrap_or("");
            lines.push(format!("  {}: {role} {link} {replicas}", server.port()));
        }
        if let Self::Sentinel(sentinel) = self {
            for (port, log) in sentinel.sentinel_ports().into_iter().zip(sentinel.sentinel_logs(40)) {
                let named = muster_testkit::redis_server::cli(
                    port,
                    &["sentinel", "get-master-addr-by-name", "mymaster"],
                );
                lines.push(format!(
                    "  sentinel {port} names {}; its log ends:\n{log}",
                    named.replace('\n', ":")
                ));
            }
            for server in [&sentinel.master, &sentinel.replica] {
                lines.push(format!("  redis {} log ends:\n{}", server.port(), server.log_tail(30)));
            }
        }
        lines.join("\n")
    }

    /// In a Cluster, a master that holds none of the registry's keys fails over (a failover the
    /// registry must ride through untouched).
    async fn fail_over_elsewhere(&mut self) {
        if let Self::Cluster(cluster) = self {
            let (owner, _) = cluster.owner(REGISTRY_SLOT_KEY);
            // One key per master; the first whose slot another master holds.
            let other = (0..64)
                .map(|n| format!("elsewhere-{n}"))
                .find(|key| cluster.owner(key).0 != owner)
                .expect("a key on another master");
            cluster.fail_over(&other).await;
        }
    }
}

/// The same workload on a replicated Redis whose primary fails over — Sentinel (a master, a replica,
/// three Sentinels) or Cluster (three masters with a replica each), the servers with
/// `--redis-replica-acks 1`, the setting the promise needs: the registry's primary SIGKILLed under
/// load and its replica promoted; that replica frozen (SIGSTOP) for 1.5 s, so writes cannot be
/// acknowledged; the replica cut off for 0.7 s and then the primary killed, so the writes it took
/// meanwhile (refused, yet applied and seen by watchers under their revisions) are lost; a server
/// SIGKILLed; a server stopped gracefully; the clients' network to a server blackholed; on a
/// Cluster, also another master's failover. How long the servers took to take
/// writes again after each primary was killed is printed.
async fn run_replicated(seed: u64, length: Duration, mut store: Replicated) {
    let url = store.url();
    let acks = ["--redis-replica-acks", "1", "--redis-replica-ack-timeout", "500ms"];
    let mut servers: Vec<Server> =
        (0..SERVERS).map(|_| Server::start_with(free_port(), &url, &acks)).collect();
    let front = FaultProxy::start(format!("127.0.0.1:{}", servers[0].port).parse().unwrap()).await;
    let urls = vec![format!("http://{}", front.address()), servers[1].base()];
    let workload =
        Workload { seed, clients: 4, nodes_per_client: 5, watchers: 3, ttl: Duration::from_secs(2) };
    let mut harness = Harness::start(urls.clone(), workload);
    let config = RedisConfig {
        replica_acks: 1,
        replica_ack_timeout: Duration::from_millis(500),
        ..RedisConfig::from_url(&url).unwrap()
    };
    let _observers = observe(&mut harness, &urls[0], config).await;
    let started = tokio::time::Instant::now();
    let kinds = store.kinds();
    let mut injected = Vec::new();
    let mut promotions = Vec::new();
    let mut followed = Vec::new();
    for &(at, kind) in &plan(seed, kinds) {
        if started.elapsed() >= length {
            break;
        }
        at_op(&harness, at).await;
        let round = injected.len();
        let fault = harness.fault();
        match kind {
            0 => {
                let probe = tokio::spawn(took_writes_again(servers.iter().map(Server::base).collect()));
                promotions.push(store.fail_over(None).await);
                followed.push(probe.await.unwrap());
                injected.push("primary SIGKILL, replica promoted, old primary back as replica");
            }
            4 => {
                store.freeze_replica(Duration::from_millis(1_500)).await;
                injected.push("replica frozen 1.5 s (writes not acknowledged meanwhile)");
            }
            5 => {
                store.fail_over(Some(Duration::from_millis(700))).await;
                injected.push("replica cut off 0.7 s, then the primary SIGKILLed: its last writes lost");
            }
            6 => {
                store.fail_over_elsewhere().await;
                injected.push("another master SIGKILLed and its replica promoted");
            }
            1 => {
                injected.push(kill_and_restart(&mut servers[(round / kinds) % SERVERS]).await);
            }
            2 => {
                front.spell(Fault::Blackhole, Duration::from_millis(2_500)).await;
                injected.push("clients-server blackhole, healed");
            }
            _ => {
                injected.push(stop_and_restart(&mut servers[(round / kinds + 1) % SERVERS]).await);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(fault);
        harness.converge(CONVERGENCE).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "seed {seed}: promotions took {promotions:?}; the servers took writes again after {followed:?}"
    );
    judge(seed, harness, &injected, kinds, &store.describe()).await;
    drop(servers);
}

/// From just after a primary is killed, a write tried through every server every 20 ms until each
/// takes one: how long each took.
async fn took_writes_again(bases: Vec<String>) -> Vec<Duration> {
    let killed = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut took = Vec::new();
    for (n, base) in bases.iter().enumerate() {
        let client = crate::http();
        let body =
            serde_json::json!({"address": "10.9.9.9:1", "services": [{"name": "probe"}], "ttlMs": 2000});
        let deadline = killed + Duration::from_secs(60);
        loop {
            let sent = client.put(format!("{base}/v1/nodes/probe-{n}")).json(&body).send().await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                took.push(killed.elapsed());
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{base} never took a write after the failover");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    took
}
