//! Netron's MessagePack dialect (`packages/messagepack` with Netron's extension types).
//!
//! Written by hand over a byte cursor rather than with a general MessagePack crate: the dialect
//! fixes which format each JavaScript value takes (integers only within 32 bits, every other number
//! a float64, `undefined` as fixext type 0, objects never as map32), its extension payloads mix raw
//! bytes and nested values, and the decoder must bound every allocation by the bytes it was given.
//!
//! This file writes values (and holds the error types and extension codes); `codec/decode.rs`
//! reads them.

use super::value::{Definition, ErrorKind, JsError, StreamReference, Value};

mod decode;

pub use decode::{decode, decode_with_depth};

/// Extension type codes.
mod ext {
    pub(super) const UNDEFINED: i8 = 0;
    pub(super) const ERROR: i8 = 126;
    pub(super) const DATE: i8 = 125;
    pub(super) const MAP: i8 = 124;
    pub(super) const SET: i8 = 123;
    pub(super) const REGEXP: i8 = 121;
    pub(super) const BIGINT: i8 = 120;
    pub(super) const LONG: i8 = 119;
    pub(super) const DEFINITION: i8 = 109;
    pub(super) const REFERENCE: i8 = 108;
    pub(super) const STREAM_REFERENCE: i8 = 107;
}

/// Why a value cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A plain object with more keys than Netron's decoder reads (it has no map32).
    #[error("an object has {0} keys; Netron reads at most 65535")]
    TooManyKeys(usize),
    /// A length beyond what MessagePack can state.
    #[error("a value of {0} bytes or items is too large")]
    TooLarge(usize),
}

/// Why bytes are not a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end inside a value.
    #[error("the data ends inside a value")]
    Truncated,
    /// A format byte Netron does not read (`c1`, map32 `df`).
    #[error("format byte {0:#04x} is not read by Netron")]
    Unsupported(u8),
    /// An extension type Netron does not know (e.g. -1, the MessagePack timestamp).
    #[error("extension type {0} is not one of Netron's")]
    UnknownExtension(i8),
    /// An extension payload that does not have its type's layout.
    #[error("extension {kind} is malformed: {why}")]
    BadExtension {
        /// The extension type.
        kind: i8,
        /// What is wrong.
        why: &'static str,
    },
    /// A string that is not UTF-8.
    #[error("a string is not UTF-8")]
    NotUtf8,
    /// An object key that is neither a string nor an integer.
    #[error("an object key is not a string")]
    BadKey,
    /// Nesting deeper than the limit.
    #[error("values nest deeper than {0} levels")]
    TooDeep(usize),
}

/// The deepest nesting [`decode`] accepts by default.
pub const MAX_DEPTH: usize = 64;

