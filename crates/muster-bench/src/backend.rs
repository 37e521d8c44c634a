//! `muster-bench redis`: the Redis backend's throughput, latencies, event propagation and failure
//! detection against a `redis-server` started on a free port, beside Titan's own script.

use super::*;

/// Concurrent requests in the throughput runs.
pub(crate) const CONCURRENCY: usize = 50;

pub(crate) async fn run(duration: Duration) -> muster_core::Result<()> {
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

pub(crate) async fn connect(server: &RedisServer, sweeper: bool) -> muster_core::Result<RedisRegistry> {
    let config = RedisConfig { sweeper, ..RedisConfig::from_url(&server.url())? };
    RedisRegistry::connect(config).await
}

/// Runs redis-benchmark with an EVALSHA of the Titan script and returns its requests/s.
pub(crate) fn titan_evalsha_ceiling(server: &RedisServer, duration: Duration) -> f64 {
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
pub(crate) async fn heartbeat_rate(
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

/// Runs `op` from `workers` tasks for `duration`; returns calls/s and latency percentiles.
pub(crate) async fn throughput<F, Fut>(
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

pub(crate) async fn sequential_latency<T, Fut>(
    calls: usize,
    op: impl Fn() -> Fut,
) -> muster_core::Result<Percentiles>
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
pub(crate) async fn propagation(
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
pub(crate) async fn failure_detection(
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
