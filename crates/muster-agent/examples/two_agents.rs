//! Two service agents and one client on the embedded store: registration, discovery by exact and
//! semver version, live events, a graceful stop and a crash detected by TTL expiry.
//!
//! Run with `cargo run -p muster-agent --example two_agents`.

#![allow(clippy::print_stdout)]

use std::time::Duration;

use muster_agent::Agent;
use muster_core::{Address, DiscoveryOptions, NodeId, ServiceInfo, ServiceQuery};
use muster_memory::MemoryRegistry;

#[tokio::main]
async fn main() -> muster_core::Result<()> {
    let registry = MemoryRegistry::new();
    // Short timings so the demo finishes in seconds (the defaults are 5 s / 15 s).
    let options = DiscoveryOptions {
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_ttl: Duration::from_millis(1500),
        ..DiscoveryOptions::default()
    };

    let client = Agent::builder(registry.clone())
        .options(DiscoveryOptions { client_mode: true, ..options.clone() })
        .address(Address::parse("127.0.0.1:9000")?)
        .build()?;
    let _subscription = client.on_event(|event| {
        let what = event.kind.as_str();
        let reason = event.reason.map(|r| format!(" ({r})")).unwrap_or_default();
        let services: Vec<String> = event.node.services.iter().map(ToString::to_string).collect();
        println!(
            "event #{:<3} {:<12} {:<8} {} [{}]{reason}",
            event.revision,
            what,
            event.node.node_id,
            event.node.address,
            services.join(", ")
        );
    });
    client.start().await?;

    let users = Agent::builder(registry.clone())
        .options(options.clone())
        .node_id(NodeId::new("users-1")?)
        .address(Address::parse("127.0.0.1:7001")?)
        .service(ServiceInfo::parse("users@1.2.0")?)
        .build()?;
    let orders = Agent::builder(registry.clone())
        .options(options.clone())
        .node_id(NodeId::new("orders-1")?)
        .address(Address::parse("127.0.0.1:7002")?)
        .service(ServiceInfo::parse("orders@2.0.0")?)
        .service(ServiceInfo::parse("users@2.0.0")?)
        .build()?;
    users.start().await?;
    orders.start().await?;
    tokio::time::sleep(Duration::from_millis(50)).await;

    for query in ["users", "users@1.2.0", "users@^2", "users@>=1, <3", "billing"] {
        let nodes = client.resolve(&ServiceQuery::parse(query)?).await?;
        let found: Vec<String> = nodes.iter().map(|n| format!("{} at {}", n.node_id, n.address)).collect();
        println!(
            "find {query:<14} -> {}",
            if found.is_empty() { "nothing".to_owned() } else { found.join("; ") }
        );
    }

    orders.update_address(Address::parse("127.0.0.1:7102")?).await?;
    println!("orders-1 stops gracefully");
    orders.stop().await?;
    println!("users-1 crashes (no deregistration); its TTL is 1500 ms");
    drop(users);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    println!("active nodes now: {}", client.get_active_nodes().await?.len());
    client.stop().await
}
