//! Muster's own API, under `/v1`.

use muster_core::{Metadata, NodeInfo, NodeStatus, Revision, ServiceInfo};
use serde::{Deserialize, Serialize};

/// `POST /v1/nodes` (generated id) or `PUT /v1/nodes/{id}` (chosen id, idempotent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// `host:port` (IPv6 in brackets).
    pub address: String,
    /// Services the node provides.
    pub services: Vec<ServiceInfo>,
    /// Node-level labels.
    #[serde(default)]
    pub metadata: Metadata,
    /// Initial status (default `UP`).
    #[serde(default)]
    pub status: Option<NodeStatus>,
    /// Heartbeat TTL in milliseconds (default: the server's).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// Answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    /// The node id to heartbeat with.
    pub id: String,
    /// The node as stored.
    pub node: NodeInfo,
    /// True when this call created the node (false: refreshed an existing one).
    pub created: bool,
}

/// `PUT /v1/nodes/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The node's current status (kept when absent).
    #[serde(default)]
    pub status: Option<NodeStatus>,
}

/// `PATCH /v1/nodes/{id}`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRequest {
    /// New `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// New service list.
    #[serde(default)]
    pub services: Option<Vec<ServiceInfo>>,
    /// New node-level labels.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// New status.
    #[serde(default)]
    pub status: Option<NodeStatus>,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeList {
    /// Revision of the registry when read.
    pub revision: Revision,
    /// The nodes, ordered by id.
    pub nodes: Vec<NodeInfo>,
}

/// One service in `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Distinct versions offered (unversioned instances are not listed here).
    pub versions: Vec<String>,
    /// Active instances.
    pub instances: usize,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceList {
    /// Revision of the registry when read.
    pub revision: Revision,
    /// Services ordered by name.
    pub services: Vec<ServiceSummary>,
}

/// One instance of a service: what a caller needs to reach it (the registry SDK's discovery fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Node id.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Host (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `http://host:port`.
    pub url: String,
    /// Health endpoint (`url` + the `health` metadata path, default `/health`).
    pub health: String,
    /// Service version, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Node status.
    pub status: NodeStatus,
    /// Node metadata merged with the service's own.
    pub metadata: Metadata,
    /// Weight for weighted balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Milliseconds since the epoch of the registration.
    pub registered_at: u64,
    /// Milliseconds since the epoch of the last heartbeat or update.
    pub last_heartbeat: u64,
}

/// `GET /v1/services/{name}/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceList {
    /// The service.
    pub service: String,
    /// Revision of the registry when read.
    pub revision: Revision,
    /// Matching instances, ordered by node id.
    pub instances: Vec<Instance>,
}

/// Builds the instance views of `node` for service `name` (one per matching service entry).
pub fn instances_of(node: &NodeInfo, matches: impl Fn(&ServiceInfo) -> bool) -> Vec<Instance> {
    node.services
        .iter()
        .filter(|s| matches(s))
        .map(|service| {
            let host = node.address.host_unbracketed().to_owned();
            let url = format!("http://{}", node.address);
            let mut metadata = node.metadata.clone();
            metadata.extend(service.metadata.clone());
            let health_path = metadata.get("health").cloned().unwrap_or_else(|| "/health".to_owned());
            Instance {
                id: node.node_id.to_string(),
                service: service.name.clone(),
                host,
                port: node.address.port(),
                health: format!("{url}{health_path}"),
                url,
                version: service.version.clone(),
                status: node.status,
                metadata,
                weight: service.weight,
                registered_at: node.registered_at_ms,
                last_heartbeat: node.timestamp_ms,
            }
        })
        .collect()
}

/// Data of the `resync` server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResyncData {
    /// The revision the nodes reflect; later events follow it.
    pub revision: Revision,
    /// Every active node (filtered by service when the watch is).
    pub nodes: Vec<NodeInfo>,
}
