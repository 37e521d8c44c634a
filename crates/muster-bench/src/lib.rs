//! Benchmarks of Muster's stores and agent.
//!
//! `benches/embedded.rs` measures the embedded store and the agent's cache with criterion; the
//! figures and the commands that produced them are recorded in `docs/BENCHMARKS.md`. This library
//! holds the fixtures the benchmarks share.

use std::time::Duration;

use muster_core::{Address, NodeId, Registration, Registry, Result, ServiceInfo};

/// TTL of benchmark nodes: long enough that nothing expires during a run.
pub const BENCH_TTL: Duration = Duration::from_secs(3600);

/// The registration of benchmark node `i`, providing `service` (at version `1.<i % 10>.0`).
pub fn node_registration(i: usize, service: &str) -> Result<Registration> {
    let port = u16::try_from(1 + i % 60_000).unwrap_or(1);
    Registration::new(
        NodeId::new(format!("node-{i}"))?,
        Address::from_parts("10.0.0.1", port)?,
        vec![ServiceInfo::versioned(service, &format!("1.{}.0", i % 10))?],
        BENCH_TTL,
    )
}

/// Registers `total` nodes of which `target` provide `target-service` and the rest
/// `filler-<i % 100>`.
pub async fn populate(registry: &impl Registry, total: usize, target: usize) -> Result<()> {
    for i in 0..total {
        let service = if i < target { "target-service".to_owned() } else { format!("filler-{}", i % 100) };
        registry.heartbeat(node_registration(i, &service)?).await?;
    }
    Ok(())
}
