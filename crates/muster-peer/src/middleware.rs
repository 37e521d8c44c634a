//! Middleware: a check that sees each request (who, what kind, which service, which member, the
//! arguments) before it runs and may refuse it (seed 004's `AuthMiddleware`). Set per peer with
//! [`crate::Peer::use_middleware`] or per service with [`crate::ServiceBuilder::middleware`]; the
//! connecting peer's query parameters (`ws://host:port?token=...`) are part of what it sees.
//!
//! A peer's middleware sees **every** request a remote peer sends: calls and property reads and
//! writes (`CALL`, `GET`, `SET`) on this peer's services and on services other peers exposed here,
//! and tasks (`TASK`) — Netron's core tasks included: `abilities` (the handshake of every
//! connection, which lists the services), `subscribe`, `expose_service`, `unref_service`, ... and
//! the ones added with [`crate::Peer::add_task`]. A token check therefore guards everything; one
//! that lets strangers see the service list allows `TASK` `abilities` explicitly. A service's own
//! middleware sees the requests to that service. Stream chunks are not requests (they carry the
//! result of a call this peer made) and are not checked.

use std::collections::HashMap;

use crate::wire::{JsError, PacketType, Value};

/// One call, as middleware sees it.
#[derive(Debug)]
pub struct CallInfo<'a> {
    /// The calling peer's id.
    pub peer_id: &'a str,
    /// The query parameters the calling peer connected with (besides `id`).
    pub params: &'a HashMap<String, String>,
    /// The service's qualified name (empty for a task).
    pub service: &'a str,
    /// The method or property, or the task's name.
    pub member: &'a str,
    /// GET, SET, CALL or TASK.
    pub kind: PacketType,
    /// The arguments (the value, for SET).
    pub args: &'a [Value],
}

/// A check of calls; an error refuses the call and is what the caller receives.
pub trait Middleware: Send + Sync + 'static {
    /// `Ok` lets the call run.
    fn check(&self, call: &CallInfo<'_>) -> Result<(), JsError>;
}

impl<F> Middleware for F
where
    F: Fn(&CallInfo<'_>) -> Result<(), JsError> + Send + Sync + 'static,
{
    fn check(&self, call: &CallInfo<'_>) -> Result<(), JsError> {
        self(call)
    }
}

/// The query parameters of a request target (`a=1&b=2`), `id` included.
pub(crate) fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
