//! A Netron peer in Rust, speaking Netron's own wire protocol (`@devgrid/netron`,
//! `../shared/NETRON-PROTOCOL.md`) so that TypeScript Netron peers and Muster peers can call each
//! other's services.
//!
//! - [`wire`] — Netron's MessagePack dialect, byte for byte as Netron writes it (`codec.rs` writes,
//!   `codec/decode.rs` reads: never a panic, never an allocation beyond the input's size, a nesting
//!   limit), every value it carries ([`wire::Value`]) and its packets ([`wire::Packet`]).
//! - `service.rs` — services a peer exposes ([`ServiceBuilder`], or `#[service]` on an `impl`
//!   block) and their definitions.
//! - `peer/` — [`Peer`]: listening and connecting (`connect.rs`), one connection's reader and
//!   writer (`connection.rs`), answering a request (`dispatch.rs`), Netron's core tasks
//!   (`tasks.rs`), the caller's side ([`RemotePeer`], [`Interface`] in `remote.rs`), settings and
//!   errors.
//! - [`events`] — the event bus with Netron's emit semantics, and the peer's typed events.
//! - `streams.rs` — Netron streams on the receiving side.
//! - `discovery.rs` — peers in a fleet through a Muster registry, and calls by service name.
//! - [`middleware`] — checks that see each request before it runs.
//! - `metrics.rs` — Prometheus metrics and the optional probe endpoint; `convert.rs` — wire values
//!   to and from JSON; `sync.rs` — locks that survive a panic.

pub mod wire;

mod convert;
mod discovery;
pub mod events;
mod metrics;
pub mod middleware;
mod peer;
mod service;
mod streams;
mod sync;

pub use convert::{from_json, from_tagged_json, to_json};
pub use discovery::{Instance, NamedService};
pub use events::{EventBus, PeerEvent, listener};
pub use middleware::{CallInfo, Middleware};
pub use peer::{Interface, Peer, PeerConfig, PeerError, RemotePeer, TaskOverwrite};
pub use service::{DeclarationError, Output, Service, ServiceBuilder};
pub use streams::ReadableStream;

/// Exposes an `impl` block as a Netron service (see the `muster-peer-macros` crate):
///
/// ```
/// use muster_peer::wire::JsError;
///
/// struct Calculator;
///
/// #[muster_peer::service(name = "calculator", version = "1.0.0")]
/// impl Calculator {
///     pub async fn add(&self, a: f64, b: f64) -> f64 {
///         a + b
///     }
///
///     pub fn divide(&self, a: f64, b: f64) -> Result<f64, JsError> {
///         if b == 0.0 { Err(JsError::new("division by zero")) } else { Ok(a / b) }
///     }
/// }
///
/// let service = Calculator.into_service();
/// assert_eq!(service.qualified_name(), "calculator@1.0.0");
/// // `CalculatorClient` calls a remote calculator: `Calculator::client(interface).add(5.0, 3.0).await`.
/// ```
pub use muster_peer_macros::service;
