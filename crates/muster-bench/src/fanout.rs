//! `muster-bench fanout`: server-sent-event watchers and blocking queries on a `muster serve`
//! process; the time until every watcher has seen a registration, memory per idle watcher.

use super::*;

/// Opens `watchers` SSE streams (and `queries` blocking queries) on a `muster serve` process,
/// registers one node per round, and measures how long until each stream has delivered the event;
/// reports the server's memory per idle watcher and, on Redis, the server's Redis connections.
pub(crate) async fn fanout(
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
