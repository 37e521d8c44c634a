//! The wire layer: Netron's MessagePack dialect and its packets.

mod codec;
mod packet;
mod value;

pub use codec::{DecodeError, EncodeError, MAX_DEPTH, decode, decode_with_depth, encode};
pub use packet::{DEFAULT_MAX_FRAME, Limits, Packet, PacketError, PacketIds, PacketType};
pub use value::{Definition, ErrorKind, JsError, StreamReference, Value};
