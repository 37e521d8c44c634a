//! A local copy of the registry, kept current by the agent's watch stream.
//!
//! # Staleness bound
//!
//! The cache holds every change up to [`DiscoveryCache::revision`]. While the watch stream is
//! connected it lags the store only by event delivery (on the embedded store: one task wake-up;
//! on a remote store: one network hop), plus the store's own expiry delay for nodes that stop
//! heartbeating (zero on the embedded store). The moment the stream breaks the cache reports
//! itself unsynced and refuses lookups ([`DiscoveryCache::find`] returns an `Unavailable`
//! error), so callers fall back to the store; it becomes synced again after the agent has
//! resumed the stream or, when events were lost, replaced its contents from a fresh snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use muster_core::{
    DeregisterReason, DiscoveryEvent, Error, EventKind, NodeId, NodeInfo, Result, Revision, ServiceQuery,
    Snapshot, time::now_ms,
};

/// The agent's local view of the registry. Lookups take a read lock and clone `Arc`s only.
#[derive(Debug, Default)]
pub struct DiscoveryCache {
    /// The view; written only by the agent's watch task.
    state: RwLock<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// False until the first snapshot arrives and whenever the watch stream is broken.
    synced: bool,
    /// Revision of the last event applied.
    revision: Revision,
    /// Every active node by id.
    nodes: HashMap<NodeId, Arc<NodeInfo>>,
    /// Service name → nodes listing a service of that name, ordered by node id.
    by_service: HashMap<String, BTreeMap<NodeId, Arc<NodeInfo>>>,
}

impl DiscoveryCache {
    fn read(&self) -> RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// True when the cache reflects a connected watch stream.
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// The revision of the last change the cache holds.
    pub fn revision(&self) -> Revision {
        self.read().revision
    }

    /// Active nodes providing a service that satisfies `query`, ordered by node id.
    ///
    /// Fails with an `Unavailable` error while the cache is not synced.
    pub fn find(&self, query: &ServiceQuery) -> Result<Vec<Arc<NodeInfo>>> {
        let state = self.read();
        if !state.synced {
            return Err(Error::unavailable("discovery cache is not synced with the registry"));
        }
        Ok(state
            .by_service
            .get(query.name())
            .map(|nodes| nodes.values().filter(|n| n.provides(query)).cloned().collect())
            .unwrap_or_default())
    }

    /// One node, if the cache holds it. Fails while the cache is not synced.
    pub fn get(&self, node_id: &NodeId) -> Result<Option<Arc<NodeInfo>>> {
        let state = self.read();
        if !state.synced {
            return Err(Error::unavailable("discovery cache is not synced with the registry"));
        }
        Ok(state.nodes.get(node_id).cloned())
    }

    /// Every node the cache holds, ordered by node id. Fails while the cache is not synced.
    pub fn nodes(&self) -> Result<Vec<Arc<NodeInfo>>> {
        let state = self.read();
        if !state.synced {
            return Err(Error::unavailable("discovery cache is not synced with the registry"));
        }
        let mut nodes: Vec<_> = state.nodes.values().cloned().collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    /// Marks the cache unsynced (the watch stream broke or the agent stopped).
    pub(crate) fn mark_unsynced(&self) {
        self.write().synced = false;
    }

    /// Marks the cache synced again after the stream resumed without a gap.
    pub(crate) fn mark_synced(&self) {
        self.write().synced = true;
    }

    /// Applies one event. Events at or below the cache's revision are ignored (already applied).
    pub(crate) fn apply(&self, event: &DiscoveryEvent) {
        let mut state = self.write();
        if event.revision <= state.revision {
            return;
        }
        state.revision = event.revision;
        match event.kind {
            EventKind::Registered | EventKind::Updated => state.insert(Arc::new(event.node.clone())),
            EventKind::Deregistered => state.remove(&event.node.node_id),
        }
    }

    /// Applies a peer event (one without a revision of its own), whatever its revision.
    pub(crate) fn apply_peer(&self, event: &DiscoveryEvent) {
        let mut state = self.write();
        match event.kind {
            EventKind::Registered | EventKind::Updated => state.insert(Arc::new(event.node.clone())),
            EventKind::Deregistered => state.remove(&event.node.node_id),
        }
    }

    /// Replaces the contents with a snapshot and returns the changes from the old contents to the
    /// new, as events at the snapshot's revision (so handlers miss nothing across a gap).
    pub(crate) fn replace(&self, snapshot: Snapshot) -> Vec<DiscoveryEvent> {
        let mut state = self.write();
        let old = std::mem::take(&mut state.nodes);
        state.by_service.clear();
        state.revision = snapshot.revision;
        state.synced = true;
        let timestamp_ms = now_ms();
        let event = |kind, reason, node: &NodeInfo| DiscoveryEvent {
            revision: snapshot.revision,
            kind,
            reason,
            node: node.clone(),
            timestamp_ms,
        };
        let mut changes = Vec::new();
        for node in snapshot.nodes {
            match old.get(&node.node_id) {
                None => changes.push(event(EventKind::Registered, None, &node)),
                Some(before) if before.differs_from(&node) => {
                    changes.push(event(EventKind::Updated, None, &node))
                }
                Some(_) => {}
            }
            state.insert(Arc::new(node));
        }
        let mut gone: Vec<_> = old.values().filter(|n| !state.nodes.contains_key(&n.node_id)).collect();
        gone.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        changes.extend(
            gone.into_iter().map(|n| event(EventKind::Deregistered, Some(DeregisterReason::Unknown), n)),
        );
        changes
    }
}

impl CacheState {
    fn insert(&mut self, node: Arc<NodeInfo>) {
        self.remove(&node.node_id);
        for service in &node.services {
            self.by_service
                .entry(service.name.clone())
                .or_default()
                .insert(node.node_id.clone(), Arc::clone(&node));
        }
        self.nodes.insert(node.node_id.clone(), node);
    }

