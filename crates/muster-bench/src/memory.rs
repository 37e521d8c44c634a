//! `muster-bench memory`: resident memory per node of an in-process server (or of the embedded
//! store alone) after N registrations.

use super::*;

/// The address, id and service of fleet node `n` (one service each over 100 names).
pub(crate) fn fleet_node(n: usize) -> (String, String, String, String) {
    (
        format!("node-{n:06}"),
        format!("10.{}.{}.{}:8080", n / 65536 % 256, n / 256 % 256, n % 256),
        format!("svc-{}", n % 100),
        format!("1.{}.0", n % 3),
    )
}

/// Resident memory per node of the embedded store alone (default options, event history included).
pub(crate) async fn store_memory(nodes: usize) -> Result<(), Box<dyn std::error::Error>> {
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
pub(crate) async fn register_range(
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
pub(crate) async fn memory(nodes: usize) -> Result<(), Box<dyn std::error::Error>> {
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
