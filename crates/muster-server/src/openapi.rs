//! The OpenAPI document: generated from the handlers' annotations, then given the limits the
//! annotations cannot state (patterns, ranges, sizes) and the statuses every route may answer
//! (the connection layer's 408/413/414/415/431, store failures), from the same rules the server
//! validates with (`muster_core::schema`). A request the document calls valid is accepted; one it
//! calls invalid is refused.

use std::sync::OnceLock;

use muster_core::schema;
use serde_json::{Value, json};

/// The finished document, built once.
pub(crate) fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut document =
            serde_json::to_value(<crate::ApiDoc as utoipa::OpenApi>::openapi()).unwrap_or(Value::Null);
        tighten(&mut document);
        document
    })
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
}

fn metadata_schema() -> Value {
    json!({
        "type": "object",
        "description": "Labels: at most 64, keys 1-128 of letters, digits, '-', '_', '.', '/', values at most 1024 characters.",
        "maxProperties": 64,
        "propertyNames": {"pattern": schema::METADATA_KEY},
        "additionalProperties": {"type": "string", "maxLength": 1024},
    })
}

fn services_schema(nullable: bool) -> Value {
    json!({
        "type": if nullable { json!(["array", "null"]) } else { json!("array") },
        "items": {"$ref": "#/components/schemas/ServiceEntry"},
        "maxItems": 256,
        "description": "Services the node provides (at most 256; an entry listed twice is kept once).",
    })
}

/// Sets `value` at the JSON pointer `path`, creating nothing: a missing path is a mistake in this
/// table, caught by the test that reads the document.
fn set(document: &mut Value, path: &str, value: Value) {
    match document.pointer_mut(path) {
        Some(slot) => *slot = value,
        None => panic!("the OpenAPI document has no {path}"),
    }
}

/// Adds a component schema.
fn set_new(document: &mut Value, schemas: &str, name: &str, schema: Value) {
    if let Some(Value::Object(components)) = document.pointer_mut(schemas) {
        components.insert(name.to_owned(), schema);
    }
}

/// Merges `fields` into the object at `path`.
fn merge(document: &mut Value, path: &str, fields: Value) {
    let Some(Value::Object(target)) = document.pointer_mut(path) else {
        panic!("the OpenAPI document has no object at {path}")
    };
    if let Value::Object(fields) = fields {
        target.extend(fields);
    }
}

