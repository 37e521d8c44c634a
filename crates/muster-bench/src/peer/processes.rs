//! `muster-bench peer --listen`, `--connect` and `--separate`: the client and the server in
//! separate processes, as Netron runs them, with CPU per operation on each side.

use super::*;

/// The service `--listen` serves: `add`, `chunks(n)` (a stream of n 64 KiB chunks) and `tick(n)`
/// (n `tick` events emitted to subscribers, each acknowledged, before it answers).
fn bench_service(peer: &Peer) -> Result<Arc<muster_peer::Service>, Box<dyn std::error::Error>> {
    const CHUNK: usize = 64 * 1024;
    let emitter = peer.clone();
    Ok(ServiceBuilder::new("calculator", "1.0.0")?
        .method("add", &["Number", "Number"], "Number", |(a, b): (f64, f64)| async move { Ok(a + b) })
        .value_stream_method("chunks", &["Number"], "AsyncGenerator", |n: u64| {
            futures::stream::iter((0..n).map(|_| Ok::<Value, JsError>(Value::Bin(vec![7u8; CHUNK]))))
        })
        .method("tick", &["Number"], "Number", move |n: u64| {
            let emitter = emitter.clone();
            async move {
                for _ in 0..n {
                    emitter.bus().emit_parallel("tick", vec![Value::Int(1)]).await;
                }
                Ok(n)
            }
        })
        .build())
}

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

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0}/s, p50 {:.2?}, p99 {:.2?}, CPU per op: client {:.2?}",
            self.rate, self.p50, self.p99, self.cpu.0
        )?;
        match self.cpu.1 {
            Some(server) => write!(f, ", server {server:.2?}"),
            None => Ok(()),
        }
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
        let subscriber = Peer::new(PeerConfig::default()).connect(url).await?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        subscriber
            .subscribe(
                "tick",
                muster_peer::listener(move |_| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async { Ok(Value::Undefined) }
                }),
            )
            .await?;
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
            "| remote events (`emit`, each acknowledged), 64 emitters | {:.0} events/s, CPU per event: client {:.2?}{} |",
            result.rate,
            result.cpu.0,
            result.cpu.1.map(|s| format!(", server {s:.2?}")).unwrap_or_default()
        );
    }
    if functions.iter().any(|m| m == "chunks") {
        let chunks = 16_384u64;
        let result = measured(server_pid, async {
            let start = Instant::now();
            let mut bytes = 0u64;
            if let Ok(mut stream) = one.call_stream("chunks", vec![Value::Int(16_384)]).await {
                while let Some(Ok(chunk)) = stream.next().await {
                    if let Value::Bin(data) = chunk {
                        bytes += data.len() as u64;
                    }
                }
            }
            (bytes as f64 / start.elapsed().as_secs_f64(), Duration::ZERO, Duration::ZERO, bytes / 65_536)
        })
        .await;
        println!(
            "| stream of {chunks} chunks of 64 KiB | {:.0} MB/s, CPU per chunk: client {:.2?}{} |",
            result.rate / 1e6,
            result.cpu.0,
            result.cpu.1.map(|s| format!(", server {s:.2?}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// `muster-bench peer --separate`: `--listen` in a process of its own, driven by `--connect`
/// from this one, with the server's CPU read from its pid.
pub(crate) async fn separate(seconds: u64, connections: usize) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["peer", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
        Ok(Ok(Some(line))) => line.strip_prefix("listening ").ok_or("unexpected output")?.to_owned(),
        other => return Err(format!("the server process did not start: {other:?}").into()),
    };
    println!("# Netron peers in two processes on loopback ({seconds} s per run; server {url})\n");
    connect(&url, seconds, connections, child.id()).await?;
    child.start_kill()?;
    let _ = child.wait().await;
    Ok(())
}
