//! `muster-bench peer`: a Netron peer pair on loopback in this process — RPC calls per second with
//! 64 calls in flight on one connection and on 8 connections (8 each), with p50/p99; remote event
//! emissions per second (each acknowledged by the subscriber); stream throughput in 64 KiB chunks;
//! calls by name through discovery over 3 instances against direct calls; and the failover time of
//! calls by name when an instance process is SIGKILLed (instances registered through `muster serve`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use muster_peer::wire::{JsError, Value};
use muster_peer::{Interface, Peer, PeerConfig, ServiceBuilder};
use tokio::time::Instant;

mod processes;

pub(crate) use processes::{connect, listen, separate};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `in_flight` callers each running `call` back to back for `seconds`: calls per second, p50, p99.
async fn load<F, Fut>(in_flight: usize, seconds: u64, call: F) -> (f64, Duration, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..in_flight {
        let call = Arc::clone(&call);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let began = Instant::now();
                if call(caller).await {
                    latencies.push(began.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    (all.len() as f64 / elapsed, percentile(&all, 0.5), percentile(&all, 0.99))
}

/// `add(5, 3)` on `interfaces`, the callers spread over them.
async fn calls(interfaces: Vec<Interface>, in_flight: usize, seconds: u64) -> (f64, Duration, Duration) {
    load(in_flight, seconds, move |caller| {
        let interface = interfaces[caller % interfaces.len()].clone();
        async move { interface.call("add", vec![Value::Int(5), Value::Int(3)]).await.is_ok() }
    })
    .await
}

/// The bench service (what `run` and `--listen` serve): `add`, `chunks(n)` (a stream of n 64 KiB chunks) and `tick(n)`
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

/// A peer connected to `url` that counts the `tick` events it receives (each acknowledged).
async fn counting_subscriber(
    url: &str,
) -> Result<(muster_peer::RemotePeer, Arc<AtomicU64>), Box<dyn std::error::Error>> {
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
    Ok((subscriber, received))
}

/// Reads the stream of `chunks(n)` to its end; returns the bytes received.
async fn read_stream(interface: &Interface, chunks: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let mut stream = interface.call_stream("chunks", vec![Value::Int(i64::try_from(chunks)?)]).await?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        if let Value::Bin(data) = chunk? {
            bytes += data.len() as u64;
        }
    }
    Ok(bytes)
}

/// This binary with `args`; with `workers`, its runtime has that many worker threads.
fn bench_command(args: &[&str], workers: Option<usize>) -> std::io::Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.args(args).kill_on_drop(true);
    if let Some(workers) = workers {
        // Read by `#[tokio::main]`'s runtime builder.
        command.env("TOKIO_WORKER_THREADS", workers.to_string());
    }
    Ok(command)
}

/// Starts this binary with `args` and waits (10 s at most) for its first line of output.
async fn bench_process(
    args: &[&str],
    workers: Option<usize>,
) -> Result<(tokio::process::Child, String), Box<dyn std::error::Error>> {
    use tokio::io::AsyncBufReadExt;
    let mut child = bench_command(args, workers)?.stdout(std::process::Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
        Ok(Ok(Some(line))) => Ok((child, line)),
        other => Err(format!("`{}` did not start: {other:?}", args.join(" ")).into()),
    }
}

pub(crate) async fn run(seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let server = Peer::new(PeerConfig { max_concurrent_requests: 4096, ..PeerConfig::default() });
    server.expose_service(bench_service(&server)?)?;
    let address = server.listen("127.0.0.1:0").await?;
    let url = format!("ws://{address}");
    println!("# Netron peers on loopback (client and server in one process, {seconds} s per run)\n");
    println!("| scenario | result |");
    println!("|---|---|");

    let one = Peer::new(PeerConfig::default()).connect(&url).await?.query_interface("calculator")?;
    let (rate, p50, p99) = calls(vec![one.clone()], 64, seconds).await;
    println!(
        "| RPC `add(5, 3)`, 64 in flight, 1 connection | {rate:.0} calls/s, p50 {p50:.2?}, p99 {p99:.2?} |"
    );

    let mut many = Vec::new();
    for _ in 0..8 {
        many.push(Peer::new(PeerConfig::default()).connect(&url).await?.query_interface("calculator")?);
    }
    let (rate, p50, p99) = calls(many, 64, seconds).await;
    println!(
        "| RPC `add(5, 3)`, 64 in flight over 8 connections | {rate:.0} calls/s, p50 {p50:.2?}, p99 {p99:.2?} |"
    );

    // Events: the client subscribes; the server emits from 64 tasks, each emission acknowledged.
    let (_subscriber, received) = counting_subscriber(&url).await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut emitters = Vec::new();
    for _ in 0..64 {
        let server = server.clone();
        emitters.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                server.bus().emit_parallel("tick", vec![Value::Int(1)]).await;
            }
        }));
    }
    for emitter in emitters {
        let _ = emitter.await;
    }
    let rate = received.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("| remote events (`emit` tasks, each acknowledged), 64 emitters | {rate:.0} events/s |");

    // Streams: 64 KiB chunks, read as fast as they come.
    let chunks = 16_384u64; // 1 GiB
    let start = Instant::now();
    let bytes = read_stream(&one, chunks).await?;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "| stream of {chunks} chunks of 64 KiB ({:.0} MiB) | {:.0} MB/s |",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / elapsed / 1e6
    );
    server.stop().await;
    by_name(seconds).await
}

