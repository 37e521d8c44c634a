//! `muster-bench titan`: a mixed fleet of Titan-written nodes: the Redis CPU time detection costs
//! and the time from a Titan-side change to the Muster event.

use super::*;

/// A mixed fleet: `nodes` Titan-written nodes (written with Titan's own heartbeat script, TTL 10
/// minutes so none expires; all but the last `changes` heartbeat every 5 s, unchanged), one Muster
/// process reconciling every `interval`. The last `changes` nodes are the ones changed.
pub(crate) async fn titan(
    nodes: usize,
    changes: usize,
    interval: Duration,
    keyspace: bool,
) -> muster_core::Result<()> {
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
