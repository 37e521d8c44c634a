//! The load driver: measures the Redis backend against a `redis-server` it starts itself on a free
//! loopback port, and prints a Markdown report.
//!
//! `cargo run --release -p muster-bench -- redis [--seconds N]`
//! `cargo run --release -p muster-bench -- fanout [--watchers N] [--rounds R] [--queries Q] [--redis]` — N
//! server-sent-event watchers and Q blocking queries on a `muster serve` process (build it first with
//! `cargo build --release -p muster`), on the embedded store or a fresh `redis-server`; for each of R
//! registrations, the time until every watcher has seen it; the server's memory per idle watcher and
//! its Redis connections.
//! `cargo run --release -p muster-bench -- memory [--nodes N] [--store-only]` — resident memory per
//! node of an in-process server on the embedded store after N registrations over HTTP (or of the
//! embedded store alone, with registrations straight into it).
//! `cargo run --release -p muster-bench -- resolver [--lookups N]` — the SDK's resolver: cached
//! lookups per second on one core, and the time from a registration to the cache reflecting it.
//! `cargo run --release -p muster-bench -- titan [--nodes N] [--changes C] [--interval-ms M] [--keyspace]`
//! — a mixed fleet: N nodes written by Titan peers, heartbeating every 5 s; the Redis CPU time the
//! detection costs per second, and the time from a Titan-side change (pub/sub off) to the Muster
//! event; `--keyspace` enables keyspace notifications on the server.
//! `cargo run --release -p muster-bench -- peer [--seconds N]` — Netron peers on loopback: RPC calls
//! per second (64 in flight, on 1 and on 8 connections) with p50/p99, remote events per second,
//! stream throughput in 64 KiB chunks; calls by name and the failover time after SIGKILL of an instance
//! process (`peer-instance`, started by `peer` itself).
//! `cargo run --release -p muster-bench -- soak [--nodes N] [--seconds S] [--redis] [--svg FILE]` — N
//! nodes heartbeating every second on a `muster serve` process for S seconds with watchers and
//! resolvers: memory, heartbeat latency, false expiries every 10 s, and an SVG plot.

#![allow(clippy::print_stdout)]

mod peer;
mod soak;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use muster_agent::Agent;
use muster_bench::{node_registration, populate};
use muster_core::{Address, DiscoveryOptions, EventKind, Registry, ServiceQuery, WatchEvent, WatchStart};
use muster_redis::{RedisConfig, RedisRegistry};
use muster_testkit::redis_server::RedisServer;
use muster_testkit::titan::REGISTER_HEARTBEAT_LUA as TITAN_HEARTBEAT_SCRIPT;
use tokio::time::Instant;