fn calculator() -> Result<Arc<muster_peer::Service>, Box<dyn std::error::Error>> {
    Ok(ServiceBuilder::new("calculator", "1.0.0")?
        .method("add", &["Number", "Number"], "Number", |(a, b): (f64, f64)| async move { Ok(a + b) })
        .build())
}

/// A serving peer in the fleet of `registry`.
async fn instance(
    registry: Arc<dyn muster_core::Registry>,
    options: muster_core::DiscoveryOptions,
) -> Result<Peer, Box<dyn std::error::Error>> {
    let peer = Peer::new(PeerConfig { max_concurrent_requests: 4096, ..PeerConfig::default() });
    peer.expose_service(calculator()?)?;
    let address = peer.listen("127.0.0.1:0").await?;
    peer.enable_discovery(registry, options, Some(muster_core::Address::parse(address.to_string())?)).await?;
    Ok(peer)
}

/// `add(5, 3)` by name.
async fn named_calls(
    service: muster_peer::NamedService,
    in_flight: usize,
    seconds: u64,
) -> (f64, Duration, Duration) {
    load(in_flight, seconds, move |_| {
        let service = service.clone();
        async move { service.call("add", vec![Value::Int(5), Value::Int(3)]).await.is_ok() }
    })
    .await
}

/// Calls by name over three instances found through discovery (the embedded store), against
/// direct calls on one connection; then an instance dies abruptly under a stream of calls.
async fn by_name(seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let registry: Arc<dyn muster_core::Registry> = Arc::new(muster_memory::MemoryRegistry::new());
    let options = muster_core::DiscoveryOptions {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_ttl: Duration::from_secs(3),
        retry_delay: Duration::from_millis(200),
        ..muster_core::DiscoveryOptions::default()
    };
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(Arc::clone(&registry), options.clone()).await?);
    }
    let client = Peer::new(PeerConfig::default());
    client.enable_discovery(Arc::clone(&registry), options.clone(), None).await?;
    let named = client.service("calculator@^1")?;
    while named.instances().await?.len() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rate, p50, p99) = named_calls(named.clone(), 64, seconds).await;
    println!(
        "| calls by name through discovery, 3 instances, 64 in flight | {rate:.0} calls/s, p50 {p50:.2?}, p99 {p99:.2?} |"
    );
    // Direct calls on one connection, and on one connection to each of the same three instances:
    // a connection carries more calls per socket write than three do, so the second is the cost
    // of naming alone.
    let direct_peer = Peer::new(PeerConfig::default());
    let mut direct = Vec::new();
    for instance in named.instances().await? {
        direct.push(
            direct_peer
                .connect(&format!("ws://{}", instance.address))
                .await?
                .query_interface("calculator")?,
        );
    }
    let (rate, p50, p99) = calls(direct[..1].to_vec(), 64, seconds).await;
    println!(
        "| the same calls direct, one connection, 64 in flight | {rate:.0} calls/s, p50 {p50:.2?}, p99 {p99:.2?} |"
    );
    let (rate, p50, p99) = calls(direct, 64, seconds).await;
    println!(
        "| the same calls direct, a connection to each of the 3 instances, 64 in flight | {rate:.0} calls/s, p50 {p50:.2?}, p99 {p99:.2?} |"
    );
    direct_peer.stop().await;

    for peer in instances {
        peer.stop().await;
    }
    client.stop().await;
    failover_after_sigkill().await
}

