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
    #[serde(deserialize_with = "strict_services")]
    pub services: Vec<ServiceInfo>,
    /// Node-level labels.
    #[serde(default)]
    pub metadata: Metadata,
    /// Initial status (default `UP`).
    #[serde(default)]
    pub status: Option<NodeStatus>,
    /// Heartbeat TTL in milliseconds (default: the server's).
    #[serde(default, deserialize_with = "muster_core::schema::optional_whole")]
    pub ttl_ms: Option<u64>,
    /// An active health check the registry runs (stored in the metadata under `check.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::check::Check>,
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
    #[serde(default, deserialize_with = "strict_optional_services")]
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
    /// `http://host:port` (IPv6 in brackets), or the address as written when it has a scheme.
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

/// Builds the instances of `node` for its services that `matches` accepts.
pub fn instances_of(node: &NodeInfo, matches: impl Fn(&ServiceInfo) -> bool) -> Vec<Instance> {
    node.services
        .iter()
        .filter(|s| matches(s))
        .map(|service| InstanceView { node, service }.to_instance())
        .collect()
}

/// An instance as load balancing sees it (the SDK's failover calls instances of this type).
impl muster_balance::Endpoint for Instance {
    fn id(&self) -> &str {
        &self.id
    }

    fn service(&self) -> &str {
        &self.service
    }

    fn weight(&self) -> Option<u32> {
        self.weight
    }

    fn is_up(&self) -> bool {
        self.status == NodeStatus::Up
    }
}

/// An [`Instance`] borrowed from a node and one of its services: serializes to exactly the same
/// JSON without building one (the resolve route's hot path).
#[derive(Debug, Clone, Copy)]
pub struct InstanceView<'a> {
    /// The node.
    pub node: &'a NodeInfo,
    /// One of its services.
    pub service: &'a ServiceInfo,
}

impl InstanceView<'_> {
    /// A metadata value of the instance (the service's own, else the node's).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.service.metadata.get(key).or_else(|| self.node.metadata.get(key)).map(String::as_str)
    }

    fn health_path(&self) -> &str {
        self.metadata("health").unwrap_or("/health")
    }

    /// The owned instance.
    pub fn to_instance(&self) -> Instance {
        let mut metadata = self.node.metadata.clone();
        metadata.extend(self.service.metadata.clone());
        Instance {
            id: self.node.node_id.to_string(),
            service: self.service.name.clone(),
            host: self.node.address.host_unbracketed().to_owned(),
            port: self.node.address.port(),
            url: self.node.address.url().to_string(),
            health: format!("{}{}", self.node.address.url(), self.health_path()),
            version: self.service.version.clone(),
            status: self.node.status,
            metadata,
            weight: self.service.weight,
            registered_at: self.node.registered_at_ms,
            last_heartbeat: self.node.timestamp_ms,
        }
    }
}

/// Serializes a `Display` value as a string without allocating it.
pub struct Text<T>(pub T);

impl<T: std::fmt::Display> Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Node metadata merged with the service's (the service's value wins), in key order.
struct MergedMetadata<'a>(&'a Metadata, &'a Metadata);

