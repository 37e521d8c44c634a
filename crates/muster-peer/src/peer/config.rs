//! A peer's settings.

use std::time::Duration;

use crate::wire::Limits;

/// Settings of a peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer's id (a random UUID when absent).
    pub id: Option<String>,
    /// How long a request waits for its response (Netron: 5 s).
    pub request_timeout: Duration,
    /// How long opening a connection and its handshake may take.
    pub connect_timeout: Duration,
    /// Frame size and nesting limits of incoming packets.
    pub limits: Limits,
    /// Tell connectors they may subscribe to service announcements.
    pub allow_service_events: bool,
    /// Chunks a stream may hold that its reader has not taken yet (Netron: 10,000).
    pub stream_buffer: usize,
    /// Streams one connection may have open at once.
    pub max_streams: usize,
    /// Inactivity limit of streams that are not live (Netron's `streamTimeout`, 60 s).
    pub stream_timeout: Duration,
    /// Requests one connection may have running at once; more are answered with an error.
    pub max_concurrent_requests: usize,
    /// Connections made by [`Peer::connect`](crate::Peer::connect) are opened again after they break: at most this many
    /// attempts in a row (`None`: without end; `Some(0)`: never).
    pub max_reconnect_attempts: Option<u32>,
    /// The first delay before reconnecting; it doubles with each failed attempt, up to 30 s, each
    /// delay spread by ±20 % (jitter).
    pub reconnect_delay: Duration,
    /// Connections [`Peer::listen`](crate::Peer::listen) serves at once; more are closed as they arrive (counted in
    /// `netron_connections_refused_total`). Connections this peer opens are not counted.
    pub max_connections: usize,
    /// Bytes of frames one connection may have waiting for its socket. A remote peer that sends
    /// requests but does not read the answers reaches it and is disconnected (counted in
    /// `netron_slow_peers_disconnected_total`, logged) instead of growing this peer's memory;
    /// stream writers wait well below it.
    pub max_queued_bytes: usize,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            id: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            allow_service_events: false,
            stream_buffer: 10_000,
            max_streams: 1024,
            stream_timeout: Duration::from_secs(60),
            max_concurrent_requests: 1024,
            max_reconnect_attempts: Some(0),
            reconnect_delay: Duration::from_secs(1),
            max_connections: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What [`Peer::add_task`](crate::Peer::add_task) does when a task of that name exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOverwrite {
    /// The new function replaces the old one.
    Replace,
    /// The old one stays; the call reports `false`.
    Skip,
    /// The call fails.
    Error,
}
