//! `muster-bench soak [--nodes N] [--seconds S] [--redis] [--svg FILE]`: N nodes heartbeating
//! every second against a release `muster serve` process (embedded store, or a fresh Redis), with
//! 10 SSE watchers and resolvers (100 lookups/s) attached, for S seconds. Every 10 s: the
//! server's resident memory, the heartbeats' p50/p99 and count, failed heartbeats, and expiries
//! (every one is false: no node stops heartbeating). Prints a Markdown table and writes an SVG
//! plot of memory and heartbeat p99 over time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

/// One 10-second window.
struct Sample {
    at_s: u64,
    rss_mib: f64,
    p50_ms: f64,
    p99_ms: f64,
    heartbeats: usize,
    failed: u64,
    expiries: u64,
}

pub(crate) async fn run(
    nodes: usize,
    seconds: u64,
    on_redis: bool,
    svg: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let redis = if on_redis { Some(muster_testkit::redis_server::RedisServer::start().await) } else { None };
    let (server, base) = crate::spawn_server(redis.as_ref())?;
    let pid = server.0.id();
    muster_client::install_tls_provider();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    // Register everything first (TTL 15 s, heartbeat every second).
    let ids: Vec<String> = (0..nodes).map(|n| format!("soak-{n}")).collect();
    futures::stream::iter(ids.iter().enumerate())
        .for_each_concurrent(64, |(n, id)| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let body = serde_json::json!({
                    "address": format!("10.{}.{}.{}:8080", n / 65_536, (n / 256) % 256, n % 256),
                    "services": [{"name": format!("svc-{}", n % 100), "version": "1.0.0"}],
                    "ttlMs": 15_000,
                });
                let _ = http.put(format!("{base}/v1/nodes/{id}")).json(&body).send().await;
            }
        })
        .await;

    let expiries = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<Duration>::with_capacity(nodes * 10)));
    let stop = tokio_util::sync::CancellationToken::new();
    // Watchers: count expiries (all false: every node keeps heartbeating).
    for _ in 0..10 {
        let (http, base, expiries, stop) = (http.clone(), base.clone(), Arc::clone(&expiries), stop.clone());
        tokio::spawn(async move {
            let Ok(response) = http.get(format!("{base}/v1/watch")).send().await else { return };
            let mut body = response.bytes_stream();
            let mut pending = String::new();
            loop {
                let chunk = tokio::select! {
                    chunk = body.next() => chunk,
                    () = stop.cancelled() => return,
                };
                let Some(Ok(chunk)) = chunk else { return };
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find("\n\n") {
                    let block: String = pending.drain(..end + 2).collect();
                    if block.contains("event: deregistered") && block.contains("\"reason\":\"expired\"") {
                        expiries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    // Resolvers: 100 lookups per second.
    {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0usize;
            while !stop.is_cancelled() {
                tick.tick().await;
                n += 1;
                let _ = http.get(format!("{base}/v1/services/svc-{}/instances", n % 100)).send().await;
            }
        });
    }
    // Heartbeats: every node once a second, spread evenly over the second.
    let workers = 32;
    for worker in 0..workers {
        let mine: Vec<String> = ids.iter().skip(worker).step_by(workers).cloned().collect();
        let (http, base, failed, latencies, stop) =
            (http.clone(), base.clone(), Arc::clone(&failed), Arc::clone(&latencies), stop.clone());
        tokio::spawn(async move {
            if mine.is_empty() {
                return;
            }
            let pause = Duration::from_secs(1) / u32::try_from(mine.len()).unwrap_or(1);
            let mut tick = tokio::time::interval(pause);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            for id in mine.iter().cycle() {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let began = Instant::now();
                let ok = matches!(
                    http.put(format!("{base}/v1/nodes/{id}/heartbeat")).send().await,
                    Ok(r) if r.status().is_success()
                );
                if ok {
                    latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(began.elapsed());
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    println!("| t (s) | RSS (MiB) | heartbeats | p50 (ms) | p99 (ms) | failed | expiries |");
    println!("|---|---|---|---|---|---|---|");
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut window =
            std::mem::take(&mut *latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        window.sort_unstable();
        let at = |q: f64| {
            window
                .get(((window.len() as f64 * q) as usize).min(window.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let sample = Sample {
            at_s: started.elapsed().as_secs(),
            rss_mib: crate::rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            heartbeats: window.len(),
            failed: failed.swap(0, Ordering::Relaxed),
            expiries: expiries.swap(0, Ordering::Relaxed),
        };
        println!(
            "| {} | {:.1} | {} | {:.2} | {:.2} | {} | {} |",
            sample.at_s,
            sample.rss_mib,
            sample.heartbeats,
            sample.p50_ms,
            sample.p99_ms,
            sample.failed,
            sample.expiries
        );
        samples.push(sample);
    }
    stop.cancel();
    // Flatness after warm-up (the first minute): the spread of RSS relative to its mean.
    let settled: Vec<f64> = samples.iter().filter(|s| s.at_s > 60).map(|s| s.rss_mib).collect();
    if !settled.is_empty() {
        let mean = settled.iter().sum::<f64>() / settled.len() as f64;
        let (min, max) = settled.iter().fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        println!(
            "\nafter warm-up: RSS {min:.1}-{max:.1} MiB (spread {:.1} % of the mean {mean:.1}); false expiries {}; failed heartbeats {}",
            (max - min) / mean * 100.0,
            samples.iter().map(|s| s.expiries).sum::<u64>(),
            samples.iter().map(|s| s.failed).sum::<u64>()
        );
    }
    if let Some(path) = svg {
        let store = if on_redis { "Redis" } else { "embedded store" };
        std::fs::write(&path, plot(&samples, &format!("soak: {nodes} nodes, 1 heartbeat/s each, {store}")))?;
        println!("plot written to {path}");
    }
    drop(server);
    Ok(())
}

/// An SVG with two series over time: RSS (MiB, left scale) and heartbeat p99 (ms, right scale).
fn plot(samples: &[Sample], title: &str) -> String {
    let (width, height, left, right, top, bottom) = (800.0, 360.0, 60.0, 60.0, 40.0, 40.0);
    let t_max = samples.last().map_or(1.0, |s| s.at_s as f64).max(1.0);
    let rss_max = samples.iter().map(|s| s.rss_mib).fold(1.0, f64::max) * 1.2;
    let p99_max = samples.iter().map(|s| s.p99_ms).fold(1.0, f64::max) * 1.2;
    let x = |t: f64| left + (width - left - right) * t / t_max;
    let y = |v: f64, max: f64| top + (height - top - bottom) * (1.0 - v / max);
    let line = |values: &dyn Fn(&Sample) -> f64, max: f64| -> String {
        samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.at_s as f64), y(values(s), max)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\n",
        height - bottom,
        width - right,
        height - bottom
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let yy = top + (height - top - bottom) * (1.0 - f);
        svg += &format!(
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#1f5fbf\">{:.0}</text>\n\
             <text x=\"{}\" y=\"{:.1}\" fill=\"#c0392b\">{:.1}</text>\n",
            width - right,
            left - 6.0,
            yy + 4.0,
            rss_max * f,
            width - right + 6.0,
            yy + 4.0,
            p99_max * f
        );
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:.0} s</text>\n",
            x(t_max * f),
            height - bottom + 16.0,
            t_max * f
        );
    }
    svg += &format!(
        "<polyline fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2\" points=\"{}\"/>\n\
         <polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\" points=\"{}\"/>\n\
         <text x=\"{left}\" y=\"{}\" fill=\"#1f5fbf\">resident memory (MiB, left)</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#c0392b\">heartbeat p99 (ms, right)</text>\n</svg>\n",
        line(&|s: &Sample| s.rss_mib, rss_max),
        line(&|s: &Sample| s.p99_ms, p99_max),
        height - 6.0,
        width - right,
        height - 6.0
    );
    svg
}
