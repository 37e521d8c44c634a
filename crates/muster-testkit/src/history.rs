//! A history checker: what clients did (operations with their start and acknowledgement times)
//! and what watchers saw (snapshots and events with revisions), checked against Muster's promises.
//!
//! Times are wall-clock milliseconds since the Unix epoch, the clock the store stamps events with
//! (every process of a run is on one machine). The invariants:
//!
//! 1. **order** — within a watcher's connection span (from a snapshot to the next one), revisions
//!    strictly increase;
//! 2. **agreement** — two watchers that saw the same revision saw the same change;
//! 3. **gap-free** — a watcher's span from a snapshot at revision R to its last event L holds
//!    every revision in (R, L] that any watcher saw;
//! 4. **replay** — replaying a watcher's last snapshot and the events after it gives the final
//!    state;
//! 5. **acknowledged registrations** — a node whose last acknowledged operation registered or
//!    heartbeated it is in the final state, or a watcher saw it leave after that operation began —
//!    an event, or a resync's snapshot without it once it could have expired (a TTL after the
//!    operation was sent; a snapshot without it sooner shows it lost);
//! 6. **acknowledged deregistrations** — a node whose last operation was an acknowledged
//!    deregistration is not in the final state;
//! 7. **expiry timing** — an expiry comes no earlier than the TTL after the last acknowledged
//!    heartbeat was sent, and (outside fault windows, with no unacknowledged operation since) no
//!    later than that heartbeat's acknowledgement plus the TTL plus the stated bound;
//! 8. **observers converge** — every observer apart from the watchers (an embedded agent's cache,
//!    an SDK resolver, a peer's discovery) held the registry's view within the run's bound after
//!    each fault healed, and holds the final state at the end.
//!
//! A violation carries the part of the history that shows it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Now, in milliseconds since the Unix epoch (the clock the stores stamp events with).
pub use muster_core::time::now_ms;

/// A watcher's span: the snapshot's revision and nodes, and the events after it.
type Span<'a> = (u64, BTreeSet<String>, Vec<(u64, &'a str, &'a str)>);

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A registration (creates or refreshes with its values).
    Register,
    /// A heartbeat of a registered node.
    Heartbeat,
    /// A deregistration.
    Deregister,
}

/// One client operation on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The node.
    pub node: String,
    /// What was asked.
    pub kind: OpKind,
    /// When the request was sent.
    pub sent_ms: u64,
    /// When the success answer arrived; `None` when it failed or never answered (it may or may not
    /// have taken effect).
    pub acked_ms: Option<u64>,
}

/// What a watcher saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A snapshot: the active nodes at a revision.
    Snapshot {
        /// Its revision.
        revision: u64,
        /// The node ids.
        nodes: BTreeSet<String>,
        /// When the watcher received it.
        at_ms: u64,
    },
    /// One change.
    Event {
        /// Its revision.
        revision: u64,
        /// `registered`, `updated` or `deregistered`.
        kind: String,
        /// The node.
        node: String,
        /// Why it left (`expired`, `graceful`, ...), for a deregistration.
        reason: Option<String>,
        /// The store's timestamp of the change.
        at_ms: u64,
    },
    /// The connection broke; the watcher resumes from its last revision.
    Broken,
}

/// A watcher's observations in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchLog {
    /// A name for messages.
    pub name: String,
    /// What it saw.
    pub seen: Vec<Seen>,
}

/// A whole run.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every operation of every client.
    pub ops: Vec<Op>,
    /// Every watcher.
    pub watches: Vec<WatchLog>,
    /// The nodes' TTL.
    pub ttl_ms: u64,
    /// How late an expiry may come after the TTL once the store is reachable.
    pub expiry_bound_ms: u64,
    /// Faults, `[start, end]`: expiry upper bounds are not checked across them.
    pub faults: Vec<(u64, u64)>,
    /// The active nodes at the end (read after the clients stopped) and the revision they reflect.
    pub final_nodes: BTreeSet<String>,
    /// The revision of `final_nodes`.
    pub final_revision: u64,
    /// Observers apart from the watchers.
    pub observers: Vec<Observed>,
}

