//! Why a peer operation failed.

use crate::wire::{JsError, Value};

/// Why a peer operation failed: a kind a caller can match on (more may be added).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The remote peer answered with an error.
    #[error("the remote peer answered: {}: {}", .0.name, .0.message)]
    Remote(Box<JsError>),
    /// The remote peer answered with an error value that is not an `Error`.
    #[error("the remote peer answered with an error value: {0:?}")]
    RemoteValue(Box<Value>),
    /// No response within the request timeout.
    #[error("Request timeout exceeded")]
    Timeout,
    /// The connection is closed (or the peer stopped) before the response came.
    #[error("the connection to the remote peer is closed")]
    Closed,
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The remote peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No service matches the query.
    #[error("Unknown service: {0}")]
    UnknownService(String),
    /// [`crate::Peer::expose_service`]: a service of that qualified name is exposed already.
    #[error("Service already exposed: {0}")]
    ServiceExists(String),
    /// [`crate::Peer::add_task`] with [`crate::TaskOverwrite::Error`]: a task of that name exists.
    #[error("Task already exists: {0}")]
    TaskExists(String),
    /// [`crate::Peer::add_task`]: the name is one of Netron's core tasks, answered by every peer.
    #[error("{0} is one of Netron's core tasks")]
    CoreTask(String),
    /// A discovery operation on a peer that did not enable discovery.
    #[error("discovery is not enabled on this peer")]
    DiscoveryOff,
    /// The registry (discovery) failed, or refused a query; `kind` is the registry's error kind.
    #[error("{message}")]
    Registry {
        /// The registry's classification (unavailable, invalid input, ...).
        kind: muster_core::ErrorKind,
        /// What it said.
        message: String,
    },
    /// A setting of the peer's configuration is refused (e.g. a `reconnect_delay` under 1 ms or
    /// over the 30 s ceiling).
    #[error("invalid peer configuration: {0}")]
    Config(String),
    /// Arguments that cannot be written as Netron values (a typed call's serialization failed).
    #[error("the arguments cannot be sent: {0}")]
    Arguments(String),
}

impl From<muster_core::Error> for PeerError {
    fn from(error: muster_core::Error) -> Self {
        Self::Registry { kind: error.kind(), message: error.to_string() }
    }
}
