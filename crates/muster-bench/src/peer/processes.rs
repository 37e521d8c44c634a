//! `muster-bench peer --listen`, `--connect` and `--separate`: the client and the server in
//! separate processes, as Netron runs them, with CPU per operation on each side.

use super::*;

/// CPU time a process has used so far (every thread's, from `/proc/PID/task/*/schedstat`).
fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// `muster-bench peer --listen ADDR`: serves the bench service until SIGINT/SIGTERM; prints
/// `listening ws://ADDR` once it accepts connections.
pub(crate) async fn listen(address: &str) -> Result<(), Box<dyn std::error::Error>> {
    let server = Peer::new(PeerConfig { max_concurrent_requests: 4096, ..PeerConfig::default() });
    server.expose_service(bench_service(&server)?)?;
    let bound = server.listen(address).await?;
    println!("listening ws://{bound}");
    muster_client::shutdown_signal().await;
    server.stop().await;
    Ok(())
}

/// What one scenario of `--connect` measured.
struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// CPU per operation on this side and, with its pid, the server's.
    cpu: (Duration, Option<Duration>),
}

impl Measured {
    /// `CPU per <operation>: client …[, server …]`.
    fn cpu_per(&self, operation: &str) -> String {
        let server = self.cpu.1.map(|s| format!(", server {s:.2?}")).unwrap_or_default();
        format!("CPU per {operation}: client {:.2?}{server}", self.cpu.0)
    }
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0}/s, p50 {:.2?}, p99 {:.2?}, {}", self.rate, self.p50, self.p99, self.cpu_per("op"))
    }
}

/// Runs `work` (which reports how many operations it did) and measures both processes' CPU.
async fn measured<Fut>(server_pid: Option<u32>, work: Fut) -> Measured
where
    Fut: std::future::Future<Output = (f64, Duration, Duration, u64)>,
{
    let own = std::process::id();
    let (client_before, server_before) = (cpu_time(own), server_pid.and_then(cpu_time));
    let (rate, p50, p99, operations) = work.await;
    let per = |before: Option<Duration>, after: Option<Duration>| {
        Some((after? - before?) / u32::try_from(operations.max(1)).unwrap_or(u32::MAX))
    };
    Measured {
        rate,
        p50,
        p99,
        cpu: (
            per(client_before, cpu_time(own)).unwrap_or_default(),
            per(server_before, server_pid.and_then(cpu_time)),
        ),
    }
}

/// `muster-bench peer --connect URL [--seconds N] [--connections C] [--server-pid PID]`: drives
/// any Netron server exposing `calculator` — `add(5, 3)` with 64 calls in flight on one
/// connection and over C connections; with `tick` and `chunks` (the bench service), remote events
/// and a stream. CPU per operation on this side and, given its pid, the server's.
pub(crate) async fn connect(
    url: &str,
    seconds: u64,
    connections: usize,
    server_pid: Option<u32>,
) -> Result<(), Box<dyn std::error::Error>> {
    let open =
        || async { Peer::new(PeerConfig::default()).connect(url).await?.query_interface("calculator") };
    let one = open().await?;
    println!("| scenario | result |");
    println!("|---|---|");
    let timed = |interfaces: Vec<Interface>| async move {
        let (rate, p50, p99) = calls(interfaces, 64, seconds).await;
        (rate, p50, p99, (rate * seconds as f64) as u64)
    };
    let result = measured(server_pid, timed(vec![one.clone()])).await;
    println!("| RPC `add(5, 3)`, 64 in flight, 1 connection | {result} |");
    let mut many = Vec::new();
    for _ in 0..connections {
        many.push(open().await?);
    }
    let result = measured(server_pid, timed(many)).await;
    println!("| RPC `add(5, 3)`, 64 in flight over {connections} connections | {result} |");

    let functions: Vec<String> = match one.definition().meta.get("methods") {
        Some(Value::Object(methods)) => methods.iter().map(|(name, _)| name.clone()).collect(),
        _ => Vec::new(),
    };
    if functions.iter().any(|m| m == "tick") {
        let (subscriber, received) = counting_subscriber(url).await?;
        let ticks = subscriber.query_interface("calculator")?;
        let result = measured(server_pid, async {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let start = Instant::now();
            let mut emitters = Vec::new();
            for _ in 0..64 {
                let ticks = ticks.clone();
                emitters.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let _ = ticks.call("tick", vec![Value::Int(100)]).await;
                    }
                }));
            }
            for emitter in emitters {
                let _ = emitter.await;
            }
            let events = received.load(Ordering::Relaxed);
            (events as f64 / start.elapsed().as_secs_f64(), Duration::ZERO, Duration::ZERO, events)
        })
        .await;
        println!(
            "| remote events (`emit`, each acknowledged), 64 emitters | {:.0} events/s, {} |",
            result.rate,
            result.cpu_per("event")
        );
    }
    if functions.iter().any(|m| m == "chunks") {
        let chunks = 16_384u64;
        let result = measured(server_pid, async {
            let start = Instant::now();
            let bytes = read_stream(&one, chunks).await.unwrap_or_else(|error| {
                eprintln!("the stream failed: {error}");
                0
            });
            (bytes as f64 / start.elapsed().as_secs_f64(), Duration::ZERO, Duration::ZERO, bytes / 65_536)
        })
        .await;
        println!(
            "| stream of {chunks} chunks of 64 KiB | {:.0} MB/s, {} |",
            result.rate / 1e6,
            result.cpu_per("chunk")
        );
    }
    Ok(())
}

/// `muster-bench peer --separate [--workers W]`: `--listen` and `--connect` in two child
/// processes (W runtime worker threads each, or tokio's default), the client reading the server's
/// CPU from its pid.
pub(crate) async fn separate(
    seconds: u64,
    connections: usize,
    workers: Option<usize>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (mut server, line) = bench_process(&["peer", "--listen", "127.0.0.1:0"], workers).await?;
    let url =
        line.strip_prefix("listening ").ok_or_else(|| format!("the server printed {line:?}"))?.to_owned();
    let threads = workers
        .map_or_else(|| "tokio's default worker threads".to_owned(), |w| format!("{w} worker thread(s)"));
    println!(
        "# Netron peers in two processes on loopback ({seconds} s per run, {threads} each; server {url})\n"
    );
    let pid = server.id().ok_or("the server exited")?.to_string();
    let (seconds, connections) = (seconds.to_string(), connections.to_string());
    let args = [
        "peer",
        "--connect",
        &url,
        "--seconds",
        &seconds,
        "--connections",
        &connections,
        "--server-pid",
        &pid,
    ];
    let status = bench_command(&args, workers)?.status().await?;
    server.start_kill()?;
    let _ = server.wait().await;
    if !status.success() {
        return Err(format!("the client ended with {status}").into());
    }
    Ok(())
}
