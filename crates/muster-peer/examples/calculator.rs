//! A Netron peer exposing `calculator@1.0.0`, or a peer calling one.
//!
//! ```sh
//! cargo run -p muster-peer --example calculator                        # listens on 127.0.0.1:8080
//! cargo run -p muster-peer --example calculator -- ws://127.0.0.1:8080 # calls add(5, 3), counts to 3
//! ```

#![allow(clippy::print_stdout)] // an example talks to the person running it

use futures::StreamExt;
use muster_peer::wire::JsError;
use muster_peer::{Peer, PeerConfig, ServiceBuilder};

struct Calculator;

#[muster_peer::service(name = "calculator", version = "1.0.0")]
impl Calculator {
    pub(crate) async fn add(&self, a: f64, b: f64) -> f64 {
        a + b
    }

    pub(crate) fn divide(&self, a: f64, b: f64) -> Result<f64, JsError> {
        if b == 0.0 { Err(JsError::new("division by zero")) } else { Ok(a / b) }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let peer = Peer::new(PeerConfig::default());
    if let Some(url) = std::env::args().nth(1) {
        let remote = peer.connect(&url).await?;
        let calculator = Calculator::client(remote.query_interface("calculator@^1")?);
        println!("add(5, 3) = {}", calculator.add(5.0, 3.0).await?);
        match calculator.divide(1.0, 0.0).await {
            Ok(value) => println!("divide(1, 0) = {value}"),
            Err(error) => println!("divide(1, 0) failed: {error}"),
        }
        let counter = remote.query_interface("counter")?;
        let mut numbers = counter.call_stream("count", vec![muster_peer::wire::Value::Int(3)]).await?;
        while let Some(number) = numbers.next().await {
            println!("count: {:?}", number?);
        }
        peer.stop().await;
        return Ok(());
    }
    peer.expose_service(Calculator.into_service())?;
    let counter = ServiceBuilder::new("counter", "1.0.0")?
        .stream_method("count", &["Number"], "AsyncGenerator", |n: u32| {
            futures::stream::iter((1..=n).map(Ok::<u32, JsError>))
        })
        .build();
    peer.expose_service(counter)?;
    let address = peer.listen("127.0.0.1:8080").await?;
    println!("peer {} serving {:?} on ws://{address} — Ctrl-C stops it", peer.id(), peer.service_names());
    tokio::signal::ctrl_c().await?;
    peer.stop().await;
    Ok(())
}
