//! Load balancing, circuit breakers and failover over the instances of a service — whatever
//! carries the calls. The HTTP SDK (`muster-client`) and the Netron peer (`muster-peer`) both call
//! instances through [`Failover`]; each describes its instances as [`Endpoint`]s.
//!
//! - [`select`]: selectors that order the instances for one call (the first is the choice, the
//!   rest the failover sequence): round-robin, random, smooth weighted, least outstanding.
//! - [`failover`]: a circuit breaker per instance and the loop that tries instances in order.

pub mod failover;
pub mod select;

pub use failover::{BreakerConfig, CircuitState, Failover, FailoverError, Retryable};

/// One instance of a service, as balancing sees it (shared across threads while a call is in
/// flight).
pub trait Endpoint: Sync {
    /// Its id (its node's id), unique among the service's instances.
    fn id(&self) -> &str;
    /// The service it is an instance of (breakers are kept per service and instance).
    fn service(&self) -> &str;
    /// Its weight for weighted selection (absent counts as 1).
    fn weight(&self) -> Option<u32> {
        None
    }
    /// It may be called now (its status is `UP`).
    fn is_up(&self) -> bool;
}
