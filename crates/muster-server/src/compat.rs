//! The seed-003 registry routes, so a client written for that registry works unchanged.
//!
//! An instance is a node with one service: its id is derived from the service name and `ip:port`
//! (so registration and heartbeat find it in one step, whatever the size of the service), `ip:port`
//! is its address, `metadata.version` (when it is a valid version) its service version, and the
//! metadata its node metadata: strings as they are, other JSON values as JSON text with their keys
//! listed under the reserved key `muster.json`, so they come back as sent. A status other than UP
//! is `unhealthy` and is not resolved. Instances live `compat_ttl` (`HEARTBEAT_TIMEOUT_SECONDS`)
//! without a heartbeat.

use std::collections::BTreeMap;
use std::io::Write;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use muster_api::compat::{
    CompatInstance, CompatService, HealthResponse, InstanceRequest, InstanceResponse, RemovedResponse,
    ServicesResponse, StatsResponse,
};
use muster_api::v1::Text;
use muster_api::{Iso8601, iso8601};
use muster_core::{
    Address, DeregisterReason, Metadata, NodeId, NodeInfo, NodeUpdate, Registration, ServiceInfo,
    ServiceQuery, time::now_ms,
};
use serde::Deserialize;

use crate::AppState;
use crate::acl::{Auth, Decision};
use crate::error::ApiError;

mod output;

use output::*;

fn now() -> String {
    iso8601(now_ms())
}

/// JSON body extraction with seed-003 error bodies.
pub(crate) struct CompatJson<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for CompatJson<T> {
    type Rejection = ApiError;
    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::from(rejection).compat()),
        }
    }
}

/// A store or validation error, answered with the seed-003 `timestamp`.
fn compat_error(error: muster_core::Error) -> ApiError {
    ApiError::from(error).compat()
}

fn address_of(request: &InstanceRequest) -> Result<Address, ApiError> {
    if request.name.is_empty() || request.ip.is_empty() {
        return Err(ApiError::invalid("name, ip and port are required").compat());
    }
    Address::from_parts(&request.ip, request.port).map_err(compat_error)
}

/// The reserved metadata key listing the keys whose values are JSON text (sent as non-strings).
const JSON_KEYS: &str = "muster.json";

/// The id of the instance of `name` at `address`: readable, and the same for every writer.
fn instance_id(name: &str, address: &Address) -> NodeId {
    // FNV-1a over the service name and the endpoint as parsed (host without case, numeric port).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let host = address.host_unbracketed().to_ascii_lowercase();
    for byte in name.bytes().chain([0]).chain(host.bytes()).chain([0]).chain(address.port().to_be_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let prefix: String = name.chars().map(|c| if c == '/' { '.' } else { c }).take(64).collect();
    NodeId::new(format!("{prefix}-{hash:016x}")).unwrap_or_else(|_| NodeId::generate("instance"))
}

/// True when `node` provides `name` at `address`.
fn provides(node: &NodeInfo, name: &str, address: &Address) -> bool {
    node.services.iter().any(|s| s.name == name) && node.address.same_endpoint(address)
}

/// The seed-003 instance of `name` at `address`, read by its derived id in one step (stored: it
/// may have run out of TTL a moment ago).
async fn derived_instance(
    state: &AppState,
    name: &str,
    address: &Address,
) -> Result<Option<NodeInfo>, ApiError> {
    let node = state.registry().get(&instance_id(name, address)).await.map_err(compat_error)?;
    Ok(node.filter(|n| provides(n, name, address)))
}

/// An active node registered through `/v1` that provides `name` at `address`: the service is
/// scanned (only when the derived id found nothing).
async fn scanned_instance(
    state: &AppState,
    name: &str,
    address: &Address,
) -> Result<Option<NodeInfo>, ApiError> {
    let query = ServiceQuery::new(name).map_err(compat_error)?;
    let nodes = state.registry().find(&query).await.map_err(compat_error)?;
    Ok(nodes.into_iter().find(|n| provides(n, name, address)))
}

/// Seed-003 metadata as node metadata: strings as they are, other values as JSON text listed
/// under [`JSON_KEYS`].
fn metadata_from_request(sent: &serde_json::Map<String, serde_json::Value>) -> Result<Metadata, ApiError> {
    if sent.len() >= muster_core::service::MAX_METADATA_ENTRIES {
        let limit = muster_core::service::MAX_METADATA_ENTRIES - 1;
        return Err(
            ApiError::invalid(format!("metadata has {} entries, the limit is {limit}", sent.len())).compat()
        );
    }
    let mut metadata = Metadata::new();
    let mut json_keys = Vec::new();
    for (key, value) in sent {
        if key == JSON_KEYS {
            return Err(ApiError::invalid(format!("metadata key `{JSON_KEYS}` is reserved")).compat());
        }
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => {
                json_keys.push(key.as_str());
                other.to_string()
            }
        };
        metadata.insert(key.clone(), text);
    }
    if !json_keys.is_empty() {
        metadata.insert(JSON_KEYS.to_owned(), serde_json::to_string(&json_keys).unwrap_or_default());
    }
    Ok(metadata)
}

