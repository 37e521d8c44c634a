//! Change events, revisions and the items a watch stream yields.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::name::NodeId;
use crate::node::NodeInfo;
use crate::service::ServiceInfo;

/// A position in a registry's event history. Strictly increasing per registry; `Revision(0)` is
/// "before the first event".
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl Revision {
    /// Before any event.
    pub const ZERO: Revision = Revision(0);

    /// The revision after this one.
    #[must_use]
    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What happened to a node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The node appeared (first heartbeat, or first after it had gone).
    #[serde(rename = "NODE_REGISTERED")]
    Registered,
    /// Its address, services, status or metadata changed.
    #[serde(rename = "NODE_UPDATED")]
    Updated,
    /// It left or was removed.
    #[serde(rename = "NODE_DEREGISTERED")]
    Deregistered,
}

/// Why a node was deregistered.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeregisterReason {
    /// The node asked to leave.
    Graceful,
    /// It stopped heartbeating and its TTL ran out.
    Expired,
    /// An operator or the registry removed it.
    Evicted,
    /// It was gone when a watcher resynchronised; the reason was not observed.
    Unknown,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 3] = [EventKind::Registered, EventKind::Updated, EventKind::Deregistered];

    /// The short name used by the SSE event names, the CLI, the Redis event log:
    /// `registered`, `updated`, `deregistered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Updated => "updated",
            Self::Deregistered => "deregistered",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = crate::Error;

    /// The short name ([`EventKind::as_str`]).
    fn from_str(text: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| crate::Error::invalid("type", format!("unknown event type {text:?}")))
    }
}

impl DeregisterReason {
    /// Every reason.
    pub const ALL: [DeregisterReason; 4] = [
        DeregisterReason::Graceful,
        DeregisterReason::Expired,
        DeregisterReason::Evicted,
        DeregisterReason::Unknown,
    ];

    /// The name used in JSON, the CLI and the Redis event log: `graceful`, `expired`, `evicted`,
    /// `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Graceful => "graceful",
            Self::Expired => "expired",
            Self::Evicted => "evicted",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DeregisterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeregisterReason {
    type Err = crate::Error;

    /// The name ([`DeregisterReason::as_str`]).
    fn from_str(text: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| crate::Error::invalid("reason", format!("unknown reason {text:?}")))
    }
}

