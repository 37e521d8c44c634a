//! Active health checks: the registry checks nodes whose registration asked for it (HTTP GET of a
//! health URL, or a TCP connect) and sets them `DOWN` after `failures` failed checks in a row and
//! back `UP` after `successes` passed ones; each change is an `updated` event whose node carries
//! the reason in `check.output`.
//!
//! - The checks to run are the active nodes of the hub's mirror with a check in their metadata
//!   (see `muster_api::check`); a node that leaves stops being checked at once. The mirror keeps
//!   those nodes apart ([`Mirror::checked`]) and counts their changes, so the checks are read again
//!   only when a checked node changed: the cost per registration does not grow with the fleet.
//! - Each node's first check waits a share of its interval derived from its id, so checks spread
//!   over the interval instead of starting together.
//! - On a shared store only the process that leads the fleet's background work (on Redis: the
//!   sweeper lease holder) runs them ([`Registry::fleet`]); another takes over with the
//!   lease.
//! - While a check holds a node `DOWN`, a heartbeat, registration or update asking for `UP` keeps
//!   it `DOWN`: every store keeps the verdict as a condition of its atomic write
//!   (`NodeInfo::keep_check_verdict`); only the check's own update (`as_check_verdict`) lifts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use muster_api::check::{CHECK_OUTPUT, Check, CheckKind};
use muster_core::CHECK_SINCE;
use muster_core::log::Mirror;
use muster_core::{NodeId, NodeInfo, NodeStatus, NodeUpdate, Registry};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fanout::Hub;

/// Longest sleep between two looks at the checks (due checks wake the loop at their time).
const SCAN: Duration = Duration::from_millis(100);
/// Longest time between two reads of the checks from the mirror when no revision changed.
const RESCAN: Duration = Duration::from_secs(5);

/// One node's check state.
struct Tracked {
    check: Check,
    target: String,
    next: Instant,
    failures: u32,
    successes: u32,
    running: bool,
}

/// A check's result.
struct Outcome {
    node_id: NodeId,
    /// `None`: passed; otherwise what failed.
    failure: Option<String>,
}

/// Runs the checks until `shutdown`.
pub(crate) async fn run(
    registry: Arc<dyn Registry>,
    hub: Hub,
    shutdown: CancellationToken,
    checks_run: Counter,
    tasks: tokio_util::task::TaskTracker,
) {
    // HTTPS checks use rustls with ring, as the server's own TLS does (installing twice is harmless).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // No redirects: a check reaches the target it names and nothing else (a 3xx is a failure).
    let http = match reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build() {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "health checks are off: no HTTP client");
            return;
        }
    };
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let mut tracked: HashMap<NodeId, Tracked> = HashMap::new();
    let mut scanned: Option<(Instant, u64)> = None;
    loop {
        // Wake at the next due check (exactly: counts × interval is the time a verdict takes), or
        // after a scan period to notice new checks.
        let due = tracked.values().filter(|t| !t.running).map(|t| t.next).min();
        let wake = due.map_or(Instant::now() + SCAN, |due| due.min(Instant::now() + SCAN));
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(outcome) = done_rx.recv() => {
                settle(&*registry, &hub, &mut tracked, outcome).await;
                continue;
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        if registry.fleet().is_some_and(|fleet| !fleet.leads_fleet_tasks()) {
            tracked.clear();
            scanned = None;
            continue;
        }
        let now = Instant::now();
        // The checks to run change only with the checked nodes: read those again after a change
        // to one of them (and at least every few seconds), never the whole fleet per change.
        let changes = hub.with_mirror(Mirror::checked_changes);
        if scanned.is_none_or(|(at, seen)| seen != changes || now.duration_since(at) >= RESCAN) {
            scanned = Some((now, changes));
            follow(&hub, &mut tracked, now);
        }
        for (node_id, entry) in &mut tracked {
            if !entry.running && entry.next <= now {
                entry.running = true;
                // From the due time, not from now: checks do not drift by the wake-up delay.
                entry.next = (entry.next + entry.check.interval()).max(now);
                checks_run.inc();
                tasks.spawn(probe(
                    http.clone(),
                    node_id.clone(),
                    entry.check.clone(),
                    entry.target.clone(),
                    done_tx.clone(),
                ));
            }
        }
    }
}

/// Brings `tracked` in line with the checks of the mirror's nodes: new ones start at a share of
/// their interval, changed definitions start their counts afresh, nodes that left (or dropped
/// their check) are no longer checked.
fn follow(hub: &Hub, tracked: &mut HashMap<NodeId, Tracked>, now: Instant) {
    let nodes = hub.with_mirror(|mirror| {
        mirror
            .checked()
            .filter_map(|node| Check::read_from(&node.metadata).map(|check| (Arc::clone(node), check)))
            .collect::<Vec<_>>()
    });
    let mut present = std::collections::HashSet::with_capacity(nodes.len());
    for (node, check) in nodes {
        present.insert(node.node_id.clone());
        let target = target_of(&node, &check);
        match tracked.get_mut(&node.node_id) {
            Some(entry) if entry.check == check && entry.target == target => {}
            Some(entry) => {
                *entry =
                    Tracked { next: now, check, target, failures: 0, successes: 0, running: entry.running };
            }
            None => {
                let next = now + spread(node.node_id.as_str(), check.interval());
                let entry = Tracked { next, check, target, failures: 0, successes: 0, running: false };
                tracked.insert(node.node_id.clone(), entry);
            }
        }
    }
    tracked.retain(|id, _| present.contains(id));
}