#[utoipa::path(post, path = "/register", tag = "seed-003", request_body = muster_api::compat::InstanceRequest,
    responses((status = 201, description = "Registered", body = muster_api::compat::InstanceResponse),
        (status = 409, description = "The service is at its instance limit", body = muster_api::ErrorBody)))]
pub(crate) async fn register(
    State(state): State<AppState>,
    Auth(caller): Auth,
    CompatJson(request): CompatJson<InstanceRequest>,
) -> Result<(StatusCode, Json<InstanceResponse>), ApiError> {
    let address = address_of(&request)?;
    let metadata = metadata_from_request(&request.metadata)?;
    caller.require_check_target(&address, &metadata).map_err(ApiError::compat)?;
    let version = request
        .metadata
        .get("version")
        .and_then(|v| v.as_str())
        .filter(|v| muster_core::name::validate_version(v).is_ok());
    let service = ServiceInfo::new(request.name.clone(), version).map_err(compat_error)?;
    let id = instance_id(&request.name, &address);
    let audit_id = id.clone();
    let registration = Registration::new(id.clone(), address, vec![service], state.config().compat_ttl)
        .and_then(|r| r.with_metadata(metadata))
        .map_err(compat_error)?
        .with_service_limit(state.config().max_instances_per_service);
    let outcome = caller
        .write_decided(
            state.registry(),
            &id,
            &[request.name.as_str()],
            false,
            registration,
            |registration, decision| {
                Ok(state.registry().heartbeat(registration.if_stored(decision.map(Decision::condition))))
            },
        )
        .await
        .map_err(ApiError::compat)?;
    state.count_registration();
    caller.audit("register", audit_id.as_str());
    let mut instance = compat_instance(&outcome.node, true);
    instance.last_heartbeat = None;
    instance.metadata = None;
    Ok((
        StatusCode::CREATED,
        Json(InstanceResponse {
            message: "Service registered successfully".into(),
            instance,
            timestamp: now(),
        }),
    ))
}

#[utoipa::path(post, path = "/heartbeat", tag = "seed-003", request_body = muster_api::compat::InstanceRequest,
    responses((status = 200, description = "Heartbeat updated", body = muster_api::compat::InstanceResponse),
        (status = 404, description = "No such instance: register again", body = muster_api::ErrorBody)))]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Auth(caller): Auth,
    CompatJson(request): CompatJson<InstanceRequest>,
) -> Result<Json<InstanceResponse>, ApiError> {
    let address = address_of(&request)?;
    caller.require_write_service(&request.name).map_err(ApiError::compat)?;
    // The derived id first (a read and the heartbeat); a refresh that finds it expired falls back
    // to a node registered through `/v1` at this address.
    let mut refreshed = None;
    let may_write = |node: &NodeInfo| {
        caller
            .require_write(node.node_id.as_str(), node.services.iter().map(|s| s.name.as_str()))
            .map_err(ApiError::compat)
    };
    if let Some(node) = derived_instance(&state, &request.name, &address).await? {
        may_write(&node)?;
        match crate::v1::refresh(&state, &node.node_id, None).await {
            Err(error) if error.status() == StatusCode::NOT_FOUND => {}
            other => refreshed = Some(other.map_err(ApiError::compat)?),
        }
    }
    let node = match refreshed {
        Some(node) => node,
        None => {
            let Some(node) = scanned_instance(&state, &request.name, &address).await? else {
                return Err(ApiError::not_found(format!(
                    "no instance of `{}` at {address} is registered; register it again",
                    request.name
                ))
                .compat());
            };
            may_write(&node)?;
            crate::v1::refresh(&state, &node.node_id, None).await.map_err(ApiError::compat)?
        }
    };
    caller.audit("heartbeat", node.node_id.as_str());
    let mut instance = compat_instance(&node, true);
    instance.registered_at = None;
    instance.metadata = None;
    Ok(Json(InstanceResponse { message: "Heartbeat updated".into(), instance, timestamp: now() }))
}