/// One change to the registry, at one revision.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryEvent {
    /// Position in the registry's history.
    pub revision: Revision,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Why, for [`EventKind::Deregistered`]; `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeregisterReason>,
    /// The node after the change (for a deregistration, as it was last known).
    pub node: NodeInfo,
    /// Milliseconds since the epoch when the change happened.
    #[serde(rename = "timestamp")]
    pub timestamp_ms: u64,
    /// For an update that changed the node's services: what it provided before, so a watcher of
    /// one service learns that a node left it without having seen the node join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_services: Option<Vec<ServiceInfo>>,
}

impl DiscoveryEvent {
    /// Records `before` as the node's previous services when they differ from its current ones.
    #[must_use]
    pub fn with_previous_services(mut self, before: &[ServiceInfo]) -> Self {
        self.previous_services = (before != self.node.services.as_slice()).then(|| before.to_vec());
        self
    }

    /// True when the node provides a service named `name` after the change.
    pub fn provides(&self, name: &str) -> bool {
        self.node.services.iter().any(|s| s.name == name)
    }

    /// True when the node provided a service named `name` before the change (as far as the event
    /// tells: for a deregistration, its last known services; for an update, its previous ones).
    pub fn provided(&self, name: &str) -> bool {
        match &self.previous_services {
            Some(before) => before.iter().any(|s| s.name == name),
            None => self.kind != EventKind::Registered && self.provides(name),
        }
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Only changes made after the watch began.
    Now,
    /// Every change after this revision; if the registry no longer holds them all, the stream
    /// starts with [`WatchEvent::Resync`].
    After(Revision),
    /// A [`WatchEvent::Resync`] with the whole current state first, then every change after it.
    Snapshot,
}

/// The full set of active nodes at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The revision the snapshot reflects; events that follow have higher revisions.
    pub revision: Revision,
    /// Every active node at that revision.
    pub nodes: Vec<NodeInfo>,
}

/// An item of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// One change, in revision order.
    Event(DiscoveryEvent),
    /// The watcher must replace what it knows with this snapshot: either it asked for one, or the
    /// events it would have needed are gone (it resumed too far back, or fell too far behind).
    Resync(Snapshot),
    /// A change announced by a peer that does not write the registry's event log (a Titan node
    /// publishing on the pub/sub channel). It has no revision of its own — it carries the revision
    /// of the log when it was received — so it cannot be resumed from, and it is delivered
    /// best-effort.
    Peer(DiscoveryEvent),
}

impl WatchEvent {
    /// The revision after which the stream continues.
    pub fn revision(&self) -> Revision {
        match self {
            Self::Event(e) | Self::Peer(e) => e.revision,
            Self::Resync(s) => s.revision,
        }
    }
}

/// Narrows a watch to one service and keeps it coherent: a node that stops providing the service
/// (an update that drops it, a deregistration) still gets its last event through, so a watcher
/// learns that it left.
#[derive(Debug, Clone, Default)]
pub struct ServiceFilter {
    /// The service, or `None` for everything.
    service: Option<String>,
    /// Nodes currently known to provide it.
    members: std::collections::HashSet<NodeId>,
}

impl ServiceFilter {
    /// A filter for `service` (`None`: every event passes).
    pub fn new(service: Option<String>) -> Self {
        Self { service, members: std::collections::HashSet::new() }
    }

    /// True when `event` concerns the service, now or until just now.
    pub fn pass(&mut self, event: &DiscoveryEvent) -> bool {
        let Some(service) = &self.service else { return true };
        let provides = event.provides(service);
        let was_member = self.members.contains(&event.node.node_id) || event.provided(service);
        if provides && event.kind != EventKind::Deregistered {
            self.members.insert(event.node.node_id.clone());
        } else {
            self.members.remove(&event.node.node_id);
        }
        provides || was_member
    }

    /// Starts over from a snapshot: returns the nodes that provide the service.
    pub fn reset(&mut self, nodes: Vec<NodeInfo>) -> Vec<NodeInfo> {
        let Some(service) = &self.service else { return nodes };
        let nodes: Vec<_> =
            nodes.into_iter().filter(|n| n.services.iter().any(|s| &s.name == service)).collect();
        self.members = nodes.iter().map(|n| n.node_id.clone()).collect();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, ServiceInfo};

    fn event(kind: EventKind, id: &str, services: &[&str]) -> DiscoveryEvent {
        DiscoveryEvent {
            revision: Revision(1),
            kind,
            reason: None,
            node: NodeInfo {
                node_id: NodeId::new(id).unwrap(),
                address: Address::parse("h:1").unwrap(),
                services: services.iter().map(|s| ServiceInfo::new(*s, None).unwrap()).collect(),
                timestamp_ms: 0,
                registered_at_ms: 0,
                status: crate::NodeStatus::Up,
                metadata: Default::default(),
                ttl_ms: 1000,
            },
            timestamp_ms: 0,
            previous_services: None,
        }
    }

    #[test]
    fn names_round_trip_and_match_the_json() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json.as_str().unwrap(), format!("NODE_{}", kind.as_str().to_uppercase()));
        }
        for reason in DeregisterReason::ALL {
            assert_eq!(reason.as_str().parse::<DeregisterReason>().unwrap(), reason);
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        assert!("gone".parse::<DeregisterReason>().is_err());
        assert!("NODE_UPDATED".parse::<EventKind>().is_err());
    }

    #[test]
    fn service_filter_lets_a_leaving_node_through_once() {
        let mut filter = ServiceFilter::new(Some("users".into()));
        assert!(filter.pass(&event(EventKind::Registered, "a", &["users"])));
        assert!(!filter.pass(&event(EventKind::Registered, "b", &["orders"])));
        assert!(filter.pass(&event(EventKind::Updated, "a", &["orders"])), "a stopped providing users");
        assert!(!filter.pass(&event(EventKind::Updated, "a", &["orders"])), "and is no longer news");
        assert!(filter.pass(&event(EventKind::Registered, "c", &["users"])));
        assert!(filter.pass(&event(EventKind::Deregistered, "c", &["users"])));
        let kept = filter.reset(vec![
            event(EventKind::Registered, "d", &["users"]).node,
            event(EventKind::Registered, "e", &["x"]).node,
        ]);
        assert_eq!(kept.len(), 1);
        assert!(filter.pass(&event(EventKind::Deregistered, "d", &[])), "members come from the snapshot");
        let mut fresh = ServiceFilter::new(Some("users".into()));
        let moved = event(EventKind::Updated, "f", &["orders"]);
        assert!(!fresh.pass(&moved.clone()), "no previous services: not about users");
        let before = [ServiceInfo::new("users", None).unwrap()];
        assert!(
            fresh.pass(&moved.with_previous_services(&before)),
            "left users, joined before the watch began"
        );
        let mut all = ServiceFilter::new(None);
        assert!(all.pass(&event(EventKind::Registered, "b", &["orders"])));
    }
}
