//! Building an agent: its node's id, address, services and options, validated once.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use muster_core::options::OptionsWarning;
use muster_core::{
    Address, DiscoveryOptions, Error, Metadata, NodeId, NodeStatus, Registry, Result, ServiceInfo,
};
use tokio::sync::{Mutex, OnceCell};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handlers::Handlers;
use crate::{Agent, DiscoveryCache, Inner, Lifecycle, OwnNode};

/// Builds the address from `HOST` and `PORT` as returned by `lookup`, defaulting to
/// `localhost` and `3000` (the Titan rule).
///
/// `lookup` is usually `|k| std::env::var(k).ok()`; tests pass a map instead of touching the
/// environment.
pub fn detect_address(lookup: impl Fn(&str) -> Option<String>) -> Result<Address> {
    let host = lookup("HOST").filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".to_owned());
    let port = lookup("PORT").filter(|p| !p.is_empty()).unwrap_or_else(|| "3000".to_owned());
    let port: u16 =
        port.parse().map_err(|_| Error::invalid("PORT", format!("{port:?} is not a port number")))?;
    Address::from_parts(&host, port)
}

/// How the agent reopens its watch: from 100 ms (or the heartbeat interval, if shorter) doubling
/// up to the heartbeat interval, ±20 %.
fn reconnect_backoff(heartbeat_interval: std::time::Duration) -> Result<muster_core::Backoff> {
    let base = std::time::Duration::from_millis(100).min(heartbeat_interval);
    muster_core::Backoff::try_new(base, heartbeat_interval, 0.2)
        .map_err(|e| Error::invalid("heartbeat interval", e))
}

/// Configures and builds an [`Agent`].
#[must_use]
pub struct AgentBuilder {
    /// The store.
    registry: Arc<dyn Registry>,
    /// The Titan options.
    options: DiscoveryOptions,
    /// Explicit node id; generated when absent.
    node_id: Option<NodeId>,
    /// Prefix for generated node ids.
    node_id_prefix: String,
    /// Explicit address; detected from `HOST`/`PORT` when absent.
    address: Option<Address>,
    /// Initial services.
    services: Vec<ServiceInfo>,
    /// Node-level metadata.
    metadata: Metadata,
    /// Initial status.
    status: NodeStatus,
    /// Whether handlers skip events about this agent's own node.
    filter_own_events: bool,
}

impl AgentBuilder {
    /// A builder over `registry` with the Titan defaults.
    pub(crate) fn new(registry: Arc<dyn Registry>) -> Self {
        Self {
            registry,
            options: DiscoveryOptions::default(),
            node_id: None,
            node_id_prefix: crate::DEFAULT_NODE_ID_PREFIX.to_owned(),
            address: None,
            services: Vec::new(),
            metadata: Metadata::new(),
            status: NodeStatus::Up,
            filter_own_events: true,
        }
    }

    /// Replaces the discovery options (validated in [`AgentBuilder::build`]).
    pub fn options(mut self, options: DiscoveryOptions) -> Self {
        self.options = options;
        self
    }
    /// Uses this node id instead of generating one.
    pub fn node_id(mut self, node_id: NodeId) -> Self {
        self.node_id = Some(node_id);
        self
    }
    /// Prefix for the generated node id (`<prefix>-<pid>-<ms>-<random>`).
    pub fn node_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.node_id_prefix = prefix.into();
        self
    }
    /// The address this node is reached at (required). Titan's rule — `HOST` and `PORT` from the
    /// environment, `localhost:3000` by default — is [`detect_address`], which the application
    /// calls: `.address(detect_address(|k| std::env::var(k).ok())?)`. The library reads no
    /// environment of its own.
    pub fn address(mut self, address: Address) -> Self {
        self.address = Some(address);
        self
    }
    /// Adds a service (duplicates of name and version are dropped).
    pub fn service(mut self, service: ServiceInfo) -> Self {
        if !self.services.iter().any(|s| s.same_identity(&service)) {
            self.services.push(service);
        }
        self
    }
    /// Node-level metadata.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
    /// The status reported with heartbeats (default `UP`).
    pub fn status(mut self, status: NodeStatus) -> Self {
        self.status = status;
        self
    }
    /// Whether handlers skip events about this node (default true, as in Titan).
    pub fn filter_own_events(mut self, filter: bool) -> Self {
        self.filter_own_events = filter;
        self
    }

    /// Validates everything and builds the agent. Logs a warning for risky but legal options.
    /// Refused (invalid input) without an [`address`](Self::address).
    pub fn build(self) -> Result<Agent> {
        for OptionsWarning(warning) in self.options.validate()? {
            tracing::warn!("{warning}");
        }
        muster_core::service::validate_services(&self.services)?;
        muster_core::service::validate_metadata(&self.metadata)?;
        let address = self.address.ok_or_else(|| {
            Error::invalid(
                "address",
                "missing: set it with .address(); detect_address() reads Titan's HOST and PORT",
            )
        })?;
        let node_id = self.node_id.unwrap_or_else(|| NodeId::generate(&self.node_id_prefix));
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            registry: self.registry,
            retry: self.options.retry_policy()?,
            reconnect: reconnect_backoff(self.options.heartbeat_interval)?,
            options: self.options,
            filter_own_events: self.filter_own_events,
            own: RwLock::new(OwnNode {
                node_id,
                address,
                services: self.services,
                metadata: self.metadata,
                status: self.status,
            }),
            write_lock: Mutex::new(()),
            registered: AtomicBool::new(false),
            lifecycle: Mutex::new(Lifecycle::Created),
            stopped: OnceCell::new(),
            cancel: cancel.clone(),
            tasks: TaskTracker::new(),
            handlers: Arc::new(Handlers::default()),
            cache: Arc::new(DiscoveryCache::default()),
        });
        Ok(Agent { inner, _guard: Arc::new(cancel.drop_guard()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_detection() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(detect_address(env(&[])).unwrap().as_str(), "localhost:3000");
        assert_eq!(
            detect_address(env(&[("HOST", "10.1.2.3"), ("PORT", "8080")])).unwrap().as_str(),
            "10.1.2.3:8080"
        );
        assert_eq!(detect_address(env(&[("HOST", "::1")])).unwrap().as_str(), "[::1]:3000");
        assert!(detect_address(env(&[("PORT", "http")])).unwrap_err().is_invalid_input());
        assert!(detect_address(env(&[("PORT", "0")])).is_err());
    }

    #[test]
    fn the_watch_reconnects_within_one_heartbeat_interval() {
        let ms = std::time::Duration::from_millis;
        let backoff = reconnect_backoff(ms(5000)).unwrap();
        assert_eq!((backoff.base(), backoff.max()), (ms(100), ms(5000)));
        let short = reconnect_backoff(ms(40)).unwrap();
        assert_eq!((short.base(), short.max()), (ms(40), ms(40)));
        let error = reconnect_backoff(std::time::Duration::from_micros(500)).unwrap_err();
        assert!(error.is_invalid_input() && error.to_string().contains("heartbeat interval"), "{error}");
    }
}