#[utoipa::path(get, path = "/resolve/{name}", tag = "seed-003", params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "Healthy instances", body = muster_api::compat::ResolveResponse),
        (status = 404, description = "No healthy instance", body = muster_api::ErrorBody)))]
pub(crate) async fn resolve(
    State(state): State<AppState>,
    Auth(caller): Auth,
    uri: axum::http::Uri,
    Path(name): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let query = ServiceQuery::new(&name).map_err(compat_error)?;
    caller.require_read_service(&name).map_err(ApiError::compat)?;
    let mut nodes = state.registry().find(&query).await.map_err(compat_error)?;
    nodes.retain(|n| n.status.is_healthy() && (caller.is_unrestricted() || caller.may_read_node(n)));
    tracing::debug!(service = %name, healthy = nodes.len(), "resolved");
    if nodes.is_empty() {
        return Err(ApiError::not_found(format!("no healthy instances of `{name}`")).compat());
    }
    // The answer but its timestamp, kept as bytes while the read is the same (see answers.rs;
    // the answer carries no revision, so the nodes alone decide).
    let target = caller.is_unrestricted().then(|| uri.path());
    let kept = target.and_then(|target| state.inner.answers.get(target, muster_core::Revision::ZERO, &nodes));
    let head = match kept {
        Some(head) => head,
        None => {
            let instances: Vec<InstanceOut<'_>> =
                nodes.iter().map(|node| InstanceOut { node, with_name: false }).collect();
            let answer = ResolveOut {
                service_name: &name,
                instance_count: instances.len(),
                instances,
                timestamp: None,
            };
            let mut head = crate::v1::json_bytes(&answer, nodes.len()).map_err(ApiError::compat)?;
            head.truncate(head.len().saturating_sub(1)); // the closing brace: the timestamp follows
            if let Some(target) = target {
                state.inner.answers.put(target, muster_core::Revision::ZERO, nodes, head.clone());
            }
            head
        }
    };
    let mut body = Vec::with_capacity(head.len() + 40);
    body.extend_from_slice(&head);
    let _ = write!(body, r#","timestamp":"{}"}}"#, Iso8601(now_ms()));
    Ok(crate::v1::json_body(body.into()))
}

#[utoipa::path(get, path = "/services", tag = "seed-003",
    responses((status = 200, description = "Services and their instances", body = muster_api::compat::ServicesResponse)))]
