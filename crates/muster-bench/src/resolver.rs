//! `muster-bench resolver`: the SDK resolver's cached lookups per second and the time from a
//! registration to the cache reflecting it.

use super::*;

/// The SDK's resolver against an in-process server with 100 instances over 10 services.
pub(crate) async fn resolver(lookups: u64) -> Result<(), Box<dyn std::error::Error>> {
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
