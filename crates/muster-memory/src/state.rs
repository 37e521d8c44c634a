//! The registry's state under its lock: nodes, the deadline and service indexes, the event log.

use std::collections::{BTreeSet, HashMap};

use muster_core::{EventLog, NodeId, NodeInfo, Revision};
use tokio::time::Instant;

use crate::compact::{StoredNode, Strings};

/// A stored node and when it expires.
pub(crate) struct Entry {
    /// The node, compact (readers get a `NodeInfo` built from it).
    pub(crate) node: StoredNode,
    /// When its TTL runs out (tokio clock).
    pub(crate) deadline: Instant,
}

/// The registry's mutable state.
#[derive(Default)]
pub(crate) struct State {
    /// Every stored node by id.
    pub(crate) nodes: HashMap<NodeId, Entry>,
    /// `(deadline, id)` for every stored node; the first entry is the next to expire.
    pub(crate) deadlines: BTreeSet<(Instant, NodeId)>,
    /// Service name → ids of nodes that list a service of that name.
    pub(crate) by_service: HashMap<String, BTreeSet<NodeId>>,
    /// The most recent events (the watch component's log; its revision is the registry's).
    pub(crate) log: EventLog,
    /// The revision this instance started from: zero, or the restored snapshot's.
    pub(crate) origin: Revision,
    /// Revision of this instance's first event, once issued. It follows `origin` directly only
    /// after a clean restore; otherwise it jumps to the wall clock in microseconds (at least
    /// `origin + 1`), so revisions keep increasing across restarts that lost events and watchers
    /// of an earlier instance are told to resync rather than resume on different history.
    pub(crate) first: Option<Revision>,
    /// The snapshot restored was written at a clean shutdown: revisions continue from it.
    pub(crate) continues: bool,
    /// Set when the last handle is dropped.
    pub(crate) shutdown: bool,
    /// Heartbeats of active nodes over the recent past (for self-preservation).
    pub(crate) renewals: crate::expiry::Renewals,
    /// Nodes whose expiry self-preservation holds back now (each logged and counted once).
    pub(crate) held_back: std::collections::HashSet<NodeId>,
    /// Since when expiry is paused by self-preservation.
    pub(crate) preserving_since: Option<Instant>,
    /// Service names and versions, shared by the nodes that use them.
    pub(crate) strings: Strings,
}

impl State {
    /// Removes a node from the map and every index.
    pub(crate) fn remove(&mut self, id: &NodeId) -> Option<Entry> {
        let entry = self.nodes.remove(id)?;
        self.deadlines.remove(&(entry.deadline, id.clone()));
        for name in entry.node.service_names() {
            if let Some(ids) = self.by_service.get_mut(name) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_service.remove(name);
                }
            }
        }
        Some(entry)
    }

    /// Moves a node from one service list to another in the service index.
    pub(crate) fn reindex_services<'a>(
        &mut self,
        id: &NodeId,
        old: impl Iterator<Item = &'a str>,
        new: &[muster_core::ServiceInfo],
    ) {
        for name in old {
            if !new.iter().any(|s| s.name == name)
                && let Some(ids) = self.by_service.get_mut(name)
            {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_service.remove(name);
                }
            }
        }
        for service in new {
            self.by_service.entry(service.name.clone()).or_default().insert(id.clone());
        }
    }

    /// Refuses adding `id` to a service that already has `max` other nodes (checked under the
    /// lock, in the write that would add it).
    pub(crate) fn check_service_limit(
        &self,
        id: &NodeId,
        services: &[muster_core::ServiceInfo],
        max: Option<usize>,
    ) -> muster_core::Result<()> {
        let Some(max) = max else { return Ok(()) };
        for service in services {
            let members = self.by_service.get(&service.name);
            let others = members.map_or(0, |ids| ids.len() - usize::from(ids.contains(id)));
            if members.is_none_or(|ids| !ids.contains(id)) && others >= max {
                return Err(muster_core::Error::service_full(&service.name, others, max));
            }
        }
        Ok(())
    }

    /// True when the entry counts as active: before its deadline, or kept by self-preservation.
    pub(crate) fn live(&self, entry: &Entry, now: Instant) -> bool {
        entry.deadline > now || self.preserving_since.is_some()
    }

    pub(crate) fn active_nodes(&self, now: Instant) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> =
            self.nodes.iter().filter(|(_, e)| self.live(e, now)).map(|(id, e)| e.node.to_node(id)).collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }
}
