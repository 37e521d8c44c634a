//! Muster's API under `/v1`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use muster_api::v1::{
    HeartbeatRequest, InstanceListView, InstanceView, NodeList, RegisterRequest, RegisterResponse,
    ServiceList, ServiceSummary, UpdateRequest,
};
use muster_core::{
    Address, Change, DeregisterReason, NodeId, NodeInfo, NodeStatus, NodeUpdate, Registration, Revision,
    ServiceQuery, VersionQuery,
};
use serde::Deserialize;

use crate::AppState;
use crate::acl::{Auth, Decision};
use crate::error::{ApiError, ApiJson, ApiQuery};

/// Header carrying the registry revision an answer reflects (for blocking queries).
pub(crate) const INDEX_HEADER: &str = "x-muster-index";

#[utoipa::path(post, path = "/v1/nodes", tag = "v1", request_body = muster_api::v1::RegisterRequest,
    responses((status = 201, description = "Registered with a generated id", body = muster_api::v1::RegisterResponse),
        (status = 409, description = "The service is at its instance limit", body = muster_api::ErrorBody)))]
pub(crate) async fn register_generated(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    register(&state, auth, NodeId::generate("node"), request).await
}

#[utoipa::path(put, path = "/v1/nodes/{id}", tag = "v1", params(("id" = String, Path, description = "Node id")),
    request_body = muster_api::v1::RegisterRequest,
    responses((status = 201, description = "Registered", body = muster_api::v1::RegisterResponse),
        (status = 200, description = "Already registered: refreshed", body = muster_api::v1::RegisterResponse),
        (status = 409, description = "The service is at its instance limit", body = muster_api::ErrorBody)))]
pub(crate) async fn register_with_id(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    register(&state, auth, NodeId::new(id)?, request).await
}

async fn register(
    state: &AppState,
    Auth(caller): Auth,
    id: NodeId,
    request: RegisterRequest,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let ttl = request.ttl_ms.map_or(state.config().default_ttl, Duration::from_millis);
    let address = Address::parse(request.address)?;
    let mut metadata = request.metadata;
    if let Some(check) = &request.check {
        check.validate().map_err(ApiError::invalid)?;
        check.write_to(&mut metadata);
    }
    caller.require_check_target(&address, &metadata)?;
    // A node a health check holds down stays down, with the reason, until the check passes: the
    // store keeps the verdict as a condition of its write (NodeInfo::keep_check_verdict).
    let status = request.status.unwrap_or_default();
    // The names the access decision needs (none for an unrestricted caller: no allocation).
    let names: Vec<String> = if caller.is_unrestricted() {
        Vec::new()
    } else {
        request.services.iter().map(|s| s.name.clone()).collect()
    };
    let services: Vec<&str> = names.iter().map(String::as_str).collect();
    let registration = Registration::new(id.clone(), address, request.services, ttl)?
        .with_status(status)
        .with_metadata(metadata)?
        .with_service_limit(state.config().max_instances_per_service);
    // The access decision on the stored node is a condition of the store's write.
    let outcome = caller
        .write_decided(state.registry(), &id, &services, false, registration, |registration, decision| {
            Ok(state.registry().heartbeat(registration.if_stored(decision.map(Decision::condition))))
        })
        .await?;
    state.count_registration();
    caller.audit("register", id.as_str());
    let created = outcome.change == Change::Registered;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(RegisterResponse { id: id.to_string(), node: outcome.node, created })))
}

#[utoipa::path(put, path = "/v1/nodes/{id}/heartbeat", tag = "v1", params(("id" = String, Path, description = "Node id")),
    request_body(content = muster_api::v1::HeartbeatRequest, description = "Optional: the current status"),
    responses((status = 200, description = "Heartbeat recorded", body = muster_core::NodeInfo),
        (status = 404, description = "Unknown id: register again", body = muster_api::ErrorBody)))]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<NodeInfo>, ApiError> {
    let id = NodeId::new(id)?;
    caller.require_write_stored(state.registry(), &id, [], false).await?;
    let request: HeartbeatRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HeartbeatRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                muster_api::ErrorCode::MalformedJson,
                format!("the body is not valid JSON: {}", crate::error::humanize(&e.to_string())),
            )
        })?
    };
    let node = refresh(&state, &id, request.status).await?;
    caller.audit("heartbeat", id.as_str());
    Ok(Json(node))
}