/// What an observer apart from the watchers (an agent's cache, an SDK resolver, a peer's
/// discovery) showed: how long its view (the active nodes, each with its address) took to equal the
/// registry's after each fault healed, and its view at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Which observer.
    pub name: String,
    /// After each fault healed, in order: milliseconds until its view equalled the registry's, or
    /// `None` when it did not within the run's bound.
    pub convergence_ms: Vec<Option<u64>>,
    /// How its view differed from the registry's each time it did not converge in time.
    pub evidence: Vec<String>,
    /// Its view once the clients stopped and it had time to catch up (`<id> <address>` per node).
    pub final_view: BTreeSet<String>,
    /// The registry's view it was compared with (read just before or after it).
    pub registry_view: BTreeSet<String>,
}

/// A broken promise and the history that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (see the module documentation).
    pub invariant: &'static str,
    /// What is wrong.
    pub detail: String,
    /// The operations and observations that show it, in order.
    pub evidence: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "violation of {}: {}", self.invariant, self.detail)?;
        for line in &self.evidence {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl History {
    /// Checks every invariant; all violations found, the first of each kind per node or watcher.
    pub fn check(&self) -> Vec<Violation> {
        let mut violations = Vec::new();
        self.check_watches(&mut violations);
        self.check_nodes(&mut violations);
        self.check_observers(&mut violations);
        violations
    }

    /// Invariant 8.
    fn check_observers(&self, violations: &mut Vec<Violation>) {
        for observed in &self.observers {
            if let Some(round) = observed.convergence_ms.iter().position(Option::is_none) {
                violations.push(Violation {
                    invariant: "observers converge",
                    detail: format!(
                        "{} did not hold the registry's view within the bound after fault {}",
                        observed.name,
                        round + 1
                    ),
                    evidence: std::iter::once(format!(
                        "convergence after each fault (ms): {:?}",
                        observed.convergence_ms
                    ))
                    .chain(observed.evidence.iter().cloned())
                    .collect(),
                });
            }
            if observed.final_view != observed.registry_view {
                let missing: Vec<&String> = observed.registry_view.difference(&observed.final_view).collect();
                let extra: Vec<&String> = observed.final_view.difference(&observed.registry_view).collect();
                violations.push(Violation {
                    invariant: "observers converge",
                    detail: format!("{} ends with another view than the registry's", observed.name),
                    evidence: vec![format!("missing {missing:?}, extra {extra:?}")],
                });
            }
        }
    }

    /// How many watchers reached the final revision (those are the ones replayed).
    pub fn caught_up(&self) -> usize {
        self.watches
            .iter()
            .filter(|w| {
                w.seen.iter().rev().find_map(|s| match s {
                    Seen::Snapshot { revision, .. } | Seen::Event { revision, .. } => Some(*revision),
                    Seen::Broken => None,
                }) >= Some(self.final_revision)
            })
            .count()
    }

    /// Invariants 1-4.
    fn check_watches(&self, violations: &mut Vec<Violation>) {
        let mut by_revision: BTreeMap<u64, (String, String)> = BTreeMap::new();
        let mut first_seen: BTreeMap<u64, String> = BTreeMap::new();
        for watch in &self.watches {
            for seen in &watch.seen {
                if let Seen::Event { revision, kind, node, .. } = seen {
                    match by_revision.get(revision) {
                        Some((k, n)) if k != kind || n != node => violations.push(Violation {
                            invariant: "agreement",
                            detail: format!(
                                "revision {revision} is `{kind} {node}` to {} but `{k} {n}` to {}",
                                watch.name, first_seen[revision]
                            ),
                            evidence: vec![
                                format!("{}: {kind} {node} @{revision}", watch.name),
                                format!("{}: {k} {n} @{revision}", first_seen[revision]),
                            ],
                        }),
                        Some(_) => {}
                        None => {
                            by_revision.insert(*revision, (kind.clone(), node.clone()));
                            first_seen.insert(*revision, watch.name.clone());
                        }
                    }
                }
            }
        }
        for watch in &self.watches {
            self.check_watch(watch, &by_revision, violations);
        }
    }

    fn check_watch(
        &self,
        watch: &WatchLog,
        all: &BTreeMap<u64, (String, String)>,
        violations: &mut Vec<Violation>,
    ) {
        // Spans: a snapshot and the events after it (across broken connections, which resume).
        let mut spans: Vec<Span<'_>> = Vec::new();
        for seen in &watch.seen {
            match seen {
                Seen::Snapshot { revision, nodes, .. } => spans.push((*revision, nodes.clone(), Vec::new())),
                Seen::Event { revision, kind, node, .. } => match spans.last_mut() {
                    Some(span) => span.2.push((*revision, kind, node)),
                    None => violations.push(Violation {
                        invariant: "order",
                        detail: format!("{} saw an event before any snapshot", watch.name),
                        evidence: vec![format!("{}: {kind} {node} @{revision}", watch.name)],
                    }),
                },
                Seen::Broken => {}
            }
        }
        for (start, nodes, events) in &spans {
            let mut last = *start;
            for (revision, kind, node) in events {
                if *revision <= last {
                    violations.push(Violation {
                        invariant: "order",
                        detail: format!("{} saw revision {revision} after {last}", watch.name),
                        evidence: vec![
                            format!("{}: snapshot @{start}", watch.name),
                            format!("{}: {kind} {node} @{revision}", watch.name),
                        ],
                    });
                    return;
                }
                last = *revision;
            }
            let mine: BTreeSet<u64> = events.iter().map(|e| e.0).collect();
            // A span without events (a snapshot followed at once by another) misses nothing.
            if let Some((missing, (kind, node))) =
                all.range(start + 1..).take_while(|(r, _)| **r <= last).find(|(r, _)| !mine.contains(r))
            {
                violations.push(Violation {
                    invariant: "gap-free",
                    detail: format!(
                        "{} went from snapshot @{start} to @{last} without revision {missing}",
                        watch.name
                    ),
                    evidence: vec![
                        format!("{}: snapshot @{start} ({} nodes)", watch.name, nodes.len()),
                        format!("another watcher: {kind} {node} @{missing}"),
                        format!("{}: last event @{last}", watch.name),
                    ],
                });
                return;
            }
        }
        // Replay of the last span gives the final state, when the watcher has reached it.
        if let Some((start, nodes, events)) = spans.last() {
            let reached = events.last().map_or(*start, |e| e.0);
            if reached < self.final_revision {
                return;
            }
            let mut state = nodes.clone();
            for (_, kind, node) in events.iter().filter(|e| e.0 <= self.final_revision) {
                match *kind {
                    "deregistered" => {
                        state.remove(*node);
                    }
                    _ => {
                        state.insert((*node).to_owned());
                    }
                }
            }
            if state != self.final_nodes {
                let extra: Vec<_> = state.difference(&self.final_nodes).collect();
                let lost: Vec<_> = self.final_nodes.difference(&state).collect();
                violations.push(Violation {
                    invariant: "replay",
                    detail: format!(
                        "{}'s replay differs from the final state: extra {extra:?}, missing {lost:?}",
                        watch.name
                    ),
                    evidence: std::iter::once(format!("{}: snapshot @{start} {nodes:?}", watch.name))
                        .chain(
                            events
                                .iter()
                                .filter(|e| extra.iter().chain(&lost).any(|n| *n == e.2))
                                .map(|(r, k, n)| format!("{}: {k} {n} @{r}", watch.name)),
                        )
                        .chain(std::iter::once(format!(
                            "final state @{}: {:?}",
                            self.final_revision, self.final_nodes
                        )))
                        .collect(),
                });
            }
        }
    }

    /// Invariants 5-7.
    fn check_nodes(&self, violations: &mut Vec<Violation>) {
        let mut ops: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            ops.entry(op.node.as_str()).or_default().push(op);
        }
        // Every leaving seen by any watcher, by node: (event time, reason).
        let mut left: BTreeMap<&str, Vec<(u64, Option<&str>)>> = BTreeMap::new();
        for watch in &self.watches {
            for seen in &watch.seen {
                if let Seen::Event { kind, node, reason, at_ms, .. } = seen
                    && kind == "deregistered"
                {
                    let seen = left.entry(node.as_str()).or_default();
                    if !seen.contains(&(*at_ms, reason.as_deref())) {
                        seen.push((*at_ms, reason.as_deref()));
                    }
                }
            }
        }
        // When a watcher's snapshot (a resync) did not list a node: a leaving seen that way, when
        // its event fell inside the resync's gap (a new primary's jump, a trimmed log).
        let mut absent: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for watch in &self.watches {
            for seen in &watch.seen {
                if let Seen::Snapshot { nodes, at_ms, .. } = seen {
                    for node in ops.keys().filter(|n| !nodes.contains(**n)) {
                        absent.entry(node).or_default().push(*at_ms);
                    }
                }
            }
        }
        for (node, list) in &mut ops {
            list.sort_by_key(|op| op.sent_ms);
            let evidence = |extra: Vec<String>| -> Vec<String> {
                list.iter()
                    .map(|op| {
                        format!(
                            "{:?} {node} sent {} {}",
                            op.kind,
                            op.sent_ms,
                            op.acked_ms.map_or("unacknowledged".into(), |a| format!("acked {a}"))
                        )
                    })
                    .chain(
                        left.get(node)
                            .into_iter()
                            .flatten()
                            .map(|(at, reason)| format!("left {at} ({})", reason.unwrap_or("?"))),
                    )
                    .chain(extra)
                    .collect()
            };
            let Some(last) = list.last() else { continue };
            let last_acked = list.iter().rev().find(|op| op.acked_ms.is_some());
            // 6: acknowledged deregistration, nothing after it. A registration that failed before
            // it may still land after it (held in the network), so none may be in doubt.
            let in_doubt = list
                .iter()
                .any(|op| op.kind == OpKind::Register && op.acked_ms.is_none() && op.sent_ms < last.sent_ms);
            if last.kind == OpKind::Deregister
                && last.acked_ms.is_some()
                && !in_doubt
                && self.final_nodes.contains(*node)
            {
                violations.push(Violation {
                    invariant: "acknowledged deregistrations",
                    detail: format!("{node} is listed after its acknowledged deregistration"),
                    evidence: evidence(vec![format!("final state lists {node}")]),
                });
            }
            // 5: acknowledged registration or heartbeat as the last acknowledged word.
            if let Some(op) = last_acked
                && op.kind != OpKind::Deregister
                && !self.final_nodes.contains(*node)
            {
                let later_deregister =
                    list.iter().any(|o| o.kind == OpKind::Deregister && o.sent_ms >= op.sent_ms);
                // Absent from a snapshot only counts once the node could have expired: a TTL after
                // the acknowledged operation was sent (before that, it was lost).
                let seen_leaving = left.get(node).is_some_and(|l| l.iter().any(|(at, _)| *at >= op.sent_ms))
                    || absent.get(node).is_some_and(|a| a.iter().any(|at| *at >= op.sent_ms + self.ttl_ms));
                if !later_deregister && !seen_leaving {
                    violations.push(Violation {
                        invariant: "acknowledged registrations",
                        detail: format!(
                            "{node} was acknowledged at {} and is gone with no event saying it left",
                            op.acked_ms.unwrap_or(0)
                        ),
                        evidence: evidence(vec![format!(
                            "final state (@{}) does not list {node}",
                            self.final_revision
                        )]),
                    });
                }
            }
            // 7: expiry timing. Only operations acknowledged before the expiry surely took effect
            // before it; one still in flight then may have landed on either side.
            for (at, reason) in left.get(node).into_iter().flatten() {
                if *reason != Some("expired") {
                    continue;
                }
                let Some(acked) = list
                    .iter()
                    .rev()
                    .find(|op| op.kind != OpKind::Deregister && op.acked_ms.is_some_and(|a| a < *at))
                else {
                    continue;
                };
                // Clocks: the event's timestamp and ours come from the same machine; allow 25 ms.
                if at + 25 < acked.sent_ms + self.ttl_ms {
                    violations.push(Violation {
                        invariant: "expiry timing",
                        detail: format!(
                            "{node} expired at {at}, {} ms after its last acknowledged heartbeat was sent (TTL {})",
                            at.saturating_sub(acked.sent_ms),
                            self.ttl_ms
                        ),
                        evidence: evidence(Vec::new()),
                    });
                    continue;
                }
                let acked_at = acked.acked_ms.unwrap_or(acked.sent_ms);
                let uncertain = list.iter().any(|op| {
                    op.sent_ms > acked.sent_ms && op.sent_ms < *at && op.acked_ms.is_none_or(|a| a >= *at)
                });
                let faulted =
                    self.faults.iter().any(|(start, end)| *start <= *at && *end + self.ttl_ms >= acked_at);
                if !uncertain && !faulted && *at > acked_at + self.ttl_ms + self.expiry_bound_ms {
                    violations.push(Violation {
                        invariant: "expiry timing",
                        detail: format!(
                            "{node} expired at {at}, {} ms after the TTL ran out (bound {} ms)",
                            at - acked_at - self.ttl_ms,
                            self.expiry_bound_ms
                        ),
                        evidence: evidence(Vec::new()),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
