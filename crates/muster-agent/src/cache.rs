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

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use muster_core::{
    DiscoveryEvent, Error, Mirror, NodeId, NodeInfo, Result, Revision, ServiceQuery, Snapshot,
};

/// The agent's local view of the registry (the watch component's [`Mirror`]). Lookups take a read
/// lock and clone `Arc`s only.
#[derive(Debug, Default)]
pub struct DiscoveryCache {
    /// The view; written only by the agent's watch task.
    state: RwLock<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// False until the first snapshot arrives and whenever the watch stream is broken.
    synced: bool,
    /// The nodes, as of the last event applied.
    mirror: Mirror,
}

impl DiscoveryCache {
    fn read(&self) -> RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The mirror, when synced.
    fn synced(&self) -> Result<RwLockReadGuard<'_, CacheState>> {
        let state = self.read();
        if !state.synced {
            return Err(Error::unavailable("discovery cache is not synced with the registry"));
        }
        Ok(state)
    }

    /// True when the cache reflects a connected watch stream.
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// The revision of the last change the cache holds.
    pub fn revision(&self) -> Revision {
        self.read().mirror.revision()
    }

    /// Active nodes providing a service that satisfies `query`, ordered by node id.
    ///
    /// Fails with an `Unavailable` error while the cache is not synced.
    pub fn find(&self, query: &ServiceQuery) -> Result<Vec<Arc<NodeInfo>>> {
        Ok(self.synced()?.mirror.find(query))
    }

    /// One node, if the cache holds it. Fails while the cache is not synced.
    pub fn get(&self, node_id: &NodeId) -> Result<Option<Arc<NodeInfo>>> {
        Ok(self.synced()?.mirror.get(node_id).cloned())
    }

    /// Every node the cache holds, ordered by node id. Fails while the cache is not synced.
    pub fn nodes(&self) -> Result<Vec<Arc<NodeInfo>>> {
        Ok(self.synced()?.mirror.nodes())
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
        self.write().mirror.apply(event);
    }

    /// Applies a peer event (one without a revision of its own), whatever its revision.
    pub(crate) fn apply_peer(&self, event: &DiscoveryEvent) {
        self.write().mirror.apply_change(event);
    }

    /// Replaces the contents with a snapshot and returns the changes from the old contents to the
    /// new, as events at the snapshot's revision (so handlers miss nothing across a gap).
    pub(crate) fn replace(&self, snapshot: Snapshot) -> Vec<DiscoveryEvent> {
        let mut state = self.write();
        state.synced = true;
        state.mirror.replace(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_testkit::conformance::node_info as node;

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
}
