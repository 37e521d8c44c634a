//! Expiry: the sweeper task, expiring one node when it is touched late, and self-preservation.

use std::sync::Arc;
use std::time::Duration;

use muster_core::{DeregisterReason, EventKind, NodeId};
use tokio::time::Instant;

use crate::{Shared, State};

/// Self-preservation (Eureka's idea, bounded): when more than `threshold` of the nodes would expire
/// within one `window` — more likely a network cut between them and the registry than that many
/// crashes — expiry pauses. Overdue nodes stay listed and may heartbeat again without being
/// announced as gone. Expiry resumes when enough overdue nodes are back below the threshold, or
/// after `max_pause` at the latest (so a real mass failure is still announced).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfPreservation {
    /// Share of the nodes (0–1) whose expiry within one window triggers the pause.
    pub threshold: f64,
    /// Below this many nodes, never pause (a handful of nodes can all fail for real).
    pub min_nodes: usize,
    /// The window expiries are counted in (about one TTL).
    pub window: Duration,
    /// The longest pause.
    pub max_pause: Duration,
}

impl Default for SelfPreservation {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_nodes: 10,
            window: Duration::from_secs(15),
            max_pause: Duration::from_secs(300),
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
                state.recent_expiries.push_back(now);
                let node = entry.node.to_node(&id);
                self.publish(&mut state, EventKind::Deregistered, Some(DeregisterReason::Expired), node);
            }
        }
        None
    }

    /// Decides whether expiry pauses now; updates the pause state.
    pub(crate) fn preserve(&self, state: &mut State, config: &SelfPreservation, now: Instant) -> bool {
        while state
            .recent_expiries
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) > config.window)
        {
            state.recent_expiries.pop_front();
        }
        let overdue = state.deadlines.iter().take_while(|(deadline, _)| *deadline <= now).count();
        let population = state.nodes.len() + state.recent_expiries.len();
        let losing = overdue + state.recent_expiries.len();
        let too_many = population >= config.min_nodes && losing as f64 > config.threshold * population as f64;
        match state.preserving_since {
            Some(since) if now.saturating_duration_since(since) >= config.max_pause => {
                tracing::warn!(
                    overdue,
                    "self-preservation ends after its longest pause; expiring overdue nodes"
                );
                state.preserving_since = None;
                // Do not pause again for the same loss.
                state.recent_expiries.clear();
                false
            }
            Some(_) if !too_many => {
                tracing::info!(overdue, "heartbeats are back; self-preservation ends");
                state.preserving_since = None;
                false
            }
            Some(_) => true,
            None if too_many && overdue > 0 => {
                tracing::warn!(
                    overdue,
                    population,
                    "too many nodes would expire at once; pausing expiry (self-preservation)"
                );
                state.preserving_since = Some(now);
                true
            }
            None => false,
        }
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
