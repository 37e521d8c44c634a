//! Nodes: what a registration carries and what reads return.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::error::{Error, Result};
use crate::name::NodeId;
use crate::service::{Metadata, ServiceInfo, dedup_services, validate_metadata, validate_services};

/// Shortest heartbeat TTL a registration may carry.
pub const MIN_TTL: Duration = Duration::from_millis(100);
/// Longest heartbeat TTL a registration may carry (one day).
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// A node's self-reported health (the statuses of the registry SDK).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NodeStatus {
    /// Serving traffic.
    #[default]
    Up,
    /// Alive but not serving.
    Down,
    /// Starting, not ready yet.
    Starting,
    /// Shutting down, draining.
    Stopping,
}

impl NodeStatus {
    /// The wire name (`UP`, `DOWN`, `STARTING`, `STOPPING`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "UP",
            Self::Down => "DOWN",
            Self::Starting => "STARTING",
            Self::Stopping => "STOPPING",
        }
    }

    /// True for `UP`: the only status that should receive traffic.
    pub fn is_healthy(self) -> bool {
        self == Self::Up
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NodeStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "UP" => Ok(Self::Up),
            "DOWN" => Ok(Self::Down),
            "STARTING" => Ok(Self::Starting),
            "STOPPING" => Ok(Self::Stopping),
            _ => Err(Error::invalid("status", format!("{s:?} is not one of UP, DOWN, STARTING, STOPPING"))),
        }
    }
}

/// A node as stored in the registry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Unique id of the node.
    pub node_id: NodeId,
    /// Where the node is reached.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "10.0.0.7:8080"))]
    pub address: Address,
    /// Services the node provides.
    pub services: Vec<ServiceInfo>,
    /// Milliseconds since the epoch of the last heartbeat or update (Titan's `timestamp`).
    #[serde(rename = "timestamp")]
    pub timestamp_ms: u64,
    /// Milliseconds since the epoch when this registration began.
    #[serde(default, rename = "registeredAt")]
    pub registered_at_ms: u64,
    /// Self-reported status.
    #[serde(default)]
    pub status: NodeStatus,
    /// Node-level labels.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// The heartbeat TTL the node registered with, in milliseconds.
    #[serde(default)]
    pub ttl_ms: u64,
}

/// The metadata key of a health check's failure description, present while the check holds the
/// node `DOWN` (written by the registry's checks; see `muster_api::check`).
pub const CHECK_OUTPUT: &str = "check.output";

/// The metadata key of when a health check's verdict began holding the node `DOWN` (milliseconds
/// since the epoch, written with [`CHECK_OUTPUT`] and kept with it).
pub const CHECK_SINCE: &str = "check.since";

/// The metadata key of a node's health check kind: a node without it asks for no check.
pub const CHECK_TYPE: &str = "check.type";

impl NodeInfo {
    /// True when the node provides a service satisfying `query`.
    pub fn provides(&self, query: &crate::service::ServiceQuery) -> bool {
        query.matches_any(&self.services)
    }

    /// The check's failure description while a health check holds the node down (`DOWN` with
    /// [`CHECK_OUTPUT`] in its metadata).
    pub fn check_verdict(&self) -> Option<&String> {
        (self.status == NodeStatus::Down).then(|| self.metadata.get(CHECK_OUTPUT)).flatten()
    }

    /// True when a health check holds the node down (see [`NodeInfo::check_verdict`]).
    pub fn held_by_check(&self) -> bool {
        self.check_verdict().is_some()
    }

    /// The metadata carrying the check's verdict ([`CHECK_OUTPUT`], [`CHECK_SINCE`]) while a health
    /// check holds the node down: what [`NodeInfo::keep_check_verdict`] takes.
    pub fn held_check(&self) -> Option<&Metadata> {
        self.held_by_check().then_some(&self.metadata)
    }

    /// Keeps the verdict in `held` — the stored node's [`NodeInfo::held_check`] — on this node,
    /// which a write is about to store: it stays `DOWN` with the check's failure description and
    /// the time it began, as long as it still asks for a check. Every store applies it to
    /// registrations and updates inside its atomic write; only the check's own update
    /// ([`NodeUpdate::as_check_verdict`]) may lift it.
    pub fn keep_check_verdict(&mut self, held: Option<&Metadata>) {
        // A write that drops the check drops its verdict too: nothing would ever lift it.
        let Some(held) = held else { return };
        if let Some(output) = held.get(CHECK_OUTPUT)
            && self.metadata.contains_key(CHECK_TYPE)
        {
            self.status = NodeStatus::Down;
            self.metadata.insert(CHECK_OUTPUT.to_owned(), output.clone());
            match held.get(CHECK_SINCE) {
                Some(since) => self.metadata.insert(CHECK_SINCE.to_owned(), since.clone()),
                None => self.metadata.remove(CHECK_SINCE),
            };
        }
    }