/// Heartbeats a stored node with its stored values (and a new status), atomically; 404 when it is
/// gone, so the client registers again.
pub(crate) async fn refresh(
    state: &AppState,
    id: &NodeId,
    status: Option<NodeStatus>,
) -> Result<NodeInfo, ApiError> {
    match state.registry().refresh(id, status).await {
        Ok(outcome) => {
            state.count_heartbeat();
            tracing::debug!(node_id = %id, "heartbeat");
            Ok(outcome.node)
        }
        Err(error) if error.is_not_found() => Err(ApiError::not_found(format!(
            "node `{id}` is not registered (it expired or was removed); register it again"
        ))),
        Err(error) => Err(error.into()),
    }
}

#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "v1", params(("id" = String, Path, description = "Node id")),
    responses((status = 200, description = "The node", body = muster_core::NodeInfo),
        (status = 404, description = "Not registered", body = muster_api::ErrorBody)))]
pub(crate) async fn get_node(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    caller.require_some_read()?;
    // Any id a node was stored with (a Titan peer's `worker@host-1`, say) reads back.
    let id = NodeId::from_wire(id);
    match state.registry().get(&id).await? {
        Some(node) => {
            caller.require_read_node(&node)?;
            Ok(Json(node))
        }
        None => Err(ApiError::not_found(format!("node `{id}` is not registered"))),
    }
}

#[utoipa::path(patch, path = "/v1/nodes/{id}", tag = "v1", params(("id" = String, Path, description = "Node id")),
    request_body = muster_api::v1::UpdateRequest,
    responses((status = 200, description = "The updated node", body = muster_core::NodeInfo),
        (status = 404, description = "Not registered", body = muster_api::ErrorBody)))]
pub(crate) async fn update_node(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateRequest>,
) -> Result<Json<NodeInfo>, ApiError> {
    let id = NodeId::new(id)?;
    let new_services: Vec<&str> = request.services.iter().flatten().map(|s| s.name.as_str()).collect();
    let mut update = NodeUpdate::new();
    if let Some(address) = request.address {
        update = update.address(Address::parse(address)?);
    }
    if let Some(services) = request.services.clone() {
        update = update.services(services)?;
    }
    if let Some(metadata) = request.metadata {
        update = update.metadata(metadata)?;
    }
    if let Some(status) = request.status {
        update = update.status(status);
    }
    if update.is_empty() {
        return Err(ApiError::invalid("name at least one of address, services, metadata, status"));
    }
    let update = update.with_service_limit(state.config().max_instances_per_service);
    // A health check aims at the node's own host unless an admin says otherwise: where the node and
    // its check will be after the update, from the node the decision reads.
    let moves_check = update.new_address().is_some()
        || update.new_metadata().is_some_and(|m| m.contains_key("check.target"));
    let read_anyway = moves_check && !caller.is_unrestricted();
    let node = caller
        .write_decided(state.registry(), &id, &new_services, read_anyway, update, |update, decision| {
            if let Some(stored) = decision.and_then(Decision::stored).filter(|_| read_anyway) {
                let at = update.new_address().unwrap_or(&stored.address);
                caller.require_check_target(at, update.new_metadata().unwrap_or(&stored.metadata))?;
            }
            Ok(state.registry().update(&id, update.if_stored(decision.map(Decision::condition))))
        })
        .await?;
    caller.audit("update", id.as_str());
    Ok(Json(node))
}

#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "v1", params(("id" = String, Path, description = "Node id")),
    responses((status = 204, description = "Deregistered"),
        (status = 404, description = "Not registered", body = muster_api::ErrorBody)))]
