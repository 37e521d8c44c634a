//! Muster's domain: what a node, a service and an event are, the rules they follow, and the
//! [`Registry`] contract every store implements.
//!
//! This crate does no I/O. Its layout:
//!
//! - [`name`] — node ids and the name rules for services, versions and metadata.
//! - [`address`] — validated `host:port` addresses (IPv6 in brackets).
//! - [`service`] — [`ServiceInfo`], and the exact and semver queries that find services.
//! - [`node`] — [`NodeInfo`] as stored, [`Registration`] and [`NodeUpdate`] as written.
//! - [`event`] — [`DiscoveryEvent`]s, [`Revision`]s and watch items.
//! - [`options`] — the Titan discovery options with their defaults, and the agent's retry policy.
//! - [`backoff`] — the exponential backoff with jitter every retry and reconnect loop uses.
//! - [`registry`] — the [`Registry`] trait and the capabilities a backend may expose.
//! - [`log`] — the watch component: the event log, the mirror of active nodes, watch streams.
//! - [`schema`] — the validation rules as JSON Schema patterns for the API's document.
//! - [`acl`] — token policies (read, write, admin by service and node patterns) and token stores.
//! - [`error`] — one classified [`Error`] type.
//! - [`time`] — wall-clock milliseconds that follow tokio's (pausable) clock.

pub mod acl;
pub mod address;
pub mod backoff;
pub mod error;
pub mod event;
pub mod log;
pub mod name;
pub mod node;
pub mod options;
pub mod registry;
pub mod schema;
pub mod service;
pub mod time;

pub use address::{Address, AddressUrl};
pub use backoff::{Backoff, InvalidBackoff};
pub use error::{Error, ErrorKind, Result};
pub use event::{
    DeregisterReason, DiscoveryEvent, EventKind, Revision, ServiceFilter, Snapshot, WatchEvent, WatchStart,
};
pub use log::{EventLog, LogSource, Mirror};
pub use name::NodeId;
pub use node::{
    CHECK_OUTPUT, CHECK_SINCE, CHECK_TYPE, NodeInfo, NodeStatus, NodeUpdate, Registration, StoredServices,
};
pub use options::{DiscoveryOptions, Preset, RetryPolicy};
pub use registry::{
    Change, ChangeChannel, FleetLeadership, HeartbeatOutcome, Registry, SelfPreservation, WatchStream,
};
pub use service::{Metadata, ServiceInfo, ServiceList, ServiceQuery, VersionQuery};
