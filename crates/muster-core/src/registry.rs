//! The `Registry` contract every backend implements.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;

use crate::error::Result;
use crate::event::{DeregisterReason, Revision, WatchEvent, WatchStart};
use crate::name::NodeId;
use crate::node::{NodeInfo, NodeUpdate, Registration};
use crate::service::ServiceQuery;

/// The stream a watch returns. It ends only when the registry shuts down; an `Err` item means the
/// connection to the store broke and the caller should watch again from its last revision.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// What a register-or-heartbeat did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The node was not active and now is.
    Registered,
    /// It was active and its address, services, status or metadata changed.
    Updated,
    /// It was active and nothing watchers see changed; only its deadline moved. No event.
    Unchanged,
}

/// The result of [`Registry::heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// What changed.
    pub change: Change,
    /// The node as stored now.
    pub node: NodeInfo,
    /// The revision of the event this produced, or `None` when nothing changed.
    pub revision: Option<Revision>,
}

/// The registry contract: the only way code above a store touches registry state.
///
/// A node is *active* from a heartbeat until its TTL runs out without another one. Every change
/// produces exactly one event with a strictly increasing [`Revision`]; heartbeats that change nothing
/// produce none. All methods validate their input and leave state untouched when they fail.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers the node or refreshes its heartbeat, atomically, with the registration's values.
    async fn heartbeat(&self, registration: Registration) -> Result<HeartbeatOutcome>;

    /// Heartbeats an active node with its stored values, optionally changing its status, atomically:
    /// fails with `NotFound` when the node is not active, so a node removed a moment earlier is never
    /// brought back. A status change is an `Updated` event; otherwise there is none.
    async fn refresh(&self, node_id: &NodeId, status: Option<crate::NodeStatus>) -> Result<HeartbeatOutcome>;

    /// Changes parts of an active node without extending its life. Fails with `NotFound` when the
    /// node is not active.
    async fn update(&self, node_id: &NodeId, update: NodeUpdate) -> Result<NodeInfo>;

    /// Removes the node. Returns false when it was not there (no event then).
    async fn deregister(&self, node_id: &NodeId, reason: DeregisterReason) -> Result<bool>;

    /// [`Registry::deregister`] on a condition checked inside the store's atomic write: the stored
    /// node still matches what an access decision read of it ([`crate::StoredServices`]);
    /// otherwise `Conflict`, and nothing changes.
    async fn deregister_if(
        &self,
        node_id: &NodeId,
        reason: DeregisterReason,
        condition: &crate::StoredServices,
    ) -> Result<bool>;

    /// The node if it is stored, active or not.
    async fn get(&self, node_id: &NodeId) -> Result<Option<NodeInfo>>;

    /// True when the node is stored, active or not.
    async fn exists(&self, node_id: &NodeId) -> Result<bool> {
        Ok(self.get(node_id).await?.is_some())
    }

    /// True when the node is stored and its TTL has not run out.
    async fn is_active(&self, node_id: &NodeId) -> Result<bool>;

    /// Every active node, ordered by node id.
    async fn list_active(&self) -> Result<Vec<NodeInfo>>;

    /// Every stored node, including ones whose TTL ran out but that were not removed yet, ordered
    /// by node id.
    async fn list_all(&self) -> Result<Vec<NodeInfo>>;

    /// Active nodes providing a service that satisfies `query`, ordered by node id.
    async fn find(&self, query: &ServiceQuery) -> Result<Vec<NodeInfo>>;

    /// [`Registry::find`] with the revision the answer reflects (at least: the data may be a
    /// little newer when a backend cannot read both at once). Backends that can read both in one
    /// step override it.
    async fn find_at(&self, query: &ServiceQuery) -> Result<(Revision, Vec<NodeInfo>)> {
        let revision = self.current_revision().await?;
        Ok((revision, self.find(query).await?))
    }

    /// How many nodes list a service named `name` (any version). Backends answer from their service
    /// index without reading the nodes, so a node whose TTL ran out a moment ago may still count
    /// until it is removed: an upper bound, exact again once expiries are swept.
    async fn count_service(&self, name: &str) -> Result<usize> {
        Ok(self.find(&ServiceQuery::new(name)?).await?.len())
    }

    /// The revision of the latest event.
    async fn current_revision(&self) -> Result<Revision>;

    /// The backend's self-preservation, if it has one (the embedded store does); `None`: expiry
    /// is never paused.
    fn self_preservation(&self) -> Option<&dyn SelfPreservation> {
        None
    }

    /// How the processes sharing this backend elect the one that runs the fleet's background work,
    /// if they can share it (Redis does); `None`: the store is this process's own, which always
    /// leads.
    fn fleet(&self) -> Option<&dyn FleetLeadership> {
        None
    }

    /// The pub/sub channel this backend also announces changes on for other processes (Redis:
    /// Titan's channel), if it has one.
    fn channel(&self) -> Option<&dyn ChangeChannel> {
        None
    }

    /// A stream of changes from `start`; see [`WatchStart`].
    async fn watch(&self, start: WatchStart) -> Result<WatchStream>;

    /// Stops the store's background work and waits for it to finish (final writes, lease
    /// releases); watch streams end. Call once, when the process is done with the store.
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl<R: Registry + ?Sized> Registry for Arc<R> {
    async fn heartbeat(&self, registration: Registration) -> Result<HeartbeatOutcome> {
        (**self).heartbeat(registration).await
    }
    async fn refresh(&self, node_id: &NodeId, status: Option<crate::NodeStatus>) -> Result<HeartbeatOutcome> {
        (**self).refresh(node_id, status).await
    }
    async fn update(&self, node_id: &NodeId, update: NodeUpdate) -> Result<NodeInfo> {
        (**self).update(node_id, update).await
    }
    async fn deregister(&self, node_id: &NodeId, reason: DeregisterReason) -> Result<bool> {
        (**self).deregister(node_id, reason).await
    }
    async fn deregister_if(
        &self,
        node_id: &NodeId,
        reason: DeregisterReason,
        condition: &crate::StoredServices,
    ) -> Result<bool> {
        (**self).deregister_if(node_id, reason, condition).await
    }
    async fn get(&self, node_id: &NodeId) -> Result<Option<NodeInfo>> {
        (**self).get(node_id).await
    }
    async fn exists(&self, node_id: &NodeId) -> Result<bool> {
        (**self).exists(node_id).await
    }
    async fn is_active(&self, node_id: &NodeId) -> Result<bool> {
        (**self).is_active(node_id).await
    }
    async fn list_active(&self) -> Result<Vec<NodeInfo>> {
        (**self).list_active().await
    }
    async fn list_all(&self) -> Result<Vec<NodeInfo>> {
        (**self).list_all().await
    }
    async fn find(&self, query: &ServiceQuery) -> Result<Vec<NodeInfo>> {
        (**self).find(query).await
    }
    async fn find_at(&self, query: &ServiceQuery) -> Result<(Revision, Vec<NodeInfo>)> {
        (**self).find_at(query).await
    }
    async fn count_service(&self, name: &str) -> Result<usize> {
        (**self).count_service(name).await
    }
    async fn current_revision(&self) -> Result<Revision> {
        (**self).current_revision().await
    }
    async fn watch(&self, start: WatchStart) -> Result<WatchStream> {
        (**self).watch(start).await
    }
    async fn shutdown(&self) -> Result<()> {
        (**self).shutdown().await
    }
    fn self_preservation(&self) -> Option<&dyn SelfPreservation> {
        (**self).self_preservation()
    }
    fn fleet(&self) -> Option<&dyn FleetLeadership> {
        (**self).fleet()
    }
    fn channel(&self) -> Option<&dyn ChangeChannel> {
        (**self).channel()
    }
}

/// A backend that pauses expiry when many nodes stop heartbeating at once (a network partition
/// rather than a fleet of crashes), so the registry keeps them instead of emptying itself.
pub trait SelfPreservation: Send + Sync {
    /// True while expiry is paused.
    fn is_preserving(&self) -> bool;
    /// How many nodes were held back from expiring so far (each counted once per pause).
    fn held_back_total(&self) -> u64;
}

/// A backend several processes share: one of them at a time leads and runs the fleet's
/// background work (active health checks), so it runs once per fleet, not once per process.
pub trait FleetLeadership: Send + Sync {
    /// True while this process leads (on Redis: holds the sweeper lease).
    fn leads_fleet_tasks(&self) -> bool;
}

/// A backend that also announces each change on a pub/sub channel other processes read (Redis:
/// Titan's `titan:discovery:events`). An announcement can be refused while the write stands (a
/// Redis user without `PUBLISH`, as Titan tolerates it); readers of the channel then hear nothing.
pub trait ChangeChannel: Send + Sync {
    /// Changes written but not announced on the channel, since this process started.
    fn publish_failures_total(&self) -> u64;
}
