//! The seed-003 registry routes, so a client written for that registry works unchanged.
//!
//! An instance is a node with one service: its id is the node id, `ip:port` its address,
//! `metadata.version` (when it is a valid version) its service version, and the other metadata
//! its node metadata (non-string values as JSON text). Instances live `compat_ttl`
//! (`HEARTBEAT_TIMEOUT_SECONDS`) without a heartbeat.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use muster_api::compat::{
    CompatInstance, CompatService, HealthResponse, InstanceRequest, InstanceResponse, RemovedResponse,
    ResolveResponse, ServicesResponse, StatsResponse,
};
use muster_api::iso8601;
use muster_core::{
    Address, DeregisterReason, Metadata, NodeId, NodeInfo, Registration, ServiceInfo, ServiceQuery,
    time::now_ms,
};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;

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

/// The active node registered for `name` at `address`, if any.
async fn find_instance(
    state: &AppState,
    name: &str,
    address: &Address,
) -> Result<Option<NodeInfo>, ApiError> {
    let query = ServiceQuery::new(name).map_err(compat_error)?;
    let nodes = state.registry().find(&query).await.map_err(compat_error)?;
    Ok(nodes.into_iter().find(|n| &n.address == address))
}

fn compat_instance(node: &NodeInfo, with_name: bool) -> CompatInstance {
    let mut metadata = serde_json::Map::new();
    for (key, value) in &node.metadata {
        metadata.insert(key.clone(), serde_json::Value::String(value.clone()));
    }
    if let Some(version) = node.services.first().and_then(|s| s.version.clone()) {
        metadata.entry("version").or_insert(serde_json::Value::String(version));
    }
    CompatInstance {
        id: node.node_id.to_string(),
        name: if with_name { node.services.first().map(|s| s.name.clone()) } else { None },
        ip: node.address.host_unbracketed().to_owned(),
        port: node.address.port(),
        status: "healthy".to_owned(),
        registered_at: Some(iso8601(node.registered_at_ms)),
        last_heartbeat: Some(iso8601(node.timestamp_ms)),
        metadata: Some(metadata),
    }
}

#[utoipa::path(post, path = "/register", tag = "seed-003", request_body = muster_api::compat::InstanceRequest,
    responses((status = 201, description = "Registered", body = muster_api::compat::InstanceResponse),
        (status = 400, description = "Invalid input", body = muster_api::ErrorBody),
        (status = 409, description = "The service is at its instance limit", body = muster_api::ErrorBody)))]
pub(crate) async fn register(
    State(state): State<AppState>,
    CompatJson(request): CompatJson<InstanceRequest>,
) -> Result<(StatusCode, Json<InstanceResponse>), ApiError> {
    let address = address_of(&request)?;
    let mut metadata = Metadata::new();
    let mut version = None;
    for (key, value) in &request.metadata {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if key == "version" && muster_core::name::validate_version(&text).is_ok() {
            version = Some(text.clone());
        }
        metadata.insert(key.clone(), text);
    }
    let service = ServiceInfo::new(request.name.clone(), version.as_deref()).map_err(compat_error)?;
    let id = match find_instance(&state, &request.name, &address).await? {
        Some(existing) => existing.node_id,
        None => NodeId::generate("instance"),
    };
    let registration = Registration::new(id, address, vec![service], state.config().compat_ttl)
        .and_then(|r| r.with_metadata(metadata))
        .map_err(compat_error)?
        .with_service_limit(state.config().max_instances_per_service);
    let outcome = state.registry().heartbeat(registration).await.map_err(compat_error)?;
    state.count_registration();
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
        (status = 400, description = "Invalid input", body = muster_api::ErrorBody),
        (status = 404, description = "No such instance: register again", body = muster_api::ErrorBody)))]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    CompatJson(request): CompatJson<InstanceRequest>,
) -> Result<Json<InstanceResponse>, ApiError> {
    let address = address_of(&request)?;
    let Some(node) = find_instance(&state, &request.name, &address).await? else {
        return Err(ApiError::not_found(format!(
            "no instance of `{}` at {address} is registered; register it again",
            request.name
        ))
        .compat());
    };
    let node = crate::v1::refresh(&state, &node.node_id, None).await.map_err(ApiError::compat)?;
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
    Path(name): Path<String>,
) -> Result<Json<ResolveResponse>, ApiError> {
    let query = ServiceQuery::new(&name).map_err(compat_error)?;
    let nodes = state.registry().find(&query).await.map_err(compat_error)?;
    if nodes.is_empty() {
        return Err(ApiError::not_found(format!("no healthy instances of `{name}`")).compat());
    }
    let instances: Vec<CompatInstance> = nodes.iter().map(|n| compat_instance(n, false)).collect();
    Ok(Json(ResolveResponse {
        service_name: name,
        instance_count: instances.len(),
        instances,
        timestamp: now(),
    }))
}

#[utoipa::path(get, path = "/services", tag = "seed-003",
    responses((status = 200, description = "Services and their instances", body = muster_api::compat::ServicesResponse)))]
pub(crate) async fn services(State(state): State<AppState>) -> Result<Json<ServicesResponse>, ApiError> {
    let nodes = state.registry().list_active().await.map_err(compat_error)?;
    let mut services: BTreeMap<String, CompatService> = BTreeMap::new();
    for node in &nodes {
        for service in &node.services {
            let entry = services.entry(service.name.clone()).or_insert_with(|| CompatService {
                instance_count: 0,
                healthy_count: 0,
                instances: Vec::new(),
            });
            entry.instance_count += 1;
            entry.healthy_count += 1;
            entry.instances.push(compat_instance(node, true));
        }
    }
    let total_instances = services.values().map(|s| s.instance_count).sum();
    Ok(Json(ServicesResponse {
        total_services: services.len(),
        total_instances,
        total_healthy_instances: total_instances,
        services,
        timestamp: now(),
    }))
}

#[utoipa::path(get, path = "/stats", tag = "seed-003",
    responses((status = 200, description = "Registry statistics", body = muster_api::compat::StatsResponse)))]
pub(crate) async fn stats(State(state): State<AppState>) -> Result<Json<StatsResponse>, ApiError> {
    let nodes = state.registry().list_active().await.map_err(compat_error)?;
    let names: std::collections::BTreeSet<String> =
        nodes.iter().flat_map(|n| n.services.iter().map(|s| s.name.clone())).collect();
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
        self_preservation: state.registry().is_preserving(),
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
        (status = 400, description = "Invalid input", body = muster_api::ErrorBody),
        (status = 404, description = "No such instance", body = muster_api::ErrorBody)))]
pub(crate) async fn remove_instance(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<InstanceAddress>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RemovedResponse>, ApiError> {
    let axum::extract::Query(at) = query.map_err(|e| ApiError::from(e).compat())?;
    let address = Address::from_parts(&at.ip, at.port).map_err(compat_error)?;
    let Some(node) = find_instance(&state, &name, &address).await? else {
        return Err(ApiError::not_found(format!("no instance of `{name}` at {address}")).compat());
    };
    state.registry().deregister(&node.node_id, DeregisterReason::Evicted).await.map_err(compat_error)?;
    Ok(Json(RemovedResponse {
        message: "Service instance removed".into(),
        id: node.node_id.to_string(),
        timestamp: now(),
    }))
}
