//! Failover with per-instance circuit breakers (`muster-balance`), over the instances the
//! resolver knows.
//!
//! [`Client::call_with_failover`] takes the `UP` instances of a service from the resolver, orders
//! them with the client's [`Selector`](crate::select::Selector), and calls them one after the other
//! until one succeeds. A retryable error ([`Retryable`]: refused connection, timeout, 5xx) moves on
//! to the next candidate; any other error is the answer. Each instance has a circuit breaker: after
//! [`BreakerConfig::failures`] retryable failures in a row it opens and the instance is skipped;
//! after [`BreakerConfig::cool_down`] it half-opens and lets one trial call through, which closes
//! it on success or opens it again on failure.

use std::future::Future;

use muster_api::v1::Instance;
use muster_core::VersionQuery;

pub use muster_balance::{BreakerConfig, CircuitState, Failover, Retryable};

use crate::{Client, ClientError};

/// Why [`Client::call_with_failover`] did not succeed (the lookup fails with a [`ClientError`]).
pub type FailoverError<E> = muster_balance::FailoverError<E, ClientError>;

impl Retryable for ClientError {
    fn is_retryable(&self) -> bool {
        ClientError::is_retryable(self)
    }
}

impl From<std::convert::Infallible> for ClientError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl Client {
    /// Calls `call` on the `UP` instances of `service` in the selector's order until one succeeds,
    /// skipping instances whose circuit is open; see [the module](crate::failover).
    pub async fn call_with_failover<T, E, F, Fut>(
        &self,
        service: &str,
        mut call: F,
    ) -> Result<T, FailoverError<E>>
    where
        F: FnMut(Instance) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable,
    {
        let resolved = self
            .instances(service, &VersionQuery::Any)
            .await
            .map_err(muster_balance::FailoverError::Registry)?;
        self.inner
            .failover
            .call(service, &resolved.instances, |instance| call(instance.clone()))
            .await
            .map_err(|e| e.lookup_as())
    }

    /// The circuit state of one instance of `service` (closed when never called).
    pub fn circuit_state(&self, service: &str, instance_id: &str) -> CircuitState {
        self.inner.failover.circuit_state(service, instance_id)
    }
}