/// Appends `value` to `out`.
pub fn encode(value: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match value {
        Value::Undefined => out.extend_from_slice(&[0xd4, 0x00, 0x00]),
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Int(n) => encode_int(*n, out),
        Value::Float(f) => encode_number(*f, out),
        Value::Str(s) => encode_str(s, out)?,
        Value::Bin(bytes) => {
            let n = bytes.len();
            if n <= 0xff {
                out.extend_from_slice(&[0xc4, n as u8]);
            } else if n <= 0xffff {
                out.push(0xc5);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(0xc6);
                out.extend_from_slice(&len32(n)?.to_be_bytes());
            }
            out.extend_from_slice(bytes);
        }
        Value::Array(items) => {
            array_header(items.len(), out)?;
            for item in items {
                encode(item, out)?;
            }
        }
        Value::Object(fields) => {
            let n = fields.len();
            if n < 16 {
                out.push(0x80 | n as u8);
            } else if n <= 0xffff {
                out.push(0xde);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                return Err(EncodeError::TooManyKeys(n));
            }
            for (key, value) in fields {
                encode_str(key, out)?;
                encode(value, out)?;
            }
        }
        Value::Error(error) => {
            let mut payload = Vec::new();
            payload.extend_from_slice(&(error.kind as u16).to_be_bytes());
            encode_str(&error.name, &mut payload)?;
            match &error.stack {
                Some(stack) => encode_str(stack, &mut payload)?,
                None => encode(&Value::Undefined, &mut payload)?,
            }
            encode_str(&error.message, &mut payload)?;
            let fields: Vec<&(String, Value)> =
                error.fields.iter().filter(|(_, v)| *v != Value::Undefined).collect();
            let n = u16::try_from(fields.len()).map_err(|_| EncodeError::TooManyKeys(fields.len()))?;
            payload.extend_from_slice(&n.to_be_bytes());
            for (key, value) in fields {
                encode_str(key, &mut payload)?;
                encode(value, &mut payload)?;
            }
            ext_header(ext::ERROR, &payload, out)?;
        }
        Value::Date(ms) => ext_header(ext::DATE, &ms.to_be_bytes(), out)?,
        Value::Map(entries) => {
            let mut payload = len32(entries.len())?.to_be_bytes().to_vec();
            for (key, value) in entries {
                encode(key, &mut payload)?;
                encode(value, &mut payload)?;
            }
            ext_header(ext::MAP, &payload, out)?;
        }
        Value::Set(items) => {
            let mut payload = len32(items.len())?.to_be_bytes().to_vec();
            for item in items {
                encode(item, &mut payload)?;
            }
            ext_header(ext::SET, &payload, out)?;
        }
        Value::RegExp { source, flags } => {
            let mut payload = Vec::new();
            encode_str(source, &mut payload)?;
            encode_str(flags, &mut payload)?;
            ext_header(ext::REGEXP, &payload, out)?;
        }
        Value::BigInt(digits) => {
            let mut payload = Vec::new();
            encode_str(digits, &mut payload)?;
            ext_header(ext::BIGINT, &payload, out)?;
        }
        Value::Long { unsigned, bits } => {
            let mut payload = vec![u8::from(*unsigned)];
            payload.extend_from_slice(&bits.to_be_bytes());
            ext_header(ext::LONG, &payload, out)?;
        }
        Value::Definition(definition) => {
            let mut payload = Vec::new();
            encode_str(&definition.id, &mut payload)?;
            encode_str(&definition.parent_id, &mut payload)?;
            encode_str(&definition.peer_id, &mut payload)?;
            encode(&definition.meta, &mut payload)?;
            ext_header(ext::DEFINITION, &payload, out)?;
        }
        Value::Reference(id) => {
            let mut payload = Vec::new();
            encode_str(id, &mut payload)?;
            ext_header(ext::REFERENCE, &payload, out)?;
        }
        Value::StreamReference(reference) => {
            let mut payload = Vec::new();
            encode_str(&reference.stream_id.to_string(), &mut payload)?;
            payload.push(u8::from(reference.writable));
            payload.push(u8::from(reference.live));
            encode_str(&reference.peer_id, &mut payload)?;
            ext_header(ext::STREAM_REFERENCE, &payload, out)?;
        }
    }
    Ok(())
}

fn len32(n: usize) -> Result<u32, EncodeError> {
    u32::try_from(n).map_err(|_| EncodeError::TooLarge(n))
}

/// A whole number as JavaScript holds it: an integer format within 32 bits, a float64 up to
/// ±2^53, int64 beyond (which a JavaScript peer reads with loss).
fn encode_int(n: i64, out: &mut Vec<u8>) {
    if let Ok(small) = i32::try_from(n) {
        encode_i32(small, out);
    } else if n.unsigned_abs() <= 1 << 53 {
        out.push(0xcb);
        out.extend_from_slice(&(n as f64).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn encode_i32(n: i32, out: &mut Vec<u8>) {
    if n >= 0 {
        if n < 128 {
            out.push(n as u8);
        } else if n < 256 {
            out.extend_from_slice(&[0xcc, n as u8]);
        } else if n < 65536 {
            out.push(0xcd);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xce);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    } else if n >= -32 {
        out.push(n as u8);
    } else if n >= -128 {
        out.extend_from_slice(&[0xd0, n as u8]);
    } else if n >= -32768 {
        out.push(0xd1);
        out.extend_from_slice(&(n as i16).to_be_bytes());
    } else {
        out.push(0xd2);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// A number as Netron's encoder writes a JavaScript number: an int32 value (`-0` included) as an
/// integer, anything else as float64.
fn encode_number(f: f64, out: &mut Vec<u8>) {
    let whole = f as i32;
    if f64::from(whole) == f {
        encode_i32(whole, out);
    } else {
        out.push(0xcb);
        out.extend_from_slice(&f.to_be_bytes());
    }
}

fn encode_str(s: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n <= 0xffff {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&len32(n)?.to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn array_header(n: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= 0xffff {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&len32(n)?.to_be_bytes());
    }
    Ok(())
}

fn ext_header(kind: i8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let n = payload.len();
    match n {
        1 => out.push(0xd4),
        2 => out.push(0xd5),
        4 => out.push(0xd6),
        8 => out.push(0xd7),
        16 => out.push(0xd8),
        _ if n <= 0xff => out.extend_from_slice(&[0xc7, n as u8]),
        _ if n <= 0xffff => {
            out.push(0xc8);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xc9);
            out.extend_from_slice(&len32(n)?.to_be_bytes());
        }
    }
    out.push(kind as u8);
    out.extend_from_slice(payload);
    Ok(())
}
