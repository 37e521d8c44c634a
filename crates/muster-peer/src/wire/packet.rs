//! One Netron packet per binary WebSocket frame:
//!
//! ```text
//! u32 BE id · u8 flags · one MessagePack value · (STREAM only) u32 BE stream id · u32 BE index
//! ```
//!
//! Flags: bits 0-3 the type, 0x10 end of stream, 0x20 live stream, 0x40 impulse (a request or
//! an unsolicited packet; clear on responses), 0x80 error (the value is the error).

use std::sync::atomic::{AtomicU32, Ordering};

use super::codec::{DecodeError, EncodeError, decode_with_depth, encode};
use super::value::Value;

/// What a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Defined by Netron, never answered.
    Ping = 0,
    /// Read a property: `[defId, name]`.
    Get = 1,
    /// Write a property: `[defId, name, value]`.
    Set = 2,
    /// Call a method: `[defId, name, ...args]`.
    Call = 3,
    /// Run a task: `[name, ...args]`.
    Task = 4,
    /// A stream chunk (with the stream trailer).
    Stream = 5,
    /// A stream failed: `{streamId, message}`.
    StreamError = 6,
    /// A stream was closed by its writer: `{streamId, reason}`.
    StreamClose = 7,
}

impl PacketType {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0 => Self::Ping,
            1 => Self::Get,
            2 => Self::Set,
            3 => Self::Call,
            4 => Self::Task,
            5 => Self::Stream,
            6 => Self::StreamError,
            7 => Self::StreamClose,
            _ => return None,
        })
    }
}

const EOS: u8 = 0x10;
const LIVE: u8 = 0x20;
const IMPULSE: u8 = 0x40;
const ERROR: u8 = 0x80;

/// One packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Its id (a response carries its request's).
    pub id: u32,
    /// Its type.
    pub kind: PacketType,
    /// A request or unsolicited packet (`false`: a response).
    pub impulse: bool,
    /// The value is an error.
    pub error: bool,
    /// The last chunk of a stream.
    pub eos: bool,
    /// A chunk of a live stream.
    pub live: bool,
    /// The value.
    pub data: Value,
    /// For STREAM packets: the stream id and the chunk's index.
    pub stream: Option<(u32, u32)>,
}

/// Why a frame is not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the five header bytes.
    #[error("a packet is at least 5 bytes long")]
    TooShort,
    /// Longer than the frame limit.
    #[error("a packet of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    /// The type bits name no type.
    #[error("packet type {0} is unknown")]
    UnknownType(u8),
    /// The value does not decode.
    #[error("the packet's value: {0}")]
    Value(#[from] DecodeError),
    /// A STREAM packet without its trailer.
    #[error("a stream packet lacks its stream id and index")]
    MissingTrailer,
    /// The value cannot be written.
    #[error("the packet's value cannot be written: {0}")]
    Encode(#[from] EncodeError),
}

/// Limits of [`Packet::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame decoded, in bytes ([`DEFAULT_MAX_FRAME`] by default). A peer reads a larger
    /// request up to twice this, answers it with a Netron error naming the limit, and keeps the
    /// connection; a frame over twice this closes the connection (as `ws` does).
    pub max_frame: usize,
    /// Deepest nesting of values.
    pub max_depth: usize,
}

/// The default largest frame: 100 MiB, what Netron's `ws` server and client accept (its
/// `maxPayload` default), so that any frame a TypeScript peer accepts, this one accepts too. A peer
/// open to strangers may want less: each connection may make it hold up to twice this (see
/// [`Limits::max_frame`]).
pub const DEFAULT_MAX_FRAME: usize = 100 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self { max_frame: DEFAULT_MAX_FRAME, max_depth: super::codec::MAX_DEPTH }
    }
}

impl Packet {
    /// A request of `kind` (impulse set).
    pub fn request(id: u32, kind: PacketType, data: Value) -> Self {
        Self { id, kind, impulse: true, error: false, eos: false, live: false, data, stream: None }
    }

