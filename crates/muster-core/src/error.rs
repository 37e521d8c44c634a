//! The one error type of the registry contract, classified by kind.

use std::fmt;

/// What went wrong, in terms a caller can act on.
///
/// Retry loops and failover decide on the kind, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller sent something invalid; retrying the same input fails again.
    InvalidInput,
    /// The node (or other named thing) does not exist.
    NotFound,
    /// The store could not be reached or failed transiently; retrying may succeed.
    Unavailable,
    /// The operation conflicts with the current state (for example `start` after `stop`).
    Conflict,
    /// A configured limit was reached.
    LimitExceeded,
    /// The store returned data it should never hold, or an invariant broke.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidInput => "invalid input",
            Self::NotFound => "not found",
            Self::Unavailable => "store unavailable",
            Self::Conflict => "conflict",
            Self::LimitExceeded => "limit exceeded",
            Self::Internal => "internal error",
        })
    }
}

/// An error from the registry, a backend or the agent.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    /// The classification used by retry and failover logic.
    kind: ErrorKind,
    /// Human-readable description, naming the offending field or node.
    message: String,
    /// The underlying cause (I/O, protocol) when there is one.
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// Builds an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// An invalid value for `field`.
    pub fn invalid(field: &str, reason: impl fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidInput, format!("{field}: {reason}"))
    }

    /// No node with this id.
    pub fn node_not_found(node_id: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("node `{node_id}` not found"))
    }

    /// A write would add a node to a service that already has `max` other nodes.
    pub fn service_full(name: &str, others: usize, max: usize) -> Self {
        Self::new(
            ErrorKind::LimitExceeded,
            format!(
                "service `{name}` already has {others} instances; the limit (max instances per service) is {max}"
            ),
        )
    }

    /// The store is unreachable or failed transiently.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// The error's classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    /// True when the named node (or thing) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// True when the input was rejected by validation.
    pub fn is_invalid_input(&self) -> bool {
        self.kind == ErrorKind::InvalidInput
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_kind() {
        let e = Error::unavailable("connection refused");
        assert!(e.is_retryable() && !e.is_not_found() && !e.is_invalid_input());
        let e = Error::node_not_found("n1");
        assert!(e.is_not_found() && !e.is_retryable());
        assert_eq!(e.to_string(), "not found: node `n1` not found");
        let e = Error::invalid("address", "missing port");
        assert!(e.is_invalid_input());
        assert_eq!(e.message(), "address: missing port");
    }
}