    /// True when the parts a watcher cares about (address, services, status, metadata) differ.
    pub fn differs_from(&self, other: &NodeInfo) -> bool {
        self.address != other.address
            || self.services != other.services
            || self.status != other.status
            || self.metadata != other.metadata
    }
}

/// A condition on the stored node at the moment of a write, checked inside the store's atomic
/// write (like the service limit): what an access decision was made on. When the node changed in
/// between, the write is refused with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) and
/// changes nothing; the caller decides again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredServices {
    /// No live node of that id.
    Absent,
    /// A live node providing services of exactly these names.
    Names(std::collections::BTreeSet<String>),
}

impl StoredServices {
    /// What `node` (as stored, if any) provides.
    pub fn of(node: Option<&NodeInfo>) -> Self {
        match node {
            None => Self::Absent,
            Some(node) => Self::Names(node.services.iter().map(|s| s.name.clone()).collect()),
        }
    }

    /// True when `node` (as stored now, if any) still matches.
    pub fn holds_for<'a>(&self, node: Option<impl IntoIterator<Item = &'a str>>) -> bool {
        match (self, node) {
            (Self::Absent, None) => true,
            (Self::Names(names), Some(services)) => {
                let now: std::collections::BTreeSet<&str> = services.into_iter().collect();
                now.len() == names.len() && names.iter().all(|n| now.contains(n.as_str()))
            }
            _ => false,
        }
    }

    /// The wire form the Redis scripts compare: `-` for absent, else the names sorted and joined
    /// by `,`.
    pub fn to_wire(&self) -> String {
        match self {
            Self::Absent => "-".to_owned(),
            Self::Names(names) => names.iter().map(String::as_str).collect::<Vec<_>>().join(","),
        }
    }

    /// The refusal when the condition no longer holds.
    pub fn conflict(node_id: &NodeId) -> crate::Error {
        crate::Error::new(
            crate::ErrorKind::Conflict,
            format!("node `{node_id}` changed while the write was being checked; send it again"),
        )
    }
}

/// What a store checks inside a write's atomic step — a service limit and the stored node the
/// write was allowed on — so that concurrent writers cannot slip between the check and the write;
/// a write that fails one changes nothing. Held by [`Registration`] and [`NodeUpdate`] alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct WriteConditions {
    /// Most nodes a service may have.
    service_limit: Option<usize>,
    /// The stored node the write was allowed on.
    if_stored: Option<StoredServices>,
}

/// The builder and getters of [`WriteConditions`] on a write type with a `conditions` field.
macro_rules! write_conditions {
    ($write:ident) => {
        impl $write {
            /// Refuses the write with `LimitExceeded`, changing nothing, when it would add the node
            /// to a service that already has `max` other nodes. The store checks inside the write
            /// itself, so concurrent writers never push a service past the limit; a node already
            /// providing the service may always heartbeat, re-register and update.
            #[must_use]
            pub fn with_service_limit(mut self, max: usize) -> Self {
                self.conditions.service_limit = Some(max);
                self
            }

            /// The limit set with `with_service_limit`.
            pub fn service_limit(&self) -> Option<usize> {
                self.conditions.service_limit
            }

            /// Makes the write conditional on the stored node (see [`StoredServices`]; `None` for
            /// no condition): checked by the store inside its atomic write.
            #[must_use]
            pub fn if_stored(mut self, condition: impl Into<Option<StoredServices>>) -> Self {
                self.conditions.if_stored = condition.into();
                self
            }

            /// The condition set with `if_stored`.
            pub fn stored_condition(&self) -> Option<&StoredServices> {
                self.conditions.if_stored.as_ref()
            }
        }
    };
}

write_conditions!(Registration);
write_conditions!(NodeUpdate);

/// A validated register-or-heartbeat request.
///
/// Built only through [`Registration::new`], so a backend receiving one knows every field passed
/// validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Node to create or refresh.
    node_id: NodeId,
    /// Its address.
    address: Address,
    /// Its complete service list.
    services: Vec<ServiceInfo>,
    /// Its status.
    status: NodeStatus,
    /// Node-level labels.
    metadata: Metadata,
    /// How long the node stays active without another heartbeat.
    ttl: Duration,
    /// What the store checks inside the write.
    conditions: WriteConditions,
}

impl Registration {
    /// Validates a registration: id and address by Muster's rules (also when they were read in
    /// their wire form), services (see [`validate_services`]) and TTL within
    /// [`MIN_TTL`]..=[`MAX_TTL`].
    pub fn new(node_id: NodeId, address: Address, services: Vec<ServiceInfo>, ttl: Duration) -> Result<Self> {
        NodeId::new(node_id.as_str())?;
        Address::parse(address.as_str())?;
        validate_services(&services)?;
        let services = dedup_services(services);
        validate_ttl(ttl)?;
        Ok(Self {
            node_id,
            address,
            services,
            status: NodeStatus::Up,
            metadata: Metadata::new(),
            ttl,
            conditions: WriteConditions::default(),
        })
    }

