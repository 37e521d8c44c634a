//! Change events, revisions and the items a watch stream yields.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::node::NodeInfo;

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