pub(crate) async fn services(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> Result<Json<ServicesResponse>, ApiError> {
    caller.require_some_read().map_err(ApiError::compat)?;
    let nodes = state.registry().list_active().await.map_err(compat_error)?;
    let mut services: BTreeMap<String, CompatService> = BTreeMap::new();
    for node in nodes.iter().filter(|n| caller.may_read_node(n)) {
        for service in node.services.iter().filter(|s| caller.may_read_service(&s.name)) {
            let entry = services.entry(service.name.clone()).or_insert_with(|| CompatService {
                instance_count: 0,
                healthy_count: 0,
                instances: Vec::new(),
            });
            entry.instance_count += 1;
            entry.healthy_count += usize::from(node.status.is_healthy());
            entry.instances.push(compat_instance(node, true));
        }
    }
    let total_instances = services.values().map(|s| s.instance_count).sum();
    let total_healthy_instances = services.values().map(|s| s.healthy_count).sum();
    Ok(Json(ServicesResponse {
        total_services: services.len(),
        total_instances,
        total_healthy_instances,
        services,
        timestamp: now(),
    }))
}

#[utoipa::path(get, path = "/stats", tag = "seed-003",
    responses((status = 200, description = "Registry statistics", body = muster_api::compat::StatsResponse)))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> Result<Json<StatsResponse>, ApiError> {
    caller.require_some_read().map_err(ApiError::compat)?;
    let mut nodes = state.registry().list_active().await.map_err(compat_error)?;
    // Every figure drawn from the registry is over what the caller may read. (The lifetime
    // counters are the server's own, the same as `/metrics` shows any reader.)
    nodes.retain(|n| caller.may_read_node(n));
    let names: std::collections::BTreeSet<String> = nodes
        .iter()
        .flat_map(|n| n.services.iter().filter(|s| caller.may_read_service(&s.name)).map(|s| s.name.clone()))
        .collect();
    let stats = &state.inner.metrics;
    Ok(Json(StatsResponse {
        total_registrations: stats.registrations.get(),
        total_heartbeats: stats.heartbeats.get(),
        total_cleanups: stats.expiries.get(),
        active_services: names.len(),
        active_instances: nodes.len(),
        services: names.into_iter().collect(),
        uptime: state.uptime_secs(),
        heartbeat_timeout: format!("{}s", state.config().compat_ttl.as_secs()),
        cleanup_interval: format!("{}s", state.config().cleanup_interval.as_secs()),
        self_preservation: state.preserving(),
        timestamp: now(),
    }))
}

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Liveness (seed-003 shape)", body = muster_api::compat::HealthResponse)))]
pub(crate) async fn health(State(state): State<AppState>) -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "healthy".into(),
        timestamp: now(),
        service: "service-registry".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime: state.uptime_secs(),
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct InstanceAddress {
    ip: String,
    port: u16,
}

#[utoipa::path(delete, path = "/services/{name}/instances", tag = "seed-003",
    params(("name" = String, Path, description = "Service name"), ("ip" = String, Query, description = "Instance IP"), ("port" = u16, Query, description = "Instance port")),
    responses((status = 200, description = "Removed", body = muster_api::compat::RemovedResponse),
        (status = 404, description = "No such instance", body = muster_api::ErrorBody)))]
pub(crate) async fn remove_instance(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<InstanceAddress>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RemovedResponse>, ApiError> {
    let axum::extract::Query(at) = query.map_err(|e| ApiError::from(e).compat())?;
    let address = Address::from_parts(&at.ip, at.port).map_err(compat_error)?;
    // Refused before anything is looked up: a caller who may not write learns nothing stored.
    caller.require_write_service(&name).map_err(ApiError::compat)?;
    let derived = match derived_instance(&state, &name, &address).await? {
        Some(node) if state.registry().is_active(&node.node_id).await.map_err(compat_error)? => Some(node),
        _ => None,
    };
    let found = match derived {
        Some(node) => Some(node),
        None => scanned_instance(&state, &name, &address).await?,
    };
    let Some(node) = found else {
        return Err(ApiError::not_found(format!("no instance of `{name}` at {address}")).compat());
    };
    // Like every write: the caller may write every service the node provides now (which covers
    // what it provides after).
    caller
        .require_write(node.node_id.as_str(), node.services.iter().map(|s| s.name.as_str()))
        .map_err(ApiError::compat)?;
    // Only this service leaves the node; the node goes when it provides nothing else.
    let rest: Vec<ServiceInfo> = node.services.iter().filter(|s| s.name != name).cloned().collect();
    // The decision was made on `node`: the write holds only if it is still what was read.
    let decided = muster_core::StoredServices::of(Some(&node));
    let removed = if rest.is_empty() {
        let removal = state.registry().deregister_if(&node.node_id, DeregisterReason::Evicted, &decided);
        removal.await.map_err(compat_error)?
    } else {
        let update = NodeUpdate::new().services(rest).map_err(compat_error)?.if_stored(decided);
        match state.registry().update(&node.node_id, update).await {
            Ok(_) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(compat_error(e)),
        }
    };
    if !removed {
        return Err(ApiError::not_found(format!("no instance of `{name}` at {address}")).compat());
    }
    caller.audit("remove-instance", node.node_id.as_str());
    Ok(Json(RemovedResponse {
        message: "Service instance removed".into(),
        id: node.node_id.to_string(),
        timestamp: now(),
    }))
}

#[cfg(test)]
mod tests;