    /// The answer to `self`: its id and type, impulse clear.
    pub fn response(&self, result: Result<Value, Value>) -> Self {
        let (data, error) = match result {
            Ok(value) => (value, false),
            Err(value) => (value, true),
        };
        Self {
            id: self.id,
            kind: self.kind,
            impulse: false,
            error,
            eos: false,
            live: false,
            data,
            stream: None,
        }
    }

    /// A stream chunk (`data` `null` with `eos` for the end).
    pub fn chunk(id: u32, stream_id: u32, index: u32, data: Value, live: bool, eos: bool) -> Self {
        Self {
            id,
            kind: PacketType::Stream,
            impulse: true,
            error: false,
            eos,
            live,
            data,
            stream: Some((stream_id, index)),
        }
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        let mut flags = self.kind as u8;
        for (set, bit) in [(self.eos, EOS), (self.live, LIVE), (self.impulse, IMPULSE), (self.error, ERROR)] {
            if set {
                flags |= bit;
            }
        }
        flags
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, PacketError> {
        // Room for the payload of a chunk at once: growing to it copies it once or twice more.
        let payload = match &self.data {
            Value::Bin(bytes) => bytes.len(),
            Value::Str(text) => text.len(),
            _ => 0,
        };
        let mut out = Vec::with_capacity(64 + payload);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(self.flags());
        encode(&self.data, &mut out)?;
        if self.kind == PacketType::Stream {
            let (stream_id, index) = self.stream.unwrap_or_default();
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(&index.to_be_bytes());
        }
        Ok(out)
    }

    /// The id, type and impulse flag of a frame, from its first five bytes, without decoding its
    /// value: enough to answer a request too large to decode.
    pub fn header(frame: &[u8]) -> Option<(u32, PacketType, bool)> {
        let header = frame.get(..5)?;
        let id = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = PacketType::from_bits(header[4] & 0x0f)?;
        Some((id, kind, header[4] & IMPULSE != 0))
    }

    /// Reads a frame. Bytes after the value of a non-stream packet are ignored, as Netron does.
    pub fn decode(frame: &[u8], limits: Limits) -> Result<Self, PacketError> {
        if frame.len() > limits.max_frame {
            return Err(PacketError::TooLarge(frame.len(), limits.max_frame));
        }
        let (header, body) = frame.split_at_checked(5).ok_or(PacketError::TooShort)?;
        let id = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let flags = header[4];
        let kind = PacketType::from_bits(flags & 0x0f).ok_or(PacketError::UnknownType(flags & 0x0f))?;
        let (data, used) = decode_with_depth(body, limits.max_depth)?;
        let stream = if kind == PacketType::Stream {
            let trailer = body.get(used..used + 8).ok_or(PacketError::MissingTrailer)?;
            let stream_id = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
            let index = u32::from_be_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
            Some((stream_id, index))
        } else {
            None
        };
        Ok(Self {
            id,
            kind,
            impulse: flags & IMPULSE != 0,
            error: flags & ERROR != 0,
            eos: flags & EOS != 0,
            live: flags & LIVE != 0,
            data,
            stream,
        })
    }
}

/// Packet ids: one counter for every packet a process sends, from 1; after `0xFFFF_FFFF` it
/// wraps to 1 (0 is never used), as Netron's.
#[derive(Debug)]
pub struct PacketIds {
    next: AtomicU32,
}

impl Default for PacketIds {
    fn default() -> Self {
        Self::starting_at(1)
    }
}

impl PacketIds {
    /// A counter whose first id is `first` (0 counts as 1).
    pub fn starting_at(first: u32) -> Self {
        Self { next: AtomicU32::new(first.max(1)) }
    }

    /// The next id.
    pub fn next(&self) -> u32 {
        let mut current = self.next.load(Ordering::Relaxed);
        loop {
            let following = if current == u32::MAX { 1 } else { current + 1 };
            match self.next.compare_exchange_weak(current, following, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return current,
                Err(actual) => current = actual,
            }
        }
    }
}
