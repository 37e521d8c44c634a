//! The seed-003 registry routes, with their exact JSON shapes.

use serde::{Deserialize, Serialize};

/// `POST /register` and `POST /heartbeat` bodies (`metadata` only on registration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceRequest {
    /// Service name.
    pub name: String,
    /// IP address (or host name).
    pub ip: String,
    /// Port: a number, or a string of digits (as read from an environment variable).
    #[serde(deserialize_with = "port_number_or_text")]
    #[schema(schema_with = port_schema)]
    pub port: u16,
    /// Free-form metadata (`version` is taken as the service version), kept as sent.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// An instance as the seed-003 routes show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompatInstance {
    /// Instance id.
    pub id: String,
    /// Service name (absent in `/resolve` listings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// IP address or host.
    pub ip: String,
    /// Port.
    pub port: u16,
    /// `healthy` for active instances.
    pub status: String,
    /// ISO-8601 time of registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<String>,
    /// ISO-8601 time of the last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Answer to `POST /register` and `POST /heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceResponse {
    /// `Service registered successfully` or `Heartbeat updated`.
    pub message: String,
    /// The instance.
    pub instance: CompatInstance,
    /// ISO-8601 time of the response.
    pub timestamp: String,
}

/// Answer to `GET /resolve/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolveResponse {
    /// The service.
    pub service_name: String,
    /// Number of instances.
    pub instance_count: usize,
    /// Healthy instances.
    pub instances: Vec<CompatInstance>,
    /// ISO-8601 time of the response.
    pub timestamp: String,
}

/// One service in `GET /services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompatService {
    /// Instances.
    pub instance_count: usize,
    /// Healthy instances.
    pub healthy_count: usize,
    /// The instances.
    pub instances: Vec<CompatInstance>,
}

/// Answer to `GET /services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesResponse {
    /// Number of services.
    pub total_services: usize,
    /// Number of instances.
    pub total_instances: usize,
    /// Number of healthy instances.
    pub total_healthy_instances: usize,
    /// By service name.
    pub services: std::collections::BTreeMap<String, CompatService>,
    /// ISO-8601 time of the response.
    pub timestamp: String,
}

/// Answer to `GET /stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsResponse {
    /// Registrations since start.
    pub total_registrations: u64,
    /// Heartbeats since start.
    pub total_heartbeats: u64,
    /// Instances removed for missing heartbeats since start.
    pub total_cleanups: u64,
    /// Services with active instances.
    pub active_services: usize,
    /// Active instances.
    pub active_instances: usize,
    /// Names of active services.
    pub services: Vec<String>,
    /// Seconds since start.
    pub uptime: u64,
    /// The heartbeat timeout, e.g. `10s`.
    pub heartbeat_timeout: String,
    /// The cleanup interval, e.g. `5s`.
    pub cleanup_interval: String,
    /// True while expiry is paused by self-preservation (an addition to the seed-003 shape).
    #[serde(default)]
    pub self_preservation: bool,
    /// ISO-8601 time of the response.
    pub timestamp: String,
}

/// Answer to `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthResponse {
    /// `healthy`.
    pub status: String,
    /// ISO-8601 time of the response.
    pub timestamp: String,
    /// `service-registry`.
    pub service: String,
    /// Server version.
    pub version: String,
    /// Seconds since start.
    pub uptime: u64,
}

/// Answer to `DELETE /services/{name}/instances?ip=&port=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemovedResponse {
    /// `Service instance removed`.
    pub message: String,
    /// The removed instance's id.
    pub id: String,
    /// ISO-8601 time of the response.
    pub timestamp: String,
}

/// A port sent as a number or as a string of digits (`3001` or `"3001"`).
pub fn port_number_or_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port<'a> {
        Number(u64),
        Float(f64),
        #[serde(borrow)]
        Text(std::borrow::Cow<'a, str>),
    }
    let invalid = |shown: &dyn std::fmt::Display| {
        serde::de::Error::custom(format!("port must be a number from 1 to 65535, got {shown}"))
    };
    match Port::deserialize(deserializer)
        .map_err(|_| invalid(&"a value that is neither a number nor text"))?
    {
        Port::Number(n) => u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| invalid(&n)),
        Port::Float(f) if f.fract() == 0.0 && (1.0..=65535.0).contains(&f) => Ok(f as u16),
        Port::Float(f) => Err(invalid(&f)),
        Port::Text(text) => text
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0 && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| invalid(&format!("{text:?}"))),
    }
}

fn port_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::new(Type::Integer))
                .minimum(Some(1))
                .maximum(Some(65535)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::new(Type::String))
                .pattern(Some(muster_core::schema::port_text())),
        )
        .description(Some("Port: a number, or a string of digits"))
        .build()
        .into()
}
