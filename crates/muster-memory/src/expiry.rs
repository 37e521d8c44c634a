//! Expiry: the sweeper task, expiring one node when it is touched late, and self-preservation.

use std::sync::Arc;
use std::time::Duration;

use muster_core::{DeregisterReason, EventKind, NodeId};
use tokio::time::Instant;

use crate::{Shared, State};

/// Self-preservation (Eureka's renewal threshold, bounded), off unless configured: when fewer
/// heartbeats arrived over the last `window` than `threshold` of those expected — more likely a
/// network cut between the nodes and the registry than that many crashes — expiry pauses. Overdue
/// nodes stay listed (each held back is logged once and counted) and may heartbeat again without
/// being announced as gone. Expiry resumes when the heartbeat rate is back above the threshold, or
/// after `max_pause` at the latest (so a real mass failure is still announced).
///
/// Expected heartbeats: every node is expected to heartbeat three times per TTL (the Titan, SDK
/// and CLI default interval is a third of the TTL), counted over the part of the window it has
/// been registered for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfPreservation {
    /// Share (0–1) of the expected heartbeats below which expiry pauses (Eureka's 0.85).
    pub threshold: f64,
    /// Below this many nodes, never pause (a handful of nodes can all fail for real).
    pub min_nodes: usize,
    /// The window heartbeats are counted over.
    pub window: Duration,
    /// The longest pause.
    pub max_pause: Duration,
}

impl Default for SelfPreservation {
    fn default() -> Self {
        Self {
            threshold: 0.85,
            min_nodes: 10,
            window: Duration::from_secs(60),
            max_pause: Duration::from_secs(300),
        }
    }
}

/// Heartbeats of active nodes, counted per second.
#[derive(Debug, Default)]
pub(crate) struct Renewals {
    /// `(start of the second, heartbeats in it)`, oldest first.
    buckets: std::collections::VecDeque<(Instant, u64)>,
}

impl Renewals {
    /// Counts a heartbeat at `now`; counts older than `window` are dropped.
    pub(crate) fn record(&mut self, now: Instant, window: Duration) {
        self.prune(now, window);
        match self.buckets.back_mut() {
            Some((start, count)) if now.saturating_duration_since(*start) < Duration::from_secs(1) => {
                *count += 1
            }
            _ => self.buckets.push_back((now, 1)),
        }
    }

    /// Heartbeats within `window` before `now`; older counts are dropped.
    fn within(&mut self, now: Instant, window: Duration) -> u64 {
        self.prune(now, window);
        self.buckets.iter().map(|(_, count)| count).sum()
    }

    fn prune(&mut self, now: Instant, window: Duration) {
        while self.buckets.front().is_some_and(|(start, _)| now.saturating_duration_since(*start) > window) {
            self.buckets.pop_front();
        }
    }
}

impl Shared {
    /// Removes every node whose deadline is at or before `now`, publishing an expiry for each —
    /// unless self-preservation pauses expiry. Returns when to look again.
    pub(crate) fn purge_expired(&self, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        if let Some(config) = self.options.self_preservation
            && self.preserve(&mut state, &config, now)
        {
            // Look again soon: heartbeats may end the pause, and so will `max_pause`.
            return Some(now + Duration::from_millis(500).min(config.max_pause));
        }
        while let Some((deadline, id)) = state.deadlines.first().cloned() {
            if deadline > now {
                return Some(deadline);
            }
            if let Some(entry) = state.remove(&id) {
                tracing::debug!(node_id = %id, "node expired");
                let node = entry.node.to_node(&id);
                self.publish(&mut state, EventKind::Deregistered, Some(DeregisterReason::Expired), node);
            }
        }
        None
    }

    /// Decides whether expiry pauses now; updates the pause state.
    pub(crate) fn preserve(&self, state: &mut State, config: &SelfPreservation, now: Instant) -> bool {
        let overdue = state.deadlines.iter().take_while(|(deadline, _)| *deadline <= now).count();
        if overdue == 0 && state.preserving_since.is_none() {
            // Nothing to hold back and no pause to end: the rates need not be computed.
            return false;
        }
        let received = state.renewals.within(now, config.window) as f64;
        let now_ms = muster_core::time::now_ms();
        let window_ms = config.window.as_millis() as f64;
        let expected: f64 = state
            .nodes
            .values()
            .map(|entry| {
                let present = (now_ms.saturating_sub(entry.node.registered_at_ms) as f64).min(window_ms);
                present / (entry.node.ttl_ms.max(3) as f64 / 3.0)
            })
            .sum();
        let population = state.nodes.len();
        let too_few = population >= config.min_nodes && received < config.threshold * expected;
        let holding = match state.preserving_since {
            Some(since) if now.saturating_duration_since(since) >= config.max_pause => {
                tracing::warn!(
                    overdue,
                    "self-preservation ends after its longest pause; expiring overdue nodes"
                );
                state.preserving_since = None;
                false
            }
            Some(_) if !too_few => {
                tracing::info!(overdue, received, expected, "heartbeats are back; self-preservation ends");
                state.preserving_since = None;
                false
            }
            Some(_) => true,
            None if too_few && overdue > 0 => {
                tracing::warn!(
                    overdue,
                    population,
                    received,
                    expected,
                    "too few heartbeats for the registered nodes; pausing expiry (self-preservation)"
                );
                state.preserving_since = Some(now);
                true
            }
            None => false,
        };
        if holding {
            let due: Vec<NodeId> = state
                .deadlines
                .iter()
                .take_while(|(deadline, _)| *deadline <= now)
                .map(|(_, id)| id.clone())
                .collect();
            for id in due {
                if state.held_back.insert(id.clone()) {
                    self.held_back_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(node_id = %id, "self-preservation holds back the expiry of this node");
                }
            }
        } else {
            state.held_back.clear();
        }
        holding
    }

    pub(crate) fn preserving(&self, state: &State) -> bool {
        state.preserving_since.is_some()
    }

    /// Expires one node now if its deadline has passed (so a late heartbeat re-registers it).
    pub(crate) fn expire_if_due(&self, state: &mut State, id: &NodeId, now: Instant) {
        if !self.preserving(state)
            && state.nodes.get(id).is_some_and(|e| e.deadline <= now)
            && let Some(entry) = state.remove(id)
        {
            self.publish(
                state,
                EventKind::Deregistered,
                Some(DeregisterReason::Expired),
                entry.node.to_node(id),
            );
        }
    }
}

/// The sweeper: sleeps until the earliest deadline, expires what is due, repeats.
pub(crate) async fn sweep_expired(shared: Arc<Shared>) {
    loop {
        if shared.read().shutdown {
            return;
        }
        match shared.purge_expired(Instant::now()) {
            Some(when) => {
                tokio::select! {
                    () = tokio::time::sleep_until(when) => {}
                    () = shared.sweeper_wake.notified() => {}
                }
            }
            None => shared.sweeper_wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heartbeat counts cover the window and no more: memory stays bounded however long the
    /// registry runs without a pause.
    #[tokio::test(start_paused = true)]
    async fn renewals_count_the_window_and_stay_bounded() {
        let window = Duration::from_secs(10);
        let mut renewals = Renewals::default();
        for _ in 0..100 {
            renewals.record(Instant::now(), window);
            renewals.record(Instant::now(), window);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(renewals.buckets.len() <= 11, "{} buckets", renewals.buckets.len());
        assert_eq!(renewals.within(Instant::now(), window), 20, "two per second over ten seconds");
    }
}