/// Concurrent requests in the throughput runs.
const CONCURRENCY: usize = 50;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok())
    };
    if args.first().map(String::as_str) == Some("fanout") {
        let watchers = flag("--watchers").unwrap_or(1000u64);
        let rounds = flag("--rounds").unwrap_or(20u64);
        let queries = flag("--queries").unwrap_or(100u64);
        let (watchers, rounds, queries) = (
            usize::try_from(watchers).unwrap_or(1000),
            usize::try_from(rounds).unwrap_or(20),
            usize::try_from(queries).unwrap_or(100),
        );
        let on_redis = args.iter().any(|a| a == "--redis");
        if let Err(error) = fanout(watchers, rounds, on_redis, queries).await {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("soak") {
        let nodes = usize::try_from(flag("--nodes").unwrap_or(10_000u64)).unwrap_or(10_000);
        let seconds = flag("--seconds").unwrap_or(600u64);
        let svg = args.iter().position(|a| a == "--svg").and_then(|i| args.get(i + 1)).cloned();
        if let Err(error) = soak::run(nodes, seconds, args.iter().any(|a| a == "--redis"), svg).await {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("peer-instance") {
        let registry = args.iter().skip_while(|a| *a != "--registry").nth(1).cloned().unwrap_or_default();
        if let Err(error) = peer::serve_instance(&registry).await {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("peer") {
        let seconds = flag("--seconds").unwrap_or(5u64);
        if let Err(error) = peer::run(seconds).await {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("memory") {
        let nodes = usize::try_from(flag("--nodes").unwrap_or(100_000u64)).unwrap_or(100_000);
        let outcome = if args.iter().any(|a| a == "--store-only") {
            store_memory(nodes).await
        } else {
            memory(nodes).await
        };
        if let Err(error) = outcome {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("resolver") {
        let lookups = flag("--lookups").unwrap_or(5_000_000u64);
        if let Err(error) = resolver(lookups).await {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("titan") {
        let nodes = usize::try_from(flag("--nodes").unwrap_or(10_000u64)).unwrap_or(10_000);
        let changes = usize::try_from(flag("--changes").unwrap_or(100u64)).unwrap_or(100);
        let interval = Duration::from_millis(flag("--interval-ms").unwrap_or(500u64));
        let keyspace = args.iter().any(|a| a == "--keyspace");
        if let Err(error) = titan(nodes, changes, interval, keyspace).await {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) != Some("redis") {
        eprintln!(
            "usage: muster-bench redis [--seconds N] | titan [--nodes N] [--changes C] [--interval-ms M] [--keyspace] | fanout [--watchers N] [--rounds R] [--queries Q] [--redis] | memory [--nodes N] [--store-only] | resolver [--lookups N]"
        );
        std::process::exit(2);
    }
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5u64);
    let duration = Duration::from_secs(seconds);
    if let Err(error) = run(duration).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn run(duration: Duration) -> muster_core::Result<()> {
    println!("# Redis backend benchmark\n");
    println!(
        "{} s per throughput run, {CONCURRENCY} concurrent requests, redis-server on loopback.\n",
        duration.as_secs()
    );
    println!("| measurement | result |\n|---|---|");

    // Heartbeats: the redis-benchmark ceiling, then Muster, on one fresh server.
    let server = RedisServer::start().await;
    let ceiling = titan_evalsha_ceiling(&server, duration);
    let registry = connect(&server, false).await?;
    let (rate, latency) = heartbeat_rate(&registry, 10_000, duration).await?;
    println!("| redis-benchmark EVALSHA of the Titan heartbeat script (ceiling) | {ceiling:.0} calls/s |");
    println!(
        "| Muster heartbeat, 10,000 nodes, unchanged | {rate:.0} calls/s ({:.0}% of the ceiling); p50 {}, p99 {} |",
        100.0 * rate / ceiling,
        fmt(latency.p50),
        fmt(latency.p99)
    );
    drop(registry);
    drop(server);

    // The cost of `replica_acks`: the same heartbeats on a primary with one replica, without and
    // with each write waiting for the replica (`WAIT 1`).
    let primary = RedisServer::start().await;
    let replica = RedisServer::replica_of(&primary).await;
    for acks in [0u32, 1] {
        let config = RedisConfig {
            sweeper: false,
            prefix: format!("acks{acks}"),
            replica_acks: acks,
            ..RedisConfig::from_url(&primary.url())?
        };
        let registry = RedisRegistry::connect(config).await?;
        let (rate, latency) = heartbeat_rate(&registry, 10_000, duration).await?;
        println!(
            "| Muster heartbeat, 10,000 nodes, primary + 1 replica, replica acks {acks} | {rate:.0} calls/s; p50 {}, p99 {} |",
            fmt(latency.p50),
            fmt(latency.p99)
        );
    }
    drop(replica);
    drop(primary);

    // Uncached reads with 1,000 and 10,000 nodes.
    for total in [1_000usize, 10_000] {
        let server = RedisServer::start().await;
        let registry = connect(&server, false).await?;
        populate(&registry, total, 10).await?;
        let list = {
            let registry = registry.clone();
            throughput(2, duration, move || {
                let registry = registry.clone();
                async move { registry.list_active().await.map(drop) }
            })
            .await?
        };
        println!(
            "| list active nodes, {total} registered (2 concurrent) | {:.0} calls/s; p50 {}, p99 {} |",
            list.0,
            fmt(list.1.p50),
            fmt(list.1.p99)
        );
        let query = ServiceQuery::parse("target-service@^1").expect("query");
        let find = {
            let registry = registry.clone();
            throughput(CONCURRENCY, duration, move || {
                let (registry, query) = (registry.clone(), query.clone());
                async move { registry.find(&query).await.map(drop) }
            })
            .await?
        };
        println!(
            "| find 10 instances among {total} nodes | {:.0} calls/s; p50 {}, p99 {} |",
            find.0,
            fmt(find.1.p50),
            fmt(find.1.p99)
        );
    }

    // Find cost with no other nodes vs 10,000 other nodes.
    let server = RedisServer::start().await;
    let registry = connect(&server, false).await?;
    populate(&registry, 10, 10).await?;
    let query = ServiceQuery::parse("target-service@^1").expect("query");
    let alone = sequential_latency(1000, || registry.find(&query)).await?;
    for i in 10..10_010 {
        registry.heartbeat(node_registration(i, &format!("filler-{}", i % 100))?).await?;
    }
    let crowded = sequential_latency(1000, || registry.find(&query)).await?;
    println!(
        "| find 10 instances: alone vs with 10,000 other nodes (sequential) | p50 {} vs {} ({:.2}×) |",
        fmt(alone.p50),
        fmt(crowded.p50),
        crowded.p50.as_secs_f64() / alone.p50.as_secs_f64()
    );

    // Cached lookup through an agent on Redis.
    let agent = Agent::builder(registry.clone())
        .options(DiscoveryOptions { client_mode: true, ..DiscoveryOptions::default() })
        .address(Address::parse("127.0.0.1:1")?)
        .build()?;
    agent.start().await?;
    while agent.cache().find(&query).map(|n| n.len()).unwrap_or(0) != 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lookups = 1_000_000u32;
    let started = Instant::now();
    for _ in 0..lookups {
        std::hint::black_box(agent.cache().find(&query)?);
    }
    println!(
        "| cached lookup (10 instances among 10,010 nodes) | {:.0} ns per lookup |",
        started.elapsed().as_nanos() as f64 / f64::from(lookups)
    );
    agent.stop().await?;
    drop(registry);
    drop(server);

    // Event propagation and failure detection, with a watcher on its own registry (connection).
    let server = RedisServer::start().await;
    let writer = connect(&server, false).await?;
    let watcher = connect(&server, true).await?;
    let propagation = propagation(&writer, &watcher, 1_000).await?;
    println!(
        "| event propagation, register → remote watcher (1,000 events) | p50 {}, p99 {}, max {} |",
        fmt(propagation.p50),
        fmt(propagation.p99),
        fmt(propagation.max)
    );
    let detection = failure_detection(&writer, &watcher, 10).await?;
    println!(
        "| expiry event after the last heartbeat, TTL 1 s (10 nodes) | p50 {}, max {} (TTL + {} at worst) |",
        fmt(detection.p50),
        fmt(detection.max),
        fmt(detection.max.saturating_sub(Duration::from_secs(1)))
    );
    Ok(())
}

async fn connect(server: &RedisServer, sweeper: bool) -> muster_core::Result<RedisRegistry> {
    let config = RedisConfig { sweeper, ..RedisConfig::from_url(&server.url())? };
    RedisRegistry::connect(config).await
}

/// Runs redis-benchmark with an EVALSHA of the Titan script and returns its requests/s.
fn titan_evalsha_ceiling(server: &RedisServer, duration: Duration) -> f64 {
    let sha = server.cli(&["script", "load", TITAN_HEARTBEAT_SCRIPT]);
    let requests = (duration.as_secs().max(1) * 60_000).to_string();
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-c",
            &CONCURRENCY.to_string(),
            "-n",
            &requests,
            "-q",
        ])
        .args(["evalsha", &sha, "3", "t:nodes:n1", "t:heartbeat:n1", "t:index:nodes", "n1", "localhost:3000"])
        .args([r#"[{"name":"users","version":"1.0.0"}]"#, "1700000000000", "15", "15000"])
        .output()
        .expect("run redis-benchmark (install redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    // "evalsha ...: 81234.56 requests per second, p50=0.311 msec"
    text.rsplit(':')
        .find_map(|part| part.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()))
        .or_else(|| text.split_whitespace().find_map(|w| w.parse::<f64>().ok()))
        .unwrap_or(f64::NAN)
}

/// Sustained heartbeats of `nodes` already-registered nodes at `CONCURRENCY` requests in flight.
async fn heartbeat_rate(
    registry: &RedisRegistry,
    nodes: usize,
    duration: Duration,
) -> muster_core::Result<(f64, Percentiles)> {
    let registrations: Arc<Vec<_>> =
        Arc::new((0..nodes).map(|i| node_registration(i, "svc")).collect::<Result<_, _>>()?);
    for registration in registrations.iter() {
        registry.heartbeat(registration.clone()).await?;
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let registry = registry.clone();
    throughput(CONCURRENCY, duration, move || {
        let (registry, registrations, next) =
            (registry.clone(), Arc::clone(&registrations), Arc::clone(&next));
        async move {
            let i = next.fetch_add(1, Ordering::Relaxed) % registrations.len();
            registry.heartbeat(registrations[i].clone()).await.map(drop)
        }
    })
    .await
}

/// Latency percentiles.
struct Percentiles {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// Redis's own CPU time (user + system) so far, from `INFO cpu`.
fn redis_cpu(server: &RedisServer) -> Duration {
    let info = server.cli(&["info", "cpu"]);
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Duration::from_secs_f64(field("used_cpu_user") + field("used_cpu_sys"))
}

/// Time Redis spent in `EVALSHA` calls (Muster's scripts), from `INFO commandstats`.
fn muster_script_time(server: &RedisServer) -> Duration {
    let stats = server.cli(&["info", "commandstats"]);
    let micros = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        .and_then(|fields| fields.split(',').find_map(|f| f.strip_prefix("usec=")))
        .and_then(|usec| usec.parse().ok())
        .unwrap_or(0);
    Duration::from_micros(micros)
}

/// A mixed fleet: `nodes` Titan-written nodes (written with Titan's own heartbeat script, TTL 10
/// minutes so none expires; all but the last `changes` heartbeat every 5 s, unchanged), one Muster
/// process reconciling every `interval`. The last `changes` nodes are the ones changed.
async fn titan(nodes: usize, changes: usize, interval: Duration, keyspace: bool) -> muster_core::Result<()> {
    const WINDOW: Duration = Duration::from_secs(10);
    let server = if keyspace {
        RedisServer::start_with(&["--notify-keyspace-events", "Kgh"]).await
    } else {
        RedisServer::start().await
    };
    let client =
        redis::Client::open(server.url()).map_err(|e| muster_core::Error::unavailable(e.to_string()))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| muster_core::Error::unavailable(e.to_string()))?;
    let services =
        |version: usize| format!(r#"[{{"name":"svc-{}","version":"1.0.{version}"}}]"#, version % 50);
    // Titan sends its script with EVAL (seed 001), so Redis's `cmdstat_evalsha` counts Muster's
    // scripts alone.
    let heartbeat = move |mut conn: redis::aio::MultiplexedConnection, ids: std::ops::Range<usize>| async move {
        let mut pipe = redis::pipe();
        for i in ids {
            let id = format!("titan-{i}");
            pipe.cmd("EVAL")
                .arg(TITAN_HEARTBEAT_SCRIPT)
                .arg(3)
                .arg(format!("titan:discovery:nodes:{id}"))
                .arg(format!("titan:discovery:heartbeat:{id}"))
                .arg("titan:discovery:index:nodes")
                .arg(&id)
                .arg(format!("10.0.{}.{}:8080", i / 250, i % 250))
                .arg(services(i))
                .arg(muster_core::time::now_ms())
                .arg(600)
                .arg(600_000);
        }
        pipe.query_async::<()>(&mut conn).await.map_err(|e| muster_core::Error::unavailable(e.to_string()))
    };
    for start in (0..nodes).step_by(1000) {
        heartbeat(conn.clone(), start..(start + 1000).min(nodes)).await?;
    }
    // Titan's heartbeats: every node but the changed ones, every 5 s, in ten slices.
    let steady = nodes.saturating_sub(changes);
    let load = {
        let (conn, heartbeat) = (conn.clone(), heartbeat);
        tokio::spawn(async move {
            let slice = steady.div_ceil(10).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            for round in 0usize.. {
                tick.tick().await;
                let start = (round % 10) * slice;
                if start < steady {
                    let _ = heartbeat(conn.clone(), start..(start + slice).min(steady)).await;
                }
            }
        })
    };
    let idle_start = redis_cpu(&server);
    tokio::time::sleep(WINDOW).await;
    let idle = redis_cpu(&server).saturating_sub(idle_start);

    let config = RedisConfig { reconcile_interval: interval, ..RedisConfig::from_url(&server.url())? };
    let registry = RedisRegistry::connect(config).await?;
    let reconcile_interval = registry.config().reconcile_interval;
    let mut watch = registry.watch(WatchStart::Now).await?;
    let mut adopted = 0;
    while adopted < nodes {
        match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
            Ok(Some(Ok(WatchEvent::Event(e)))) if e.kind == EventKind::Registered => adopted += 1,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e),
            _ => return Err(muster_core::Error::unavailable("adoption did not finish")),
        }
    }
    let busy_start = redis_cpu(&server);
    let scripts_start = muster_script_time(&server);
    tokio::time::sleep(WINDOW).await;
    let busy = redis_cpu(&server).saturating_sub(busy_start);
    let scripts = muster_script_time(&server).saturating_sub(scripts_start);

    // Titan-side changes (`HSET` of the services, as Titan's `updateNodeServices`; pub/sub off).
    let mut latencies = Vec::with_capacity(changes);
    for round in 0..changes {
        let id = format!("titan-{}", steady + round % changes.max(1));
        let at = Instant::now();
        let _: () = redis::cmd("HSET")
            .arg(format!("titan:discovery:nodes:{id}"))
            .arg("services")
            .arg(services(nodes + round))
            .query_async(&mut conn)
            .await
            .map_err(|e| muster_core::Error::unavailable(e.to_string()))?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
                Ok(Some(Ok(WatchEvent::Event(e))))
                    if e.kind == EventKind::Updated && e.node.node_id.as_str() == id =>
                {
                    latencies.push(at.elapsed());
                    break;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(e),
                _ => return Err(muster_core::Error::unavailable("a change was not detected")),
            }
        }
        // Spread the changes over the reconciliation phase.
        let phase = u64::try_from(interval.as_millis()).unwrap_or(500);
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..phase))).await;
    }
    load.abort();
    let detection = percentiles(latencies);
    let share = |cpu: Duration| 100.0 * cpu.as_secs_f64() / WINDOW.as_secs_f64();
    println!(
        "# Mixed fleet: {nodes} Titan-written nodes heartbeating every 5 s; reconciliation every {} ms; keyspace notifications {}\n",
        reconcile_interval.as_millis(),
        if keyspace { "on" } else { "off" }
    );
    println!("| measurement | result |\n|---|---|");
    println!("| Redis CPU, Titan nodes heartbeating (no Muster process) | {:.2}% of one core |", share(idle));
    println!(
        "| Redis CPU with one Muster process reconciling | {:.2}% of one core (detection: {:.2}%) |",
        share(busy),
        share(busy.saturating_sub(idle))
    );
    println!("| of which Muster's scripts (`cmdstat_evalsha`) | {:.2}% of one core |", share(scripts));
    println!(
        "| Titan-side change (HSET, pub/sub off) → Muster event, {changes} changes | p50 {}, p99 {}, max {} |",
        fmt(detection.p50),
        fmt(detection.p99),
        fmt(detection.max)
    );
    Ok(())
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| {
        samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
    };
    Percentiles { p50: at(0.50), p99: at(0.99), max: samples.last().copied().unwrap_or_default() }
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }
}

/// Runs `op` from `workers` tasks for `duration`; returns calls/s and latency percentiles.
async fn throughput<F, Fut>(
    workers: usize,
    duration: Duration,
    op: F,
) -> muster_core::Result<(f64, Percentiles)>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = muster_core::Result<()>> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (op, stop) = (Arc::clone(&op), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let begun = Instant::now();
                op().await?;
                samples.push(begun.elapsed());
            }
            Ok::<_, muster_core::Error>(samples)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("worker")?);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, percentiles(all)))
}

async fn sequential_latency<T, Fut>(calls: usize, op: impl Fn() -> Fut) -> muster_core::Result<Percentiles>
where
    Fut: std::future::Future<Output = muster_core::Result<T>>,
{
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let begun = Instant::now();
        op().await?;
        samples.push(begun.elapsed());
    }
    Ok(percentiles(samples))
}

/// Registers `count` nodes one by one, timing each from the call to its arrival at the watcher.
async fn propagation(
    writer: &RedisRegistry,
    watcher: &RedisRegistry,
    count: usize,
) -> muster_core::Result<Percentiles> {
    let mut watch = watcher.watch(WatchStart::Now).await?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let registration = node_registration(100_000 + i, "propagation")?;
        let begun = Instant::now();
        writer.heartbeat(registration).await?;
        loop {
            match watch.next().await {
                Some(Ok(WatchEvent::Event(e))) if e.kind == EventKind::Registered => break,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Err(muster_core::Error::unavailable("watch ended")),
            }
        }
        samples.push(begun.elapsed());
    }
    Ok(percentiles(samples))
}

/// Nodes with a 1 s TTL heartbeat three times and stop; measures from each last heartbeat to its
/// expiry event at the watcher (whose registry runs the sweeper).
async fn failure_detection(
    writer: &RedisRegistry,
    watcher: &RedisRegistry,
    nodes: usize,
) -> muster_core::Result<Percentiles> {
    let mut watch = watcher.watch(WatchStart::Now).await?;
    let mut last_heartbeat = std::collections::HashMap::new();
    for i in 0..nodes {
        let base = node_registration(200_000 + i, "doomed")?;
        let registration = muster_core::Registration::new(
            base.node_id().clone(),
            base.address().clone(),
            base.services().to_vec(),
            Duration::from_secs(1),
        )?;
        for _ in 0..3 {
            writer.heartbeat(registration.clone()).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last_heartbeat.insert(registration.node_id().clone(), Instant::now());
        writer.heartbeat(registration).await?;
    }
    let mut samples = Vec::new();
    while samples.len() < nodes {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(Ok(WatchEvent::Event(e)))) if e.kind == EventKind::Deregistered => {
                if let Some(at) = last_heartbeat.get(&e.node.node_id) {
                    samples.push(at.elapsed());
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e),
            _ => return Err(muster_core::Error::unavailable("expiry events did not arrive")),
        }
    }
    Ok(percentiles(samples))
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Kills the server process when the benchmark ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the release `muster serve` (built next to this binary) on a free port: on the embedded
/// store, or on a fresh `redis-server` when `redis` is given.
fn spawn_server(redis: Option<&RedisServer>) -> Result<(Child, String), Box<dyn std::error::Error>> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?.with_file_name("muster");
    if !exe.exists() {
        return Err(
            format!("{} is missing: run `cargo build --release -p muster` first", exe.display()).into()
        );
    }
    let mut command = Command::new(exe);
    // Above the default connection cap (10,000): the fan-out runs 10,000 watchers and blocking
    // queries besides.
    command.args(["serve", "--listen", "127.0.0.1:0", "--max-connections", "100000"]);
    if let Some(redis) = redis {
        command.args(["--redis", &redis.url()]);
    }
    let mut child =
        Child(command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn()?);
    let mut first = String::new();
    std::io::BufReader::new(child.0.stdout.take().ok_or("no stdout")?).read_line(&mut first)?;
    let base =
        first.split_whitespace().find(|w| w.starts_with("http://")).ok_or("no address printed")?.to_owned();
    Ok((child, base))
}

/// Opens `watchers` SSE streams (and `queries` blocking queries) on a `muster serve` process,
/// registers one node per round, and measures how long until each stream has delivered the event;
/// reports the server's memory per idle watcher and, on Redis, the server's Redis connections.
async fn fanout(
    watchers: usize,
    rounds: usize,
    on_redis: bool,
    queries: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let redis = if on_redis { Some(RedisServer::start().await) } else { None };
    let (server, base) = spawn_server(redis.as_ref())?;
    let pid = server.0.id();
    let connections = || redis.as_ref().map(|r| r.cli(&["client", "list"]).lines().count().saturating_sub(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid).unwrap_or(0);
    let redis_before = connections();
    muster_client::install_tls_provider();
    let client = reqwest::Client::builder().pool_max_idle_per_host(watchers).build()?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<(usize, Instant)>(watchers * 2);
    for _ in 0..watchers {
        let response = client.get(format!("{base}/v1/watch?snapshot=true")).send().await?;
        let (ready_tx, seen_tx) = (ready_tx.clone(), seen_tx.clone());
        tokio::spawn(async move {
            let mut stream = response.bytes_stream();
            let mut text = String::new();
            let mut ready = false;
            let mut round = 0;
            while let Some(Ok(chunk)) = stream.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if !ready && text.contains("event: resync") {
                    ready = true;
                    text.clear();
                    let _ = ready_tx.send(()).await;
                }
                while let Some(at) = text.find("event: registered") {
                    text.drain(..at + 1);
                    let _ = seen_tx.send((round, Instant::now())).await;
                    round += 1;
                }
            }
        });
    }
    for _ in 0..watchers {
        ready_rx.recv().await.ok_or("a watcher failed to connect")?;
    }
    let index: u64 = client.get(format!("{base}/v1/nodes")).send().await?.json::<serde_json::Value>().await?
        ["revision"]
        .as_u64()
        .unwrap_or(0);
    let mut waiting = Vec::new();
    for _ in 0..queries {
        let url = format!("{base}/v1/services/none/instances?index={index}&wait=5m");
        let client = client.clone();
        waiting.push(tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(pid).unwrap_or(0);
    let redis_after = connections();
    let (mut lasts, mut medians, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let begun = Instant::now();
        let response = client
            .put(format!("{base}/v1/nodes/fanout-{round}"))
            .json(&serde_json::json!({"address": "10.0.0.1:80", "services": [{"name": "fanout"}]}))
            .send()
            .await?;
        assert!(response.status().is_success());
        let mut samples = Vec::with_capacity(watchers);
        while samples.len() < watchers {
            let (seen_round, at) = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
                .await?
                .ok_or("a watcher ended")?;
            if seen_round == round {
                samples.push(at.saturating_duration_since(begun));
            }
        }
        all.extend_from_slice(&samples);
        let p = percentiles(samples);
        medians.push(p.p50);
        lasts.push(p.max);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = lasts.first().copied().unwrap_or_default();
    let lasts = percentiles(lasts);
    let medians = percentiles(medians);
    let all = percentiles(all);
    println!(
        "| {watchers} SSE watchers, {rounds} registrations: notification latency over every watcher and registration | p50 {}, p99 {}, max {} |",
        fmt(all.p50),
        fmt(all.p99),
        fmt(all.max)
    );
    println!(
        "| {watchers} SSE watchers, {rounds} registrations: time until every watcher has the event | first registration {}; median watcher p50 {}; last watcher p50 {}, p99 {}, worst {} |",
        fmt(first),
        fmt(medians.p50),
        fmt(lasts.p50),
        fmt(lasts.p99),
        fmt(lasts.max)
    );
    let per_watcher = (rss_after.saturating_sub(rss_before) * 1024) / (watchers + queries).max(1) as u64;
    println!(
        "| server resident memory: before the watchers, with {watchers} watchers and {queries} blocking queries | {rss_before} KiB → {rss_after} KiB (≈ {per_watcher} B per idle watcher) |"
    );
    if let (Some(before), Some(after)) = (redis_before, redis_after) {
        println!(
            "| the server's Redis connections (`CLIENT LIST`): before the watchers, with them | {before} → {after} |"
        );
    }
    for query in waiting {
        query.abort();
    }
    drop(server);
    Ok(())
}

/// The SDK's resolver against an in-process server with 100 instances over 10 services.
async fn resolver(lookups: u64) -> Result<(), Box<dyn std::error::Error>> {
    use muster_core::VersionQuery;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let registry: Arc<dyn Registry> = Arc::new(muster_memory::MemoryRegistry::new());
    let state = muster_server::AppState::new(registry, muster_server::ServerConfig::default());
    tokio::spawn(muster_server::run(listener, state, std::future::pending()));
    muster_client::install_tls_provider();
    let http = reqwest::Client::new();
    for n in 0..100 {
        let body = serde_json::json!({
            "address": format!("10.0.{}.{}:8080", n / 10, n % 10),
            "services": [{"name": format!("svc-{}", n % 10), "version": format!("1.{}.0", n / 10)}],
            "ttlMs": 600_000,
        });
        let response = http.put(format!("{base}/v1/nodes/node-{n}")).json(&body).send().await?;
        assert!(response.status().is_success());
    }
    let client = muster_client::Client::new(&base)?;
    assert_eq!(client.instances("svc-0", &VersionQuery::Any).await?.instances.len(), 10);

    // Lookups on one core: a current-thread runtime on its own thread.
    let names: Vec<String> = (0..10).map(|n| format!("svc-{n}")).collect();
    let semver = VersionQuery::semver("^1.5")?;
    let (any_rate, semver_rate) = {
        let client = client.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut rates = Vec::new();
                for query in [VersionQuery::Any, semver] {
                    let calls = if query == VersionQuery::Any { lookups } else { lookups / 10 };
                    let begun = Instant::now();
                    let mut found = 0usize;
                    for n in 0..calls {
                        let name = &names[usize::try_from(n % 10).unwrap_or(0)];
                        found += client.instances(name, &query).await?.instances.len();
                    }
                    assert!(found > 0);
                    rates.push(calls as f64 / begun.elapsed().as_secs_f64());
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((rates[0], rates[1]))
            })
        })
        .join()
        .map_err(|_| "the lookup thread panicked")?
        .map_err(|e| e.to_string())?
    };

    // Registration → cache: register over HTTP, wait for the cache to show the node.
    let mut changes = client.cache_changes().await?;
    let mut samples = Vec::new();
    for n in 0..1000 {
        let id = format!("prop-{n}");
        let body =
            serde_json::json!({"address": "10.9.0.1:80", "services": [{"name": "prop"}], "ttlMs": 600_000});
        let begun = Instant::now();
        let response = http.put(format!("{base}/v1/nodes/{id}")).json(&body).send().await?;
        assert!(response.status().is_success());
        loop {
            if client.instances("prop", &VersionQuery::Any).await?.instances.iter().any(|i| i.id == id) {
                break;
            }
            tokio::time::timeout(Duration::from_secs(10), changes.changed()).await??;
        }
        samples.push(begun.elapsed());
    }
    let p = percentiles(samples);
    println!(
        "| Resolver lookup from the cache, any version (one core) | {:.2} M lookups/s |",
        any_rate / 1e6
    );
    println!(
        "| Resolver lookup from the cache, semver `^1.5` (one core) | {:.2} M lookups/s |",
        semver_rate / 1e6
    );
    println!(
        "| Registration (HTTP PUT) until the resolver cache has it, 1,000 sequential | p50 {}, p99 {}, max {} |",
        fmt(p.p50),
        fmt(p.p99),
        fmt(p.max)
    );
    Ok(())
}

/// Resident set size of this process in KiB.
fn own_rss_kib() -> Result<u64, Box<dyn std::error::Error>> {
    Ok(rss_kib(std::process::id()).ok_or("no VmRSS in /proc/self/status")?)
}

/// The address, id and service of fleet node `n` (one service each over 100 names).
fn fleet_node(n: usize) -> (String, String, String, String) {
    (
        format!("node-{n:06}"),
        format!("10.{}.{}.{}:8080", n / 65536 % 256, n / 256 % 256, n % 256),
        format!("svc-{}", n % 100),
        format!("1.{}.0", n % 3),
    )
}

/// Resident memory per node of the embedded store alone (default options, event history included).
async fn store_memory(nodes: usize) -> Result<(), Box<dyn std::error::Error>> {
    use muster_core::{NodeId, Registration, ServiceInfo};
    let registry = muster_memory::MemoryRegistry::new();
    let before = own_rss_kib()?;
    for n in 0..nodes {
        let (id, address, service, version) = fleet_node(n);
        let registration = Registration::new(
            NodeId::new(id)?,
            Address::parse(address)?,
            vec![ServiceInfo::new(service, Some(&version))?],
            Duration::from_secs(3600),
        )?;
        registry.heartbeat(registration).await?;
    }
    let after = own_rss_kib()?;
    let per_node = (after.saturating_sub(before) * 1024) as f64 / nodes as f64;
    println!(
        "| Resident memory of the embedded store alone, {nodes} nodes, event history included | {before} KiB → {after} KiB: {per_node:.0} B per node |"
    );
    Ok(())
}

/// Registers nodes `start..end` (ids `node-NNNNNN`, one service each over 100 names) over HTTP,
/// 32 requests in flight.
async fn register_range(
    http: &reqwest::Client,
    base: &str,
    start: usize,
    end: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(start));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (http, base, next) = (http.clone(), base.to_owned(), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return Ok::<_, reqwest::Error>(());
                }
                let body = serde_json::json!({
                    "address": format!("10.{}.{}.{}:8080", n / 65536 % 256, n / 256 % 256, n % 256),
                    "services": [{"name": format!("svc-{}", n % 100), "version": format!("1.{}.0", n % 3)}],
                    "ttlMs": 3_600_000,
                });
                http.put(format!("{base}/v1/nodes/node-{n:06}"))
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// Resident memory per node: an in-process server on the embedded store, `nodes` registrations
/// over HTTP (one service each over 100 service names, like a fleet), RSS before and after.
async fn memory(nodes: usize) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let registry: Arc<dyn Registry> = Arc::new(muster_memory::MemoryRegistry::new());
    let config = muster_server::ServerConfig { max_instances_per_service: usize::MAX, ..Default::default() };
    let state = muster_server::AppState::new(registry, config);
    tokio::spawn(muster_server::run(listener, state, std::future::pending()));
    muster_client::install_tls_provider();
    let http = reqwest::Client::new();
    http.get(format!("{base}/health")).send().await?;
    let before = own_rss_kib()?;
    // Registration throughput is timed twice: 20,000 registrations into a store of 1,000 nodes,
    // and the last 20,000 (into a store of nearly `nodes`).
    let window = 20_000.min(nodes / 4);
    register_range(&http, &base, 0, 1_000.min(nodes)).await?;
    let started = Instant::now();
    register_range(&http, &base, 1_000.min(nodes), (1_000 + window).min(nodes)).await?;
    let small = window as f64 / started.elapsed().as_secs_f64();
    register_range(&http, &base, (1_000 + window).min(nodes), nodes - window).await?;
    let started = Instant::now();
    register_range(&http, &base, nodes - window, nodes).await?;
    let large = window as f64 / started.elapsed().as_secs_f64();
    if nodes >= 100_000 {
        println!(
            "| Registrations over HTTP (32 in flight): into 1,000 nodes vs into {nodes} | {small:.0} /s vs {large:.0} /s ({:.2}×) |",
            large / small
        );
    }
    let after = own_rss_kib()?;
    let per_node = (after.saturating_sub(before) * 1024) as f64 / nodes as f64;
    println!(
        "| Resident memory, {nodes} nodes (ids `node-NNNNNN`, one service each), event history included | {before} KiB → {after} KiB: {per_node:.0} B per node |"
    );
    Ok(())
}
