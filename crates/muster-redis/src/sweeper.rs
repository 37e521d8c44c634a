//! Observable expiry and reconciliation with Titan peers. Any number of processes may run a
//! sweeper; a short lease (`SET NX PX`, renewed on every pass) makes one of them do the work at a
//! time. The lease holder sleeps until the earliest deadline (at most `sweep_interval`), expires
//! what is due — the script re-checks each heartbeat key, so a node that heartbeated just in time is
//! kept — and every `reconcile_interval` compares what Titan peers wrote with what it saw last
//! (`RECONCILE` in `scripts.rs`), so their registrations, changes and departures become events
//! whatever their pub/sub setting. Keyspace notifications are not used (they are node-local in
//! Cluster and off by default); the pass's cost is measured in docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use muster_core::Result;
use tokio::time::Instant;

use crate::Inner;

/// Shortest pause between passes.
const MIN_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) async fn run(inner: Arc<Inner>) {
    use rand::Rng;
    let token = format!("{:016x}", rand::rng().random::<u64>());
    let mut last_reconcile: Option<Instant> = None;
    let mut failures: u32 = 0;
    loop {
        let pause = match pass(&inner, &token, &mut last_reconcile).await {
            Ok(pause) => {
                failures = 0;
                pause
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, "sweep failed; retrying");
                (inner.config.sweep_interval * 2u32.saturating_pow(failures.min(8))).min(MAX_BACKOFF)
            }
        };
        tokio::select! {
            () = inner.cancel.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    // Hand the lease over at once instead of letting it run out.
    let release = inner.invoke::<i64>(&inner.scripts.release, std::slice::from_ref(&token));
    let _ = tokio::time::timeout(inner.config.response_timeout, release).await;
}

/// One pass. Returns how long to pause before the next.
async fn pass(inner: &Inner, token: &str, last_reconcile: &mut Option<Instant>) -> Result<Duration> {
    let lease_ms = inner.config.sweeper_lease.as_millis().to_string();
    let held: i64 = inner.invoke(&inner.scripts.lease, &[token.to_owned(), lease_ms]).await?;
    if held != 1 {
        return Ok(inner.config.sweep_interval);
    }
    let (removed, next, now) = inner.sweep_due().await?;
    if removed > 0 {
        tracing::debug!(removed, "expired nodes");
    }
    let interval = inner.config.reconcile_interval;
    let until_reconcile = match *last_reconcile {
        Some(at) if at.elapsed() < interval => interval - at.elapsed(),
        _ => {
            *last_reconcile = Some(Instant::now());
            let done = inner.reconcile(None).await?;
            if done != crate::Reconciled::default() {
                tracing::debug!(?done, "reconciled with Titan peers");
            }
            interval
        }
    };
    let until_next =
        next.map_or(inner.config.sweep_interval, |next| Duration::from_millis(next.saturating_sub(now) + 1));
    Ok(until_next.min(until_reconcile).clamp(MIN_PAUSE, inner.config.sweep_interval))
}