    fn remove(&mut self, node_id: &NodeId) {
        let Some(old) = self.nodes.remove(node_id) else { return };
        for service in &old.services {
            if let Some(nodes) = self.by_service.get_mut(&service.name) {
                nodes.remove(node_id);
                if nodes.is_empty() {
                    self.by_service.remove(&service.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::{Address, ServiceInfo};

    fn node(id: &str, services: &[&str]) -> NodeInfo {
        NodeInfo {
            node_id: NodeId::new(id).unwrap(),
            address: Address::parse("h:1").unwrap(),
            services: services.iter().map(|s| ServiceInfo::parse(s).unwrap()).collect(),
            timestamp_ms: 0,
            registered_at_ms: 0,
            status: Default::default(),
            metadata: Default::default(),
            ttl_ms: 1000,
        }
    }

    fn event(revision: u64, kind: EventKind, node: NodeInfo) -> DiscoveryEvent {
        DiscoveryEvent { revision: Revision(revision), kind, reason: None, node, timestamp_ms: 0 }
    }

    fn ids(nodes: &[Arc<NodeInfo>]) -> Vec<&str> {
        nodes.iter().map(|n| n.node_id.as_str()).collect()
    }

    #[test]
    fn refuses_lookups_until_synced() {
        let cache = DiscoveryCache::default();
        assert!(cache.find(&ServiceQuery::new("a").unwrap()).unwrap_err().is_retryable());
        cache.replace(Snapshot { revision: Revision(3), nodes: vec![node("n1", &["a@1"])] });
        assert_eq!(ids(&cache.find(&ServiceQuery::new("a").unwrap()).unwrap()), ["n1"]);
        cache.mark_unsynced();
        assert!(cache.get(&NodeId::new("n1").unwrap()).is_err());
    }

    #[test]
    fn applies_events_in_order_and_reindexes() {
        let cache = DiscoveryCache::default();
        cache.replace(Snapshot::default());
        cache.apply(&event(1, EventKind::Registered, node("n1", &["a@1"])));
        cache.apply(&event(2, EventKind::Registered, node("n2", &["a@2", "b"])));
        let a = ServiceQuery::new("a").unwrap();
        assert_eq!(ids(&cache.find(&a).unwrap()), ["n1", "n2"]);
        assert_eq!(ids(&cache.find(&ServiceQuery::parse("a@2").unwrap()).unwrap()), ["n2"]);
        cache.apply(&event(3, EventKind::Updated, node("n2", &["b"])));
        assert_eq!(ids(&cache.find(&a).unwrap()), ["n1"]);
        // A replayed old event is ignored.
        cache.apply(&event(2, EventKind::Registered, node("n2", &["a@2", "b"])));
        assert_eq!(ids(&cache.find(&a).unwrap()), ["n1"]);
        cache.apply(&event(4, EventKind::Deregistered, node("n1", &["a@1"])));
        assert!(cache.find(&a).unwrap().is_empty());
        assert_eq!(cache.revision(), Revision(4));
    }

    #[test]
    fn replace_reports_the_difference() {
        let cache = DiscoveryCache::default();
        cache
            .replace(Snapshot { revision: Revision(1), nodes: vec![node("n1", &["a"]), node("n2", &["a"])] });
        let changes = cache
            .replace(Snapshot { revision: Revision(9), nodes: vec![node("n2", &["b"]), node("n3", &["a"])] });
        let got: Vec<_> = changes.iter().map(|e| (e.kind, e.node.node_id.as_str(), e.reason)).collect();
        assert_eq!(
            got,
            [
                (EventKind::Updated, "n2", None),
                (EventKind::Registered, "n3", None),
                (EventKind::Deregistered, "n1", Some(DeregisterReason::Unknown)),
            ]
        );
        assert!(changes.iter().all(|e| e.revision == Revision(9)));
        assert_eq!(ids(&cache.nodes().unwrap()), ["n2", "n3"]);
    }
}
