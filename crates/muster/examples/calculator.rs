//! A Netron peer exposing `calculator@1.0.0` — `add`, `multiply`, a read-only `version` property,
//! `count` streaming numbers, and a `calculator:result` event after every `add` — or a peer calling
//! one.
//!
//! ```sh
//! cargo run --release -p muster --example calculator -- --listen 127.0.0.1:8080
//! cargo run --release -p muster --example calculator -- --connect ws://127.0.0.1:8080
//! ```
//!
//! With `--redis redis://127.0.0.1:6379` the serving peer also registers in that fleet (Netron's
//! keys), so `muster call --redis ... calculator@^1 add 5 3` finds it; with
//! `--registry http://127.0.0.1:3100` it registers in a `muster serve` instead (found with
//! `muster call --registry ...`). `--heartbeat-ms N` heartbeats every N ms with a TTL of three
//! heartbeats (default: Netron's 5 s and 15 s).

#![allow(clippy::print_stdout)] // an example talks to the person running it

use futures::StreamExt;
use muster_peer::wire::{JsError, Value};
use muster_peer::{Peer, PeerConfig};

struct Calculator {
    /// Where `add` announces its results.
    peer: Peer,
}

#[muster_peer::service(name = "calculator", version = "1.0.0")]
impl Calculator {
    pub(crate) async fn add(&self, a: f64, b: f64) -> f64 {
        let sum = a + b;
        let event = Value::object([("op", Value::str("add")), ("result", Value::Float(sum))]);
        self.peer.bus().emit_parallel("calculator:result", vec![event]).await;
        sum
    }

    pub(crate) fn multiply(&self, a: f64, b: f64) -> f64 {
        a * b
    }

    pub(crate) fn divide(&self, a: f64, b: f64) -> Result<f64, JsError> {
        if b == 0.0 { Err(JsError::new("division by zero")) } else { Ok(a / b) }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value_of = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let peer = Peer::new(PeerConfig::default());
    if let Some(url) = value_of("--connect") {
        let remote = peer.connect(&url).await?;
        let (tx, mut results) = tokio::sync::mpsc::unbounded_channel();
        let listener = muster_peer::listener(move |args| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(args);
                Ok(Value::Undefined)
            }
        });
        remote.subscribe("calculator:result", listener).await?;
        let interface = remote.query_interface("calculator@^1")?;
        println!("version = {:?}", interface.get("version").await?);
        let calculator = Calculator::client(interface.clone());
        println!("add(5, 3) = {}", calculator.add(5.0, 3.0).await?);
        println!("event calculator:result {:?}", results.recv().await);
        println!("multiply(6, 7) = {}", calculator.multiply(6.0, 7.0).await?);
        match calculator.divide(1.0, 0.0).await {
            Ok(value) => println!("divide(1, 0) = {value}"),
            Err(error) => println!("divide(1, 0) failed: {error}"),
        }
        let mut numbers = interface.call_stream("count", vec![Value::Int(3)]).await?;
        while let Some(number) = numbers.next().await {
            println!("count: {:?}", number?);
        }
        peer.stop().await;
        return Ok(());
    }
    let listen = value_of("--listen").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let service = Calculator { peer: peer.clone() }
        .into_builder()
        .property("version", "String", true, Value::str("1.0.0"))
        .stream_method("count", &["Number"], "AsyncGenerator", |n: u32| {
            futures::stream::iter((1..=n).map(Ok::<u32, JsError>))
        })
        .build();
    peer.expose_service(service)?;
    let address = peer.listen(&listen).await?;
    let mut options = muster_core::DiscoveryOptions::default();
    if let Some(ms) = value_of("--heartbeat-ms") {
        options.heartbeat_interval = std::time::Duration::from_millis(ms.parse()?);
        options.heartbeat_ttl = options.heartbeat_interval * 3;
        options.retry_delay = options.heartbeat_interval;
    }
    let advertised = muster_core::Address::parse(address.to_string())?;
    if let Some(redis) = value_of("--redis") {
        let config = muster_redis::RedisConfig::from_url(&redis)?.with_preset(muster_core::Preset::Netron);
        let registry = std::sync::Arc::new(muster_redis::RedisRegistry::connect(config).await?);
        peer.enable_discovery(registry, options, Some(advertised)).await?;
        println!("registered in the fleet at {redis} (prefix netron:discovery)");
    } else if let Some(url) = value_of("--registry") {
        let client = muster_client::Client::new(&url)?;
        let registry = std::sync::Arc::new(muster_client::RemoteRegistry::new(client));
        peer.enable_discovery(registry, options, Some(advertised)).await?;
        println!("registered in the registry at {url}");
    }
    println!("peer {} serving {:?} on ws://{address} — Ctrl-C stops it", peer.id(), peer.service_names());
    tokio::signal::ctrl_c().await?;
    peer.stop().await;
    Ok(())
}
