//! A `muster serve` registry as a [`Registry`]: code written against the registry contract (the
//! embedded agent, a Netron peer's discovery) runs unchanged against a registry server, through
//! this client (its token, TLS settings and timeouts).
//!
//! Each call is one request: `heartbeat` is `PUT /v1/nodes/{id}`, `refresh` is
//! `PUT /v1/nodes/{id}/heartbeat`, `update` is `PATCH`, `deregister` is `DELETE`, lists and finds
//! read `GET /v1/nodes`, and `watch` is one `GET /v1/watch` stream (resumed by the caller with
//! [`WatchStart::After`], which the server answers from its event log or with a resync). A
//! write's service limit and its condition on the stored node are not carried: the server applies
//! its own.

use futures::StreamExt;
use muster_api::v1::{RegisterRequest, UpdateRequest};
use muster_core::{
    DeregisterReason, Error, ErrorKind, HeartbeatOutcome, NodeId, NodeInfo, NodeStatus, NodeUpdate,
    Registration, Registry, Result, Revision, ServiceQuery, WatchStart, WatchStream,
};

use crate::{Client, ClientError, WatchOptions};

/// A registry server reached over HTTP, as a [`Registry`].
#[derive(Debug, Clone)]
pub struct RemoteRegistry {
    client: Client,
}

impl RemoteRegistry {
    /// The registry `client` talks to.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client requests go through.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// A client error in the registry contract's terms: the kinds retry and failover logic read.
fn store_error(error: ClientError) -> Error {
    let kind = match &error {
        ClientError::Api { status: 404, .. } => ErrorKind::NotFound,
        ClientError::Api { status: 409, .. } => ErrorKind::Conflict,
        ClientError::Api { status: 429, .. } => ErrorKind::LimitExceeded,
        ClientError::Api { status, .. } if *status >= 500 => ErrorKind::Unavailable,
        ClientError::Api { .. } | ClientError::InvalidInput(_) => ErrorKind::InvalidInput,
        ClientError::Connect { .. } | ClientError::Timeout { .. } | ClientError::Disconnected { .. } => {
            ErrorKind::Unavailable
        }
        ClientError::Unreadable { .. } => ErrorKind::Internal,
    };
    Error::new(kind, error.to_string()).with_source(error)
}

#[async_trait::async_trait]
impl Registry for RemoteRegistry {
    /// `PUT /v1/nodes/{id}`. The server does not say whether a refresh changed anything, so an
    /// existing node's outcome is `Updated` (watchers see the server's own events, not this one)
    /// and no revision is reported.
    async fn heartbeat(&self, registration: Registration) -> Result<HeartbeatOutcome> {
        let request = RegisterRequest {
            address: registration.address().to_string(),
            services: registration.services().to_vec(),
            metadata: registration.metadata().clone(),
            status: Some(registration.status()),
            ttl_ms: Some(u64::try_from(registration.ttl().as_millis()).unwrap_or(u64::MAX)),
            check: None,
        };
        let url = self.client.url(&["v1", "nodes", registration.node_id().as_str()]);
        let answer: muster_api::v1::RegisterResponse =
            self.client.send(self.client.inner.http.put(url).json(&request)).await.map_err(store_error)?;
        let change =
            if answer.created { muster_core::Change::Registered } else { muster_core::Change::Updated };
        Ok(HeartbeatOutcome { change, node: answer.node, revision: None })
    }

    /// `PUT /v1/nodes/{id}/heartbeat`; `NotFound` when the node is not active. Reported as
    /// `Unchanged` (the answer does not say whether a status changed).
    async fn refresh(&self, node_id: &NodeId, status: Option<NodeStatus>) -> Result<HeartbeatOutcome> {
        let url = self.client.url(&["v1", "nodes", node_id.as_str(), "heartbeat"]);
        let body = muster_api::v1::HeartbeatRequest { status };
        let node: NodeInfo =
            self.client.send(self.client.inner.http.put(url).json(&body)).await.map_err(store_error)?;
        Ok(HeartbeatOutcome { change: muster_core::Change::Unchanged, node, revision: None })
    }

    /// `PATCH /v1/nodes/{id}`.
    async fn update(&self, node_id: &NodeId, update: NodeUpdate) -> Result<NodeInfo> {
        let request = UpdateRequest {
            address: update.new_address().map(ToString::to_string),
            services: update.new_services().map(<[_]>::to_vec),
            metadata: update.new_metadata().cloned(),
            status: update.new_status(),
        };
        let url = self.client.url(&["v1", "nodes", node_id.as_str()]);
        self.client.send(self.client.inner.http.patch(url).json(&request)).await.map_err(store_error)
    }

    /// `DELETE /v1/nodes/{id}`: the server records a graceful deregistration, whatever `_reason` says.
    async fn deregister(&self, node_id: &NodeId, _reason: DeregisterReason) -> Result<bool> {
        self.client.deregister(node_id.as_str()).await.map_err(store_error)
    }

    /// The condition is not carried (the server decides on its own, atomically).
    async fn deregister_if(
        &self,
        node_id: &NodeId,
        reason: DeregisterReason,
        _condition: &muster_core::StoredServices,
    ) -> Result<bool> {
        self.deregister(node_id, reason).await
    }

    async fn get(&self, node_id: &NodeId) -> Result<Option<NodeInfo>> {
        self.client.node(node_id.as_str()).await.map_err(store_error)
    }

    async fn is_active(&self, node_id: &NodeId) -> Result<bool> {
        Ok(self.list_active().await?.iter().any(|n| n.node_id == *node_id))
    }

    async fn list_active(&self) -> Result<Vec<NodeInfo>> {
        Ok(self.client.nodes(false).await.map_err(store_error)?.nodes)
    }

    async fn list_all(&self) -> Result<Vec<NodeInfo>> {
        Ok(self.client.nodes(true).await.map_err(store_error)?.nodes)
    }

    async fn find(&self, query: &ServiceQuery) -> Result<Vec<NodeInfo>> {
        Ok(self.find_at(query).await?.1)
    }

    /// The active nodes and their revision from one answer, filtered here.
    async fn find_at(&self, query: &ServiceQuery) -> Result<(Revision, Vec<NodeInfo>)> {
        let list = self.client.nodes(false).await.map_err(store_error)?;
        Ok((list.revision, list.nodes.into_iter().filter(|n| n.provides(query)).collect()))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.client.nodes(false).await.map_err(store_error)?.revision)
    }

    async fn watch(&self, start: WatchStart) -> Result<WatchStream> {
        let options = match start {
            WatchStart::Now => WatchOptions::default(),
            WatchStart::After(revision) => WatchOptions { after: Some(revision), ..WatchOptions::default() },
            WatchStart::Snapshot => WatchOptions { snapshot: true, ..WatchOptions::default() },
        };
        let events = self.client.watch(&options).await.map_err(store_error)?;
        // The server ends its streams cleanly when it stops; for a watcher that did not ask for
        // the end, that is a break: it ends with an error, so every caller resumes.
        let base = self.client.base_url().to_owned();
        let ended = futures::stream::once(async move {
            Err(Error::unavailable(format!("{base}: the registry server closed the watch")))
        });
        Ok(events.map(|item| item.map_err(store_error)).chain(ended).boxed())
    }
}
