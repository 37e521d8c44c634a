//! `muster-bench peer`: a Netron peer pair on loopback in this process — RPC calls per second with
//! 64 calls in flight on one connection and on 8 connections (8 each), with p50/p99; remote event
//! emissions per second (each acknowledged by the subscriber); stream throughput in 64 KiB chunks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use muster_peer::wire::{JsError, Value};
use muster_peer::{Interface, Peer, PeerConfig, ServiceBuilder};
use tokio::time::Instant;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn calls(interfaces: Vec<Interface>, in_flight: usize, seconds: u64) -> (f64, Duration, Duration) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..in_flight {
        let interface = interfaces[i % interfaces.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let began = Instant::now();
                if interface.call("add", vec![Value::Int(5), Value::Int(3)]).await.is_ok() {
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

pub(crate) async fn run(seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    const CHUNK: usize = 64 * 1024;
    let server = Peer::new(PeerConfig { max_concurrent_requests: 4096, ..PeerConfig::default() });
    let calculator = ServiceBuilder::new("calculator", "1.0.0")?
        .method("add", &["Number", "Number"], "Number", |(a, b): (f64, f64)| async move { Ok(a + b) })
        .value_stream_method("chunks", &["Number"], "AsyncGenerator", |n: u64| {
            futures::stream::iter((0..n).map(|_| Ok::<Value, JsError>(Value::Bin(vec![7u8; CHUNK]))))
        })
        .build();
    server.expose_service(calculator)?;
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
    let subscriber = Peer::new(PeerConfig::default()).connect(&url).await?;
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
    let mut stream = one.call_stream("chunks", vec![Value::Int(i64::try_from(chunks)?)]).await?;
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        if let Value::Bin(data) = chunk? {
            bytes += data.len();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "| stream of {chunks} chunks of 64 KiB ({:.0} MiB) | {:.0} MB/s |",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / elapsed / 1e6
    );
    server.stop().await;
    Ok(())
}
