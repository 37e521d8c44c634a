//! The stored form of a node: what a [`NodeInfo`] holds, in less memory.
//!
//! The node id is the map key (not repeated); service names and versions are interned (a fleet
//! has few distinct ones, shared by every node that offers them); empty metadata costs one word.
//! Readers get a [`NodeInfo`] built from it.

use std::collections::HashSet;
use std::sync::Arc;

use muster_core::{Address, Metadata, NodeId, NodeInfo, NodeStatus, ServiceInfo, ServiceQuery};

/// Interned strings (service names and versions), pruned of unused ones as it grows.
#[derive(Debug, Default)]
pub(crate) struct Strings {
    set: HashSet<Arc<str>>,
    /// New strings since the last prune.
    added: usize,
}

impl Strings {
    fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.set.get(text) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(text);
        self.set.insert(Arc::clone(&shared));
        self.added += 1;
        // Amortized: prune once the additions since the last prune are half the set (so unused
        // strings never outnumber used ones for long), and at least 256.
        if self.added >= 256 && self.added * 2 >= self.set.len() {
            // `shared` is held here, so the new string survives.
            self.set.retain(|s| Arc::strong_count(s) > 1);
            self.added = 0;
        }
        shared
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

/// One service of a stored node.
#[derive(Debug, Clone)]
struct StoredService {
    name: Arc<str>,
    version: Option<Arc<str>>,
    metadata: Option<Box<Metadata>>,
    weight: Option<u32>,
}

/// A node as the embedded store keeps it.
#[derive(Debug, Clone)]
pub(crate) struct StoredNode {
    address: Address,
    services: Box<[StoredService]>,
    metadata: Option<Box<Metadata>>,
    pub(crate) timestamp_ms: u64,
    pub(crate) registered_at_ms: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) status: NodeStatus,
}

fn boxed(metadata: &Metadata) -> Option<Box<Metadata>> {
    (!metadata.is_empty()).then(|| Box::new(metadata.clone()))
}

impl StoredNode {
    pub(crate) fn new(node: &NodeInfo, strings: &mut Strings) -> Self {
        let services = node
            .services
            .iter()
            .map(|s| StoredService {
                name: strings.intern(&s.name),
                version: s.version.as_deref().map(|v| strings.intern(v)),
                metadata: boxed(&s.metadata),
                weight: s.weight,
            })
            .collect();
        Self {
            address: node.address.clone(),
            services,
            metadata: boxed(&node.metadata),
            timestamp_ms: node.timestamp_ms,
            registered_at_ms: node.registered_at_ms,
            ttl_ms: node.ttl_ms,
            status: node.status,
        }
    }

    /// The node as readers see it.
    pub(crate) fn to_node(&self, id: &NodeId) -> NodeInfo {
        NodeInfo {
            node_id: id.clone(),
            address: self.address.clone(),
            services: self
                .services
                .iter()
                .map(|s| ServiceInfo {
                    name: s.name.to_string(),
                    version: s.version.as_deref().map(str::to_owned),
                    metadata: s.metadata.as_deref().cloned().unwrap_or_default(),
                    weight: s.weight,
                })
                .collect(),
            timestamp_ms: self.timestamp_ms,
            registered_at_ms: self.registered_at_ms,
            status: self.status,
            metadata: self.metadata.as_deref().cloned().unwrap_or_default(),
            ttl_ms: self.ttl_ms,
        }
    }

    /// The names of its services.
    pub(crate) fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| &*s.name)
    }

    /// True when it provides a service satisfying `query`.
    pub(crate) fn provides(&self, query: &ServiceQuery) -> bool {
        self.services
            .iter()
            .any(|s| &*s.name == query.name() && query.version().matches(s.version.as_deref()))
    }

    /// [`NodeInfo::held_check`] without building a `NodeInfo`.
    pub(crate) fn held_check(&self) -> Option<&Metadata> {
        if self.status != NodeStatus::Down {
            return None;
        }
        self.metadata.as_deref().filter(|m| m.contains_key(muster_core::CHECK_OUTPUT))
    }

    /// True when the parts a watcher cares about (address, services, status, metadata) differ from
    /// `node`'s ([`NodeInfo::differs_from`] without building a `NodeInfo`).
    pub(crate) fn differs_from(&self, node: &NodeInfo) -> bool {
        let empty = Metadata::new();
        let same_services = self.services.len() == node.services.len()
            && self.services.iter().zip(&node.services).all(|(a, b)| {
                *a.name == *b.name
                    && a.version.as_deref() == b.version.as_deref()
                    && a.metadata.as_deref().unwrap_or(&empty) == &b.metadata
                    && a.weight == b.weight
            });
        self.address != node.address
            || !same_services
            || self.status != node.status
            || self.metadata.as_deref().unwrap_or(&empty) != &node.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, services: Vec<ServiceInfo>, metadata: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            node_id: NodeId::new(id).unwrap(),
            address: Address::parse("[::1]:8080").unwrap(),
            services,
            timestamp_ms: 3,
            registered_at_ms: 2,
            status: NodeStatus::Starting,
            metadata: metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ttl_ms: 1500,
        }
    }

    #[test]
    fn round_trips_and_compares_like_node_info() {
        let mut strings = Strings::default();
        let rich = ServiceInfo::new("users", Some("1.2.0"))
            .unwrap()
            .with_metadata([("zone".to_owned(), "eu".to_owned())].into())
            .unwrap()
            .with_weight(3);
        let nodes = [
            node("a", vec![], &[]),
            node("b", vec![rich.clone(), ServiceInfo::new("auth", None).unwrap()], &[("k", "v")]),
            node("c", vec![ServiceInfo::new("users", Some("1.2.0")).unwrap()], &[]),
        ];
        for original in &nodes {
            let stored = StoredNode::new(original, &mut strings);
            assert_eq!(&stored.to_node(&original.node_id), original);
            for other in &nodes {
                assert_eq!(
                    stored.differs_from(other),
                    original.differs_from(other),
                    "{original:?} vs {other:?}"
                );
            }
            let query = ServiceQuery::parse("users@^1").unwrap();
            assert_eq!(stored.provides(&query), original.provides(&query));
        }
        // "users" and "1.2.0" are held once; "auth" too.
        assert_eq!(strings.len(), 3);
    }

    #[test]
    fn unused_strings_are_pruned() {
        let mut strings = Strings::default();
        let kept = strings.intern("kept");
        for n in 0..10_000 {
            drop(strings.intern(&format!("version-{n}")));
        }
        assert!(strings.len() < 600, "{} strings held", strings.len());
        assert!(Arc::ptr_eq(&kept, &strings.intern("kept")), "strings in use survive");
    }
}
