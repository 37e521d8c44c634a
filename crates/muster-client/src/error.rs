//! What went wrong talking to the registry, by kind, with the cause kept.

use std::sync::Arc;

/// A cause kept with an error (cheap to clone).
pub type Source = Arc<dyn std::error::Error + Send + Sync>;

/// What went wrong talking to the registry. Match on the kind; [`std::error::Error::source`] gives
/// the underlying cause.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection could be made (refused, no route, name not resolved, TLS): nothing was sent.
    /// Retrying may succeed.
    #[error("no registry at {url} ({detail})")]
    Connect {
        /// The registry's base URL.
        url: String,
        /// The innermost cause, for people.
        detail: String,
        /// The cause.
        #[source]
        source: Option<Source>,
    },
    /// No answer within the request timeout. Retrying may succeed.
    #[error("no answer from the registry at {url} in time")]
    Timeout {
        /// The registry's base URL.
        url: String,
        /// The cause.
        #[source]
        source: Option<Source>,
    },
    /// The connection broke during an answer or a watch, or the watch ended. Retrying may succeed.
    #[error("the connection to the registry at {url} broke: {detail}")]
    Disconnected {
        /// The registry's base URL.
        url: String,
        /// What happened.
        detail: String,
        /// The cause.
        #[source]
        source: Option<Source>,
    },
    /// The answer was not the registry's (another server on that port, a body that does not
    /// decode).
    #[error("unreadable answer from {url} ({detail}); is it a Muster registry?")]
    Unreadable {
        /// The registry's base URL.
        url: String,
        /// What could not be read.
        detail: String,
        /// The cause.
        #[source]
        source: Option<Source>,
    },
    /// The registry answered with an error status and its JSON error body.
    #[error("registry answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error body's code (`not_found`, `invalid_input`, ...; `unknown` without a body).
        code: String,
        /// The error body's message.
        message: String,
    },
    /// The client was given something invalid (a bad base URL, a bad environment variable).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl ClientError {
    /// True when retrying later may succeed (no connection, no answer in time, a broken
    /// connection, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::Disconnected { .. } => true,
            Self::Api { status, .. } => *status >= 500,
            Self::Unreadable { .. } | Self::InvalidInput(_) => false,
        }
    }

    /// True when the registry does not know the node.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }

    /// True when no registry could be reached at all (no connection, or no answer in time).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Timeout { .. })
    }

    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn disconnected(url: &str, detail: impl Into<String>, source: Option<Source>) -> Self {
        Self::Disconnected { url: url.to_owned(), detail: detail.into(), source }
    }
}