    /// Sets the status.
    #[must_use]
    pub fn with_status(mut self, status: NodeStatus) -> Self {
        self.status = status;
        self
    }

    /// Sets node-level metadata (validated).
    pub fn with_metadata(mut self, metadata: Metadata) -> Result<Self> {
        validate_metadata(&metadata)?;
        self.metadata = metadata;
        Ok(self)
    }

    /// The node id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }
    /// The address.
    pub fn address(&self) -> &Address {
        &self.address
    }
    /// The services.
    pub fn services(&self) -> &[ServiceInfo] {
        &self.services
    }
    /// The status.
    pub fn status(&self) -> NodeStatus {
        self.status
    }
    /// The node-level metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    /// The heartbeat TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The node as it will be stored, given the registration start and current times.
    pub fn to_node(&self, registered_at_ms: u64, now_ms: u64) -> NodeInfo {
        NodeInfo {
            node_id: self.node_id.clone(),
            address: self.address.clone(),
            services: self.services.clone(),
            timestamp_ms: now_ms,
            registered_at_ms,
            status: self.status,
            metadata: self.metadata.clone(),
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Checks a heartbeat TTL against [`MIN_TTL`] and [`MAX_TTL`].
pub fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(Error::invalid(
            "heartbeat ttl",
            format!("{} ms is outside {}..={} ms", ttl.as_millis(), MIN_TTL.as_millis(), MAX_TTL.as_millis()),
        ));
    }
    Ok(())
}

/// A partial, validated change to an existing node. Fields left `None` are kept.
///
/// An update does not extend the node's life: only heartbeats do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUpdate {
    /// New address.
    address: Option<Address>,
    /// New complete service list.
    services: Option<Vec<ServiceInfo>>,
    /// New status.
    status: Option<NodeStatus>,
    /// New node-level metadata (replaces the old map).
    metadata: Option<Metadata>,
    /// Written by the registry's health check: may lift a check's verdict.
    check_verdict: bool,
    /// What the store checks inside the write.
    conditions: WriteConditions,
}

impl NodeUpdate {
    /// An update that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Changes the address.
    #[must_use]
    pub fn address(mut self, address: Address) -> Self {
        self.address = Some(address);
        self
    }
    /// Replaces the services (validated).
    pub fn services(mut self, services: Vec<ServiceInfo>) -> Result<Self> {
        validate_services(&services)?;
        self.services = Some(dedup_services(services));
        Ok(self)
    }
    /// Changes the status.
    #[must_use]
    pub fn status(mut self, status: NodeStatus) -> Self {
        self.status = Some(status);
        self
    }
    /// Replaces the node-level metadata (validated).
    pub fn metadata(mut self, metadata: Metadata) -> Result<Self> {
        validate_metadata(&metadata)?;
        self.metadata = Some(metadata);
        Ok(self)
    }

    /// Marks the update as a health check's verdict: the one write that may lift a check's
    /// `DOWN` (every other keeps it, see [`NodeInfo::keep_check_verdict`]).
    #[must_use]
    pub fn as_check_verdict(mut self) -> Self {
        self.check_verdict = true;
        self
    }

    /// True for a health check's verdict ([`NodeUpdate::as_check_verdict`]).
    pub fn is_check_verdict(&self) -> bool {
        self.check_verdict
    }

    /// The new address, if the update names one.
    pub fn new_address(&self) -> Option<&Address> {
        self.address.as_ref()
    }
    /// The new service list, if the update names one.
    pub fn new_services(&self) -> Option<&[ServiceInfo]> {
        self.services.as_deref()
    }
    /// The new status, if the update names one.
    pub fn new_status(&self) -> Option<NodeStatus> {
        self.status
    }
    /// The new node-level metadata, if the update names it.
    pub fn new_metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// Applies the update to `node`, returning true when anything changed. A check's verdict on
    /// `node` is kept unless this is the check's own update.
    pub fn apply(&self, node: &mut NodeInfo) -> bool {
        let before = node.clone();
        if let Some(a) = &self.address {
            node.address = a.clone();
        }
        if let Some(s) = &self.services {
            node.services = s.clone();
        }
        if let Some(s) = self.status {
            node.status = s;
        }
        if let Some(m) = &self.metadata {
            node.metadata = m.clone();
        }
        if !self.check_verdict {
            node.keep_check_verdict(before.held_check());
        }
        node.differs_from(&before)
    }

    /// True when the update names no field.
    pub fn is_empty(&self) -> bool {
        self.address.is_none() && self.services.is_none() && self.status.is_none() && self.metadata.is_none()
    }
}

#[cfg(test)]
mod tests;