/// Where the check goes: the URL of an HTTP check (its target or the node's address, its path or
/// the node's `health` metadata or `/health`: the instance's health URL), or the address of a TCP one.
fn target_of(node: &NodeInfo, check: &Check) -> String {
    let address = check.target.clone().unwrap_or_else(|| node.address.to_string());
    match check.kind {
        CheckKind::Http => {
            let path = check
                .path
                .as_deref()
                .or(node.metadata.get("health").map(String::as_str))
                .unwrap_or("/health");
            let path = if path.starts_with('/') { path } else { "/health" };
            format!("http://{address}{path}")
        }
        CheckKind::Tcp => address,
    }
}

/// The delay of a node's first check: a share of the interval fixed by its id.
fn spread(id: &str, interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    let share = (hasher.finish() % 1000) as u32;
    interval * share / 1000
}

async fn probe(
    http: reqwest::Client,
    node_id: NodeId,
    check: Check,
    target: String,
    done: tokio::sync::mpsc::UnboundedSender<Outcome>,
) {
    let timeout = check.timeout();
    let failure = match check.kind {
        CheckKind::Http => match http.get(&target).timeout(timeout).send().await {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("GET {target}: HTTP {}", response.status().as_u16())),
            Err(error) if error.is_timeout() => Some(format!("GET {target}: no answer within {timeout:?}")),
            Err(error) => Some(format!("GET {target}: {}", innermost(&error))),
        },
        CheckKind::Tcp => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target)).await {
                Ok(Ok(_)) => None,
                Ok(Err(error)) => Some(format!("TCP {target}: {error}")),
                Err(_) => Some(format!("TCP {target}: no connection within {timeout:?}")),
            }
        }
    };
    let _ = done.send(Outcome { node_id, failure });
}

fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Counts a result and, at a threshold, changes the node's status.
async fn settle(
    registry: &dyn Registry,
    hub: &Hub,
    tracked: &mut HashMap<NodeId, Tracked>,
    outcome: Outcome,
) {
    let Some(entry) = tracked.get_mut(&outcome.node_id) else { return };
    entry.running = false;
    let Some(node) = hub.with_mirror(|mirror| mirror.get(&outcome.node_id).cloned()) else { return };
    let mut metadata = node.metadata.clone();
    let update = match &outcome.failure {
        Some(failure) => {
            entry.successes = 0;
            entry.failures = entry.failures.saturating_add(1);
            tracing::debug!(node_id = %outcome.node_id, failures = entry.failures, %failure, "health check failed");
            if entry.failures < entry.check.failures || node.held_by_check() {
                return;
            }
            metadata.insert(CHECK_OUTPUT.into(), truncate(failure));
            metadata.insert(CHECK_SINCE.into(), muster_core::time::now_ms().to_string());
            tracing::info!(node_id = %outcome.node_id, %failure, "health check: DOWN");
            NodeUpdate::new().status(NodeStatus::Down).as_check_verdict()
        }
        None => {
            entry.failures = 0;
            entry.successes = entry.successes.saturating_add(1);
            if !node.held_by_check() || entry.successes < entry.check.successes {
                return;
            }
            metadata.remove(CHECK_OUTPUT);
            metadata.remove(CHECK_SINCE);
            tracing::info!(node_id = %outcome.node_id, "health check: UP");
            NodeUpdate::new().status(NodeStatus::Up).as_check_verdict()
        }
    };
    let update = match update.metadata(metadata) {
        Ok(update) => update,
        Err(error) => {
            tracing::warn!(node_id = %outcome.node_id, %error, "health check result not recorded");
            return;
        }
    };
    if let Err(error) = registry.update(&outcome.node_id, update).await {
        // Gone meanwhile, or the store is down: the next check tries again.
        tracing::debug!(node_id = %outcome.node_id, %error, "health check result not recorded");
        entry.failures = entry.failures.min(entry.check.failures.saturating_sub(1));
        entry.successes = entry.successes.min(entry.check.successes.saturating_sub(1));
    }
}

/// A failure description within the metadata value limit.
fn truncate(text: &str) -> String {
    text.chars().take(512).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_checks_spread_over_the_interval() {
        let interval = Duration::from_secs(10);
        let delays: Vec<Duration> = (0..200).map(|n| spread(&format!("node-{n}"), interval)).collect();
        assert!(delays.iter().all(|d| *d < interval));
        let buckets: std::collections::BTreeSet<u128> = delays.iter().map(|d| d.as_millis() / 1000).collect();
        assert_eq!(buckets.len(), 10, "every tenth of the interval gets some: {buckets:?}");
        assert_eq!(spread("node-1", interval), spread("node-1", interval), "stable per node");
    }
}