/// `muster-bench peer-instance --registry URL`: a serving peer registered in a registry server
/// (1 s heartbeats, 3 s TTL) that prints `serving` and runs until killed.
pub(crate) async fn serve_instance(registry_url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = muster_client::Client::new(registry_url)?;
    let registry = Arc::new(muster_client::RemoteRegistry::new(client));
    let _peer = instance(registry, failover_options()).await?;
    println!("serving");
    std::future::pending::<()>().await;
    Ok(())
}

fn failover_options() -> muster_core::DiscoveryOptions {
    muster_core::DiscoveryOptions {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_ttl: Duration::from_secs(3),
        retry_delay: Duration::from_millis(200),
        ..muster_core::DiscoveryOptions::default()
    }
}

/// Starts `muster-bench peer-instance` (this binary) and waits until it serves.
async fn instance_process(registry_url: &str) -> Result<tokio::process::Child, Box<dyn std::error::Error>> {
    match bench_process(&["peer-instance", "--registry", registry_url], None).await? {
        (child, line) if line == "serving" => Ok(child),
        (_, line) => Err(format!("the instance process printed {line:?}").into()),
    }
}

/// Failover after SIGKILL: three instance processes registered in a registry server (this
/// process, embedded store) and a caller calling by name without pause; each round one instance
/// is SIGKILLed and replaced. The failover time of a round: the slowest call in the second after
/// the kill (calls that met the dead connection were retried on another instance inside it).
async fn failover_after_sigkill() -> Result<(), Box<dyn std::error::Error>> {
    const ROUNDS: usize = 10;
    let store = muster_memory::MemoryRegistry::new();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let state = muster_server::AppState::new(Arc::new(store), muster_server::ServerConfig::default());
    let server = tokio::spawn(muster_server::run(listener, state, std::future::pending()));
    let registry = Arc::new(muster_client::RemoteRegistry::new(muster_client::Client::new(&url)?));
    let client = Peer::new(PeerConfig::default());
    client.enable_discovery(registry, failover_options(), None).await?;
    let named = client.service("calculator@^1")?;
    let mut processes = Vec::new();
    for _ in 0..3 {
        processes.push(instance_process(&url).await?);
    }
    let (mut failovers, mut latencies, mut failed, mut calls) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for round in 0..ROUNDS {
        while named.instances().await?.len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..300 {
            named.call("add", vec![Value::Int(1), Value::Int(1)]).await?;
        }
        let mut victim = processes.remove(round % processes.len());
        victim.start_kill()?;
        let killed = Instant::now();
        let mut slowest = Duration::ZERO;
        while killed.elapsed() < Duration::from_secs(1) {
            let began = Instant::now();
            calls += 1;
            match named.call("add", vec![Value::Int(1), Value::Int(1)]).await {
                Ok(_) => {
                    let took = began.elapsed();
                    slowest = slowest.max(took);
                    latencies.push(took);
                }
                Err(_) => failed += 1,
            }
        }
        failovers.push(slowest);
        let _ = victim.wait().await;
        processes.push(instance_process(&url).await?);
        // The killed instance leaves by TTL; its replacement is registered: wait for both.
        while named.instances().await?.len() != 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    failovers.sort_unstable();
    latencies.sort_unstable();
    println!(
        "| failover after SIGKILL of an instance process, {ROUNDS} rounds (heartbeat 1 s, TTL 3 s, through `muster serve`) | failover time p50 {:.2?}, p99 {:.2?}, max {:.2?}; {calls} calls in the seconds after the kills, {failed} failed, call p99 {:.2?} |",
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99),
        failovers.last().copied().unwrap_or_default(),
        percentile(&latencies, 0.99),
    );
    for mut process in processes {
        let _ = process.start_kill();
    }
    client.stop().await;
    server.abort();
    Ok(())
}
