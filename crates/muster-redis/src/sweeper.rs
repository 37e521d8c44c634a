//! Observable expiry and reconciliation with Titan peers. Any number of processes may run a
//! sweeper; a short lease (`SET NX PX`, renewed on every pass) makes one of them do the work at a
//! time. The lease holder sleeps until the earliest deadline (at most `sweep_interval`), expires
//! what is due — the script re-checks each heartbeat key, so a node that heartbeated just in time is
//! kept — and every `reconcile_interval` compares what Titan peers wrote with what it saw last
//! (`RECONCILE` in `scripts.rs`), so their registrations, changes and departures become events
//! whatever their pub/sub setting. Change hints (`hints.rs`: keyspace notifications where the
//! server has them enabled, Titan's channel messages when pub/sub is on) make the holder reconcile
//! the named nodes at once, in batches; with keyspace notifications up, the full pass becomes a
//! safety net. Costs are measured in docs/BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_core::Result;
use tokio::time::Instant;

use crate::{Inner, hints};

/// How long hinted ids are collected into one reconciliation call.
const HINT_WINDOW: Duration = Duration::from_millis(20);
/// Most ids in one hinted reconciliation.
const HINT_BATCH: usize = 500;

/// Shortest pause between passes.
const MIN_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) async fn run(inner: Arc<Inner>) {
    use rand::Rng;
    let token = format!("{:016x}", rand::rng().random::<u64>());
    let mut hints = hints::spawn(&inner);
    let mut state = PassState { last_reconcile: None, holding: false };
    // From the sweep interval (validated at least 1 ms) up to 5 s or the interval, if longer.
    let interval = inner.config.sweep_interval;
    let mut backoff =
        muster_core::Backoff::try_new(interval, MAX_BACKOFF.max(interval), 0.2).unwrap_or_default();
    let mut keyspace_before = false;
    loop {
        let keyspace = hints.keyspace.load(Ordering::SeqCst);
        if keyspace && !keyspace_before {
            // Notifications sent before the subscription was up are lost: look at everything now.
            state.last_reconcile = None;
        }
        keyspace_before = keyspace;
        let pause = match pass(&inner, &token, &mut state, keyspace).await {
            Ok(pause) => {
                backoff.succeeded();
                pause
            }
            Err(error) => {
                inner.leading.store(false, Ordering::Relaxed);
                tracing::warn!(%error, "sweep failed; retrying");
                backoff.failed()
            }
        };
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = inner.cancel.cancelled() => return release(&inner, &token).await,
                () = &mut sleep => break,
                Some(id) = hints.ids.recv() => {
                    let ids = gather(&mut hints, id).await;
                    if state.holding
                        && let Err(error) = reconcile_hinted(&inner, &ids).await
                    {
                        tracing::debug!(%error, "reconciling hinted nodes failed; the pass will");
                    }
                }
            }
        }
    }
}

/// Reconciles the hinted nodes that may have changed.
async fn reconcile_hinted(inner: &Inner, ids: &[String]) -> Result<()> {
    let changed = inner.needing_reconcile(ids).await?;
    if !changed.is_empty() {
        inner.reconcile(Some(&changed)).await?;
    }
    Ok(())
}

/// Hands the lease over at once instead of letting it run out.
async fn release(inner: &Inner, token: &str) {
    inner.leading.store(false, Ordering::Relaxed);
    let args = [token.to_owned()];
    let release = inner.invoke::<i64>(&inner.scripts.release, &args);
    let _ = tokio::time::timeout(inner.config.response_timeout, release).await;
}

/// Collects hinted ids arriving within a short window after `first` (many heartbeats, one script
/// call), without repeats.
async fn gather(hints: &mut hints::Hints, first: String) -> Vec<String> {
    let mut ids = std::collections::BTreeSet::from([first]);
    let window = tokio::time::sleep(HINT_WINDOW);
    tokio::pin!(window);
    while ids.len() < HINT_BATCH {
        tokio::select! {
            () = &mut window => break,
            id = hints.ids.recv() => match id {
                Some(id) => { ids.insert(id); }
                None => break,
            },
        }
    }
    ids.into_iter().collect()
}

/// What passes remember between them.
struct PassState {
    /// When the last full reconciliation ran.
    last_reconcile: Option<Instant>,
    /// Whether this process held the lease at its last pass (only the holder acts on hints).
    holding: bool,
}

/// One pass. Returns how long to pause before the next.
async fn pass(inner: &Inner, token: &str, state: &mut PassState, keyspace: bool) -> Result<Duration> {
    let lease_ms = inner.config.sweeper_lease.as_millis().to_string();
    let held: i64 = inner.invoke(&inner.scripts.lease, &[token.to_owned(), lease_ms]).await?;
    state.holding = held == 1;
    inner.leading.store(state.holding, std::sync::atomic::Ordering::Relaxed);
    if held != 1 {
        return Ok(inner.config.sweep_interval);
    }
    let (removed, next, now) = inner.sweep_due().await?;
    if removed > 0 {
        tracing::debug!(removed, "expired nodes");
    }
    let interval = if keyspace { inner.config.safety_interval } else { inner.config.reconcile_interval };
    let until_reconcile = match state.last_reconcile {
        Some(at) if at.elapsed() < interval => interval - at.elapsed(),
        _ => {
            state.last_reconcile = Some(Instant::now());
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
