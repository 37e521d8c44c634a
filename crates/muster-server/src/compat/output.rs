//! How seed-003 answers are written: instances with their metadata flattened the seed's way,
//! written straight from the stored nodes without building the owned response first.

use super::*;

/// Node metadata back as seed-003 metadata (see [`metadata_from_request`]).
pub(crate) fn metadata_for_response(metadata: &Metadata) -> serde_json::Map<String, serde_json::Value> {
    let json_keys: Vec<String> =
        metadata.get(JSON_KEYS).and_then(|keys| serde_json::from_str(keys).ok()).unwrap_or_default();
    metadata
        .iter()
        .filter(|(key, _)| key.as_str() != JSON_KEYS)
        .map(|(key, value)| {
            let value = json_keys
                .contains(key)
                .then(|| serde_json::from_str(value).ok())
                .flatten()
                .unwrap_or_else(|| serde_json::Value::String(value.clone()));
            (key.clone(), value)
        })
        .collect()
}

pub(crate) fn compat_instance(node: &NodeInfo, with_name: bool) -> CompatInstance {
    let mut metadata = metadata_for_response(&node.metadata);
    if let Some(version) = node.services.first().and_then(|s| s.version.clone()) {
        metadata.entry("version").or_insert(serde_json::Value::String(version));
    }
    CompatInstance {
        id: node.node_id.to_string(),
        name: if with_name { node.services.first().map(|s| s.name.clone()) } else { None },
        ip: node.address.host_unbracketed().to_owned(),
        port: node.address.port(),
        status: if node.status.is_healthy() { "healthy" } else { "unhealthy" }.to_owned(),
        registered_at: Some(iso8601(node.registered_at_ms)),
        last_heartbeat: Some(iso8601(node.timestamp_ms)),
        metadata: Some(metadata),
    }
}

/// [`compat_instance`] as a borrowed view: the same JSON, written straight from the node (the
/// resolve route's hot path: no owned instance, no metadata map, no time strings per instance).
pub(crate) struct InstanceOut<'a> {
    pub(crate) node: &'a NodeInfo,
    pub(crate) with_name: bool,
}

impl serde::Serialize for InstanceOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let node = self.node;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", node.node_id.as_str())?;
        if self.with_name
            && let Some(service) = node.services.first()
        {
            map.serialize_entry("name", &service.name)?;
        }
        map.serialize_entry("ip", node.address.host_unbracketed())?;
        map.serialize_entry("port", &node.address.port())?;
        map.serialize_entry("status", if node.status.is_healthy() { "healthy" } else { "unhealthy" })?;
        map.serialize_entry("registeredAt", &Text(Iso8601(node.registered_at_ms)))?;
        map.serialize_entry("lastHeartbeat", &Text(Iso8601(node.timestamp_ms)))?;
        map.serialize_entry("metadata", &MetadataOut(node))?;
        map.end()
    }
}

/// [`metadata_for_response`] plus the first service's version, as a borrowed view (keys in order,
/// as the owned map has them).
pub(crate) struct MetadataOut<'a>(&'a NodeInfo);

impl serde::Serialize for MetadataOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let metadata = &self.0.metadata;
        let json_keys: Vec<String> =
            metadata.get(JSON_KEYS).and_then(|keys| serde_json::from_str(keys).ok()).unwrap_or_default();
        let mut version = self
            .0
            .services
            .first()
            .and_then(|s| s.version.as_deref())
            .filter(|_| !metadata.contains_key("version"));
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in metadata.iter().filter(|(key, _)| key.as_str() != JSON_KEYS) {
            if let Some(v) = version.filter(|_| key.as_str() > "version") {
                map.serialize_entry("version", v)?;
                version = None;
            }
            match json_keys
                .contains(key)
                .then(|| serde_json::from_str::<serde_json::Value>(value).ok())
                .flatten()
            {
                Some(json) => map.serialize_entry(key, &json)?,
                None => map.serialize_entry(key, value)?,
            }
        }
        if let Some(v) = version {
            map.serialize_entry("version", v)?;
        }
        map.end()
    }
}

/// The answer of `GET /resolve/{name}` ([`muster_api::compat::ResolveResponse`]) as a borrowed view.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResolveOut<'a> {
    pub(crate) service_name: &'a str,
    pub(crate) instance_count: usize,
    pub(crate) instances: Vec<InstanceOut<'a>>,
    /// Last; `None` writes the answer without it (the route appends the time of each response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timestamp: Option<Text<Iso8601>>,
}