pub(crate) async fn deregister_node(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    // Any stored node can be removed by its id, also one a Titan peer wrote.
    let id = NodeId::from_wire(id);
    let registry = state.registry();
    let removed = caller
        .write_decided(registry, &id, &[], false, (), |(), decision| {
            let (id, condition) = (&id, decision.map(Decision::condition));
            Ok(async move {
                match condition {
                    Some(condition) => {
                        registry.deregister_if(id, DeregisterReason::Graceful, &condition).await
                    }
                    None => registry.deregister(id, DeregisterReason::Graceful).await,
                }
            })
        })
        .await?;
    if removed {
        caller.audit("deregister", id.as_str());
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("node `{id}` is not registered")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Include nodes whose TTL ran out but that were not removed yet.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/v1/nodes", tag = "v1",
    params(("all" = Option<bool>, Query, description = "Include nodes whose TTL ran out but that were not removed yet")),
    responses((status = 200, description = "Nodes ordered by id", body = muster_api::v1::NodeList)))]
pub(crate) async fn list_nodes(
    State(state): State<AppState>,
    Auth(caller): Auth,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<NodeList>, ApiError> {
    caller.require_some_read()?;
    let revision = state.registry().current_revision().await?;
    let mut nodes =
        if params.all { state.registry().list_all().await? } else { state.registry().list_active().await? };
    if !caller.is_unrestricted() {
        nodes.retain(|node| caller.may_read_node(node));
    }
    Ok(Json(NodeList { revision, nodes }))
}

#[utoipa::path(get, path = "/v1/services", tag = "v1",
    responses((status = 200, description = "Services with versions and instance counts", body = muster_api::v1::ServiceList)))]
pub(crate) async fn list_services(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> Result<Json<ServiceList>, ApiError> {
    caller.require_some_read()?;
    let revision = state.registry().current_revision().await?;
    let mut services: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
    for node in state.registry().list_active().await? {
        if !caller.may_read_node(&node) {
            continue;
        }
        for service in node.services.iter().filter(|s| caller.may_read_service(&s.name)) {
            let entry = services.entry(service.name.clone()).or_default();
            entry.1 += 1;
            if let Some(version) = &service.version {
                entry.0.insert(version.clone());
            }
        }
    }
    let services = services
        .into_iter()
        .map(|(name, (versions, instances))| ServiceSummary {
            name,
            versions: versions.into_iter().collect(),
            instances,
        })
        .collect();
    Ok(Json(ServiceList { revision, services }))
}

/// `GET /v1/services/{name}/instances?version=1.2.0|versionReq=^1.2&status=UP&meta.zone=eu&index=N&wait=30s`.
#[utoipa::path(get, path = "/v1/services/{name}/instances", tag = "v1",
    params(("name" = String, Path, description = "Service name"),
        ("version" = Option<String>, Query, description = "Exact version"),
        ("versionReq" = Option<String>, Query, description = "Semver requirement, e.g. ^1.2"),
        ("status" = Option<String>, Query, description = "UP, DOWN, STARTING or STOPPING"),
        ("meta.<key>" = Option<String>, Query, description = "Metadata equality, e.g. meta.zone=eu"),
        ("index" = Option<u64>, Query, description = "Blocking query: wait for a revision after this one (0 answers at once)"),
        ("wait" = Option<String>, Query, description = "Longest wait of a blocking query, e.g. 30s")),
    responses((status = 200, description = "Matching instances; header X-Muster-Index carries the revision", body = muster_api::v1::InstanceList)))]
