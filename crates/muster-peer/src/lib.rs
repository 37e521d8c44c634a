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
pub mod events;
mod peer;
mod service;
mod streams;

pub use convert::{from_json, to_json};
pub use events::{EventBus, PeerEvent, listener};
pub use peer::{Interface, Peer, PeerConfig, PeerError, RemotePeer, TaskOverwrite};
pub use service::{DeclarationError, Output, Service, ServiceBuilder};
pub use streams::ReadableStream;