impl Serialize for MergedMetadata<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (node, service) = (self.0, self.1);
        let mut map = serializer.serialize_map(None)?;
        let mut ours = node.iter().peekable();
        let mut theirs = service.iter().peekable();
        loop {
            let order = match (ours.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            if order == std::cmp::Ordering::Equal {
                ours.next(); // the service's value replaces the node's
            }
            let next = if order == std::cmp::Ordering::Less { ours.next() } else { theirs.next() };
            if let Some((key, value)) = next {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

impl Serialize for InstanceView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (node, service) = (self.node, self.service);
        let mut out = serializer.serialize_struct("Instance", 12)?;
        out.serialize_field("id", node.node_id.as_str())?;
        out.serialize_field("service", &service.name)?;
        out.serialize_field("host", node.address.host_unbracketed())?;
        out.serialize_field("port", &node.address.port())?;
        out.serialize_field("url", &Text(node.address.url()))?;
        out.serialize_field("health", &Text(format_args!("{}{}", node.address.url(), self.health_path())))?;
        if let Some(version) = &service.version {
            out.serialize_field("version", version)?;
        }
        out.serialize_field("status", &node.status)?;
        out.serialize_field("metadata", &MergedMetadata(&node.metadata, &service.metadata))?;
        if let Some(weight) = service.weight {
            out.serialize_field("weight", &weight)?;
        }
        out.serialize_field("registeredAt", &node.registered_at_ms)?;
        out.serialize_field("lastHeartbeat", &node.timestamp_ms)?;
        out.end()
    }
}

/// [`InstanceList`] over borrowed instances: the same JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceListView<'a> {
    /// The service.
    pub service: &'a str,
    /// Revision of the registry when read.
    pub revision: Revision,
    /// Matching instances, ordered by node id.
    pub instances: Vec<InstanceView<'a>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::{Address, NodeId};

    fn node(address: &str, node_meta: &[(&str, &str)], services: Vec<ServiceInfo>) -> NodeInfo {
        NodeInfo {
            node_id: NodeId::new("n-1").unwrap(),
            address: Address::parse(address).unwrap(),
            services,
            timestamp_ms: 20,
            registered_at_ms: 10,
            status: NodeStatus::Down,
            metadata: node_meta.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ttl_ms: 15_000,
        }
    }

    fn meta(pairs: &[(&str, &str)]) -> Metadata {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn views_serialize_exactly_like_instances() {
        let plain = ServiceInfo::new("users", None).unwrap();
        let rich = ServiceInfo::new("users", Some("1.2.0"))
            .unwrap()
            .with_metadata(meta(&[("zone", "eu-west"), ("health", "/ready"), ("a", "1")]))
            .unwrap()
            .with_weight(7);
        for node in [
            node("10.0.0.1:80", &[], vec![plain.clone()]),
            node("[::1]:8080", &[("zone", "eu"), ("rack", "r1"), ("b", "2")], vec![rich.clone(), plain]),
            node("host.example:9000", &[("zone", "x\"quoted\"")], vec![rich]),
        ] {
            for service in &node.services {
                let view = InstanceView { node: &node, service };
                let owned = view.to_instance();
                assert_eq!(serde_json::to_string(&view).unwrap(), serde_json::to_string(&owned).unwrap());
                let back: Instance = serde_json::from_str(&serde_json::to_string(&view).unwrap()).unwrap();
                assert_eq!(back, owned);
                for key in ["zone", "health", "rack", "a", "b", "none"] {
                    assert_eq!(view.metadata(key), owned.metadata.get(key).map(String::as_str), "{key}");
                }
            }
        }
    }
}

/// `GET /ready` when the store answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadyResponse {
    /// Always `ready`.
    pub status: String,
    /// The registry's current revision.
    #[schema(value_type = u64)]
    pub revision: muster_core::Revision,
    /// True while the embedded store pauses expiry (self-preservation).
    pub self_preservation: bool,
}

/// A service as a client writes it: the fields of [`ServiceInfo`] and no others, so a misspelt
/// field is refused rather than silently dropped. (Reads stay lenient: a Titan peer may store more.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictService {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default, deserialize_with = "muster_core::schema::optional_whole")]
    weight: Option<u32>,
}

impl From<StrictService> for ServiceInfo {
    fn from(s: StrictService) -> Self {
        ServiceInfo { name: s.name, version: s.version, metadata: s.metadata, weight: s.weight }
    }
}

fn strict_services<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<ServiceInfo>, D::Error> {
    Ok(Vec::<StrictService>::deserialize(deserializer)?.into_iter().map(ServiceInfo::from).collect())
}

fn strict_optional_services<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<ServiceInfo>>, D::Error> {
    Ok(Option::<Vec<StrictService>>::deserialize(deserializer)?
        .map(|services| services.into_iter().map(ServiceInfo::from).collect()))
}