fn tighten(document: &mut Value) {
    let schemas = "/components/schemas";
    set(document, &format!("{schemas}/BTreeMap"), metadata_schema());
    merge(
        document,
        &format!("{schemas}/ServiceInfo/properties/name"),
        json!({"pattern": schema::SERVICE_NAME}),
    );
    merge(
        document,
        &format!("{schemas}/ServiceInfo/properties/version"),
        json!({"pattern": schema::VERSION}),
    );
    merge(
        document,
        &format!("{schemas}/ServiceInfo/properties/weight"),
        // u32: `int32` would tell clients 2^31 and above are invalid.
        json!({"minimum": 0, "maximum": u32::MAX, "format": "int64"}),
    );
    // As written in requests: no other fields (reads stay open to what Titan peers store).
    let mut entry = document.pointer(&format!("{schemas}/ServiceInfo")).cloned().unwrap_or_default();
    entry["additionalProperties"] = json!(false);
    set_new(document, schemas, "ServiceEntry", entry);
    let address = json!({"pattern": schema::address()});
    merge(document, &format!("{schemas}/RegisterRequest/properties/address"), address.clone());
    // Health checks: the ranges and forms `Check::validate` applies.
    merge(document, &format!("{schemas}/Check/properties/target"), address.clone());
    merge(
        document,
        &format!("{schemas}/Check/properties/path"),
        json!({"pattern": muster_api::check::PATH_PATTERN}),
    );
    merge(
        document,
        &format!("{schemas}/Check/properties/intervalMs"),
        json!({"minimum": 100, "maximum": 3_600_000}),
    );
    merge(
        document,
        &format!("{schemas}/Check/properties/timeoutMs"),
        json!({"minimum": 10, "maximum": 3_600_000}),
    );
    for field in ["failures", "successes"] {
        merge(
            document,
            &format!("{schemas}/Check/properties/{field}"),
            json!({"minimum": 1, "maximum": 100}),
        );
    }
    set(document, &format!("{schemas}/RegisterRequest/properties/services"), services_schema(false));
    merge(
        document,
        &format!("{schemas}/RegisterRequest/properties/ttlMs"),
        json!({"minimum": muster_core::node::MIN_TTL.as_millis() as u64, "maximum": muster_core::node::MAX_TTL.as_millis() as u64}),
    );
    merge(document, &format!("{schemas}/UpdateRequest/properties/address"), address);
    set(document, &format!("{schemas}/UpdateRequest/properties/services"), services_schema(true));
    // At least one field to change, given (not null).
    let one_of_each: Vec<Value> = ["address", "services", "metadata", "status"]
        .iter()
        .map(|field| json!({"required": [field], "properties": {*field: {"not": {"type": "null"}}}}))
        .collect();
    merge(document, &format!("{schemas}/UpdateRequest"), json!({"anyOf": one_of_each}));
    merge(
        document,
        &format!("{schemas}/InstanceRequest/properties/name"),
        json!({"pattern": schema::SERVICE_NAME}),
    );
    merge(document, &format!("{schemas}/InstanceRequest/properties/ip"), json!({"pattern": schema::host()}));
    merge(
        document,
        &format!("{schemas}/InstanceRequest/properties/metadata"),
        json!({
            "maxProperties": 63,
            "propertyNames": {"pattern": schema::METADATA_KEY, "not": {"const": "muster.json"}},
            "additionalProperties": {"maxLength": 1024},
        }),
    );

    let node_id = json!({"type": "string", "pattern": schema::NODE_ID});
    let service_name = json!({"type": "string", "pattern": schema::SERVICE_NAME});
    let revision = json!({"type": "integer", "minimum": 0, "maximum": u64::MAX});
    for (path, method) in
        [("/v1/nodes/{id}", "put"), ("/v1/nodes/{id}", "patch"), ("/v1/nodes/{id}/heartbeat", "put")]
    {
        parameter(document, path, method, "id", node_id.clone());
    }
    for (path, method) in [
        ("/resolve/{name}", "get"),
        ("/v1/services/{name}/instances", "get"),
        ("/services/{name}/instances", "delete"),
    ] {
        parameter(document, path, method, "name", service_name.clone());
    }
    parameter(
        document,
        "/services/{name}/instances",
        "delete",
        "ip",
        json!({"type": "string", "pattern": schema::host()}),
    );
    parameter(
        document,
        "/services/{name}/instances",
        "delete",
        "port",
        json!({"type": "integer", "minimum": 1, "maximum": 65535}),
    );
    let instances = "/v1/services/{name}/instances";
    parameter(document, instances, "get", "version", json!({"type": "string", "pattern": schema::VERSION}));
    parameter(
        document,
        instances,
        "get",
        "versionReq",
        json!({"type": "string", "pattern": schema::VERSION_REQ}),
    );
    parameter(document, instances, "get", "status", json!({"$ref": "#/components/schemas/NodeStatus"}));
    parameter(document, instances, "get", "index", revision.clone());
    parameter(document, instances, "get", "wait", json!({"type": "string", "pattern": schema::WAIT}));
    parameter(document, "/v1/watch", "get", "after", revision);
    parameter(document, "/v1/watch", "get", "service", service_name);
    parameter(
        document,
        "/v1/watch",
        "get",
        "Last-Event-ID",
        json!({"type": "string", "pattern": schema::REVISION_TEXT}),
    );

    // Access control: token names and rule patterns as the server checks them.
    let token_name = json!({"type": "string", "pattern": schema::TOKEN_NAME});
    parameter(document, "/v1/acl/tokens/{name}", "delete", "name", token_name.clone());
    merge(document, &format!("{schemas}/CreateTokenRequest/properties/name"), token_name);
    merge(
        document,
        &format!("{schemas}/CreateTokenRequest/properties/description"),
        json!({"maxLength": 1024}),
    );
    merge(document, &format!("{schemas}/CreateTokenRequest/properties/rules"), json!({"maxItems": 256}));
    merge(document, &format!("{schemas}/Pattern"), json!({"pattern": schema::ACL_PATTERN}));
    merge(document, &format!("{schemas}/Rule"), json!({"additionalProperties": false}));
    merge(
        document,
        "/components",
        json!({"securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description": "An ACL token (also accepted as X-Muster-Token); needed when the server runs with --acl"}}}),
    );
    merge(document, "", json!({"security": [{}, {"token": []}]}));

    // One server-sent event: its name, its id (the revision) and its JSON data.
    set(
        document,
        "/paths/~1v1~1watch/get/responses/200/content/text~1event-stream/schema",
        json!({
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"type": "string", "enum": ["registered", "updated", "deregistered", "resync", "peer", "error"]},
                "id": {"type": "string", "pattern": schema::REVISION_TEXT},
                "retry": {"type": "integer"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"oneOf": [
                        {"$ref": "#/components/schemas/DiscoveryEvent"},
                        {"$ref": "#/components/schemas/ResyncData"},
                        {"$ref": "#/components/schemas/ErrorDetail"},
                    ]},
                },
            },
        }),
    );

    // Statuses the connection layer and the store may answer on any route.
    let Some(Value::Object(paths)) = document.get_mut("paths") else { return };
    for (path, operations) in paths.iter_mut() {
        let Value::Object(operations) = operations else { continue };
        for (method, operation) in operations.iter_mut() {
            let Some(Value::Object(responses)) = operation.get_mut("responses") else { continue };
            let mut add = |status: &str, description: &str| {
                responses.entry(status.to_owned()).or_insert_with(|| error(description));
            };
            add("414", "The request target is too long");
            add("421", "The Host header names a host this server does not answer for");
            if !matches!(path.as_str(), "/health" | "/ready") {
                add("401", "Access control is on and the request has no valid token");
                add("403", "The token does not grant this (the message names the permission)");
                add("429", "Too many requests from this client (see Retry-After)");
            }
            add("431", "The request headers are too large");
            if matches!(method.as_str(), "post" | "put" | "patch") {
                add("400", "Invalid input (the message names the field)");
                add("408", "The request body did not arrive in time");
                add("413", "The request body is too large");
                add("415", "The body is not sent as application/json");
            }
            if path.contains('{') || path.starts_with("/v1/") {
                add("400", "Invalid input (the message names the field)");
            }
            if !matches!(path.as_str(), "/health" | "/metrics" | "/openapi.json") {
                add("503", "The store is unreachable");
            }
        }
    }
}

/// Replaces the schema of one parameter of one operation.
fn parameter(document: &mut Value, path: &str, method: &str, name: &str, schema: Value) {
    let pointer = format!("/paths/{}/{method}/parameters", path.replace('~', "~0").replace('/', "~1"));
    let Some(Value::Array(parameters)) = document.pointer_mut(&pointer) else {
        panic!("the OpenAPI document has no parameters at {pointer}")
    };
    let Some(parameter) = parameters.iter_mut().find(|p| p["name"] == name) else {
        panic!("{method} {path} has no parameter {name}")
    };
    parameter["schema"] = schema;
}