pub(crate) async fn instances(
    State(state): State<AppState>,
    Auth(caller): Auth,
    uri: axum::http::Uri,
    Path(name): Path<String>,
    ApiQuery(params): ApiQuery<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut query = ServiceQuery::new(&name)?;
    caller.require_read_service(&name)?;
    let (mut status, mut metadata, mut index, mut wait) = (None, Vec::new(), None, None);
    for (key, value) in params {
        match key.as_str() {
            "version" => query = query.with_version(VersionQuery::exact(&value)?),
            "versionReq" => query = query.with_version(VersionQuery::semver(&value)?),
            "status" => status = Some(value.parse::<NodeStatus>()?),
            "index" => {
                index = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| ApiError::invalid(format!("index {value:?} is not a revision")))?,
                );
            }
            "wait" => wait = Some(parse_wait(&value)?),
            _ => match key.strip_prefix("meta.") {
                Some(meta_key) if !meta_key.is_empty() => metadata.push((meta_key.to_owned(), value)),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "unknown parameter `{key}`; use version, versionReq, status, meta.<key>, index, wait"
                    )));
                }
            },
        }
    }
    // Index 0 means "I know nothing yet": answer at once (Consul's rule).
    if let Some(index) = index.filter(|i| *i > 0) {
        let wait = wait.unwrap_or(Duration::from_secs(60)).min(state.config().max_wait);
        wait_for_change(&state, &caller, &name, Revision(index), wait).await?;
    }
    let (revision, nodes) = state.registry().find_at(&query).await?;
    tracing::debug!(service = %name, found = nodes.len(), %revision, "resolved");
    // The same read as the last one for this target gives the same bytes (see answers.rs).
    let target = (caller.is_unrestricted() && index.is_none()).then(|| uri.path_and_query()).flatten();
    let target = target.map(axum::http::uri::PathAndQuery::as_str);
    if let Some(body) = target.and_then(|target| state.inner.answers.get(target, revision, &nodes)) {
        let mut response = json_body(body);
        insert_index(response.headers_mut(), revision);
        return Ok(response);
    }
    let instances: Vec<InstanceView<'_>> = nodes
        .iter()
        .filter(|node| status.is_none_or(|s| node.status == s))
        .filter(|node| caller.is_unrestricted() || caller.may_read_node(node))
        .flat_map(|node| {
            node.services
                .iter()
                .filter(|s| query.matches(s))
                .map(move |service| InstanceView { node, service })
        })
        .filter(|instance| metadata.iter().all(|(k, v)| instance.metadata(k) == Some(v.as_str())))
        .collect();
    let count = instances.len();
    let body = json_bytes(&InstanceListView { service: &name, revision, instances }, count)?;
    if let Some(target) = target {
        state.inner.answers.put(target, revision, nodes, body.clone());
    }
    let mut response = json_body(body);
    insert_index(response.headers_mut(), revision);
    Ok(response)
}

/// The JSON of `answer` with `instances` instances, written into one buffer sized from the start
/// (the resolve routes' hot path: no regrowth while writing).
pub(crate) fn json_bytes(answer: &impl serde::Serialize, instances: usize) -> Result<Bytes, ApiError> {
    let mut body = Vec::with_capacity(128 + 512 * instances);
    serde_json::to_writer(&mut body, answer)
        .map_err(|error| ApiError::new(muster_api::ErrorCode::Internal, error.to_string()))?;
    Ok(Bytes::from(body))
}

/// A 200 response with a JSON body.
pub(crate) fn json_body(body: Bytes) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(crate) fn insert_index(headers: &mut HeaderMap, revision: Revision) {
    if let Ok(value) = HeaderValue::from_str(&revision.to_string()) {
        headers.insert(INDEX_HEADER, value);
    }
}

/// Blocks until the registry moves past `index` with a change that may concern `service`, or `wait`
/// passes, or the server shuts down; fails when the caller's token is revoked meanwhile.
async fn wait_for_change(
    state: &AppState,
    caller: &crate::acl::Caller,
    service: &str,
    index: Revision,
    wait: Duration,
) -> Result<(), ApiError> {
    let shutdown = state.inner.shutdown.clone();
    let change = state.inner.hub.changed_after(index, service);
    tokio::select! {
        changed = change => changed?,
        () = tokio::time::sleep(wait) => {}
        () = shutdown.cancelled() => {}
        // A token revoked while its query waits gets no answer from the registry.
        error = state.inner.acl.withdrawal(caller) => return Err(error),
    }
    Ok(())
}

/// A blocking query's `wait`: 1-9 digits and an optional unit (`500ms`, `30s`, `5m`, `1h`).
fn parse_wait(value: &str) -> Result<Duration, ApiError> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let unit = &value[digits..];
    if !(1..=9).contains(&digits) || !matches!(unit, "" | "ms" | "s" | "m" | "h") {
        return Err(ApiError::invalid(format!("wait {value:?} is not a duration like 500ms, 30s, 5m or 1h")));
    }
    muster_api::parse_duration(value).map_err(ApiError::invalid)
}
