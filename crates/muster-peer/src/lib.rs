//! A Netron peer in Rust, speaking Netron's own wire protocol (`@devgrid/netron`,
//! `../shared/NETRON-PROTOCOL.md`) so that TypeScript Netron peers and Muster peers can call each
//! other's services.
//!
//! This crate is built bottom-up; today it holds the wire layer:
//!
//! - [`wire::Value`] — every value Netron's MessagePack dialect carries: JSON-like values,
//!   `undefined`, and the extension types (errors, dates, maps, sets, big integers, regular
//!   expressions, longs, and Netron's `Definition`, `Reference`, `StreamReference`).
//! - [`wire::encode`] / [`wire::decode`] — the dialect, byte for byte as Netron writes it, and a
//!   decoder that returns an error — never panics, never allocates beyond the input's size — on
//!   any bytes, with a nesting-depth limit.
//! - [`wire::Packet`] — one WebSocket frame: id, flags (type, end of stream, live, impulse, error),
//!   one value, and the stream trailer; [`wire::PacketIds`], the one id counter with Netron's
//!   wraparound.

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
