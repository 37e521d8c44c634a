//! Reading Netron's MessagePack: a byte cursor that bounds every allocation by the bytes it was
//! given and every nesting by a depth limit.

use super::*;

/// Reads one value from the start of `bytes`; returns it and how many bytes it took. Trailing
/// bytes are left to the caller.
pub fn decode(bytes: &[u8]) -> Result<(Value, usize), DecodeError> {
    decode_with_depth(bytes, MAX_DEPTH)
}

/// [`decode`] with a nesting limit.
pub fn decode_with_depth(bytes: &[u8], max_depth: usize) -> Result<(Value, usize), DecodeError> {
    let mut reader = Reader { bytes, at: 0, max_depth };
    let value = reader.value(0)?;
    Ok((value, reader.at))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end =
            self.at.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or(DecodeError::Truncated)?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?) as usize)
    }

    /// Room for `n` items of at least one byte each: never more than the bytes left.
    fn capacity(&self, n: usize) -> usize {
        n.min(self.bytes.len() - self.at)
    }

    fn text(&mut self, n: usize) -> Result<String, DecodeError> {
        std::str::from_utf8(self.take(n)?).map(str::to_owned).map_err(|_| DecodeError::NotUtf8)
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > self.max_depth {
            return Err(DecodeError::TooDeep(self.max_depth));
        }
        let marker = self.byte()?;
        Ok(match marker {
            0x00..=0x7f => Value::Int(i64::from(marker)),
            0x80..=0x8f => self.object(usize::from(marker & 0x0f), depth)?,
            0x90..=0x9f => self.items(usize::from(marker & 0x0f), depth)?,
            0xa0..=0xbf => Value::Str(self.text(usize::from(marker & 0x1f))?),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let n = usize::from(self.byte()?);
                Value::Bin(self.take(n)?.to_vec())
            }
            0xc5 => {
                let n = self.u16()?;
                Value::Bin(self.take(n)?.to_vec())
            }
            0xc6 => {
                let n = self.u32()?;
                Value::Bin(self.take(n)?.to_vec())
            }
            0xc7 => {
                let n = usize::from(self.byte()?);
                self.extension(n, depth)?
            }
            0xc8 => {
                let n = self.u16()?;
                self.extension(n, depth)?
            }
            0xc9 => {
                let n = self.u32()?;
                self.extension(n, depth)?
            }
            0xca => Value::Float(f64::from(f32::from_be_bytes(self.array()?))),
            0xcb => Value::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Value::Int(i64::from(self.byte()?)),
            0xcd => Value::Int(i64::from(u16::from_be_bytes(self.array()?))),
            0xce => Value::Int(i64::from(u32::from_be_bytes(self.array()?))),
            0xcf => {
                let n = u64::from_be_bytes(self.array()?);
                i64::try_from(n).map_or(Value::Float(n as f64), Value::Int)
            }
            0xd0 => Value::Int(i64::from(i8::from_be_bytes(self.array()?))),
            0xd1 => Value::Int(i64::from(i16::from_be_bytes(self.array()?))),
            0xd2 => Value::Int(i64::from(i32::from_be_bytes(self.array()?))),
            0xd3 => Value::Int(i64::from_be_bytes(self.array()?)),
            0xd4 => self.extension(1, depth)?,
            0xd5 => self.extension(2, depth)?,
            0xd6 => self.extension(4, depth)?,
            0xd7 => self.extension(8, depth)?,
            0xd8 => self.extension(16, depth)?,
            0xd9 => {
                let n = usize::from(self.byte()?);
                Value::Str(self.text(n)?)
            }
            0xda => {
                let n = self.u16()?;
                Value::Str(self.text(n)?)
            }
            0xdb => {
                let n = self.u32()?;
                Value::Str(self.text(n)?)
            }
            0xdc => {
                let n = self.u16()?;
                self.items(n, depth)?
            }
            0xdd => {
                let n = self.u32()?;
                self.items(n, depth)?
            }
            0xde => {
                let n = self.u16()?;
                self.object(n, depth)?
            }
            0xe0..=0xff => Value::Int(i64::from(marker as i8)),
            other => return Err(DecodeError::Unsupported(other)),
        })
    }

    fn items(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        let mut items = Vec::with_capacity(self.capacity(n));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn object(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        let mut fields = Vec::with_capacity(self.capacity(n));
        for _ in 0..n {
            let key = match self.value(depth + 1)? {
                Value::Str(key) => key,
                Value::Int(n) => n.to_string(),
                _ => return Err(DecodeError::BadKey),
            };
            fields.push((key, self.value(depth + 1)?));
        }
        Ok(Value::Object(fields))
    }

    /// A string value inside an extension payload.
    fn string_in(&mut self, kind: i8, depth: usize) -> Result<String, DecodeError> {
        match self.value(depth + 1)? {
            Value::Str(text) => Ok(text),
            _ => Err(DecodeError::BadExtension { kind, why: "a string was expected" }),
        }
    }

    fn extension(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        let kind = self.byte()? as i8;
        let payload = self.take(n)?;
        let mut inner = Reader { bytes: payload, at: 0, max_depth: self.max_depth };
        let value = inner.extension_payload(kind, depth)?;
        if inner.at != payload.len() {
            return Err(DecodeError::BadExtension { kind, why: "bytes left over after its fields" });
        }
        Ok(value)
    }

    fn extension_payload(&mut self, kind: i8, depth: usize) -> Result<Value, DecodeError> {
        let bad = |why| DecodeError::BadExtension { kind, why };
        Ok(match kind {
            ext::UNDEFINED => {
                self.byte()?;
                Value::Undefined
            }
            ext::ERROR => {
                let id = u16::from_be_bytes(self.array()?);
                let kind_of = ErrorKind::from_id(id).ok_or(bad("its class id is not 1-7"))?;
                let name = self.string_in(kind, depth)?;
                let stack = match self.value(depth + 1)? {
                    Value::Str(stack) => Some(stack),
                    Value::Undefined | Value::Null => None,
                    _ => return Err(bad("its stack is not a string")),
                };
                let message = self.string_in(kind, depth)?;
                let n = self.u16()?;
                let mut fields = Vec::with_capacity(self.capacity(n));
                for _ in 0..n {
                    let key = self.string_in(kind, depth)?;
                    fields.push((key, self.value(depth + 1)?));
                }
                Value::Error(Box::new(JsError { kind: kind_of, name, stack, message, fields }))
            }
            ext::DATE => Value::Date(u64::from_be_bytes(self.array()?)),
            ext::MAP => {
                let n = self.u32()?;
                let mut entries = Vec::with_capacity(self.capacity(n));
                for _ in 0..n {
                    let key = self.value(depth + 1)?;
                    entries.push((key, self.value(depth + 1)?));
                }
                Value::Map(entries)
            }
            ext::SET => {
                let n = self.u32()?;
                let mut items = Vec::with_capacity(self.capacity(n));
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Set(items)
            }
            ext::REGEXP => {
                let source = self.string_in(kind, depth)?;
                let flags = self.string_in(kind, depth)?;
                Value::RegExp { source, flags }
            }
            ext::BIGINT => Value::BigInt(self.string_in(kind, depth)?),
            ext::LONG => {
                let unsigned = self.byte()? != 0;
                Value::Long { unsigned, bits: u64::from_be_bytes(self.array()?) }
            }
            ext::DEFINITION => {
                let id = self.string_in(kind, depth)?;
                let parent_id = self.string_in(kind, depth)?;
                let peer_id = self.string_in(kind, depth)?;
                let meta = self.value(depth + 1)?;
                Value::Definition(Box::new(Definition { id, parent_id, peer_id, meta }))
            }
            ext::REFERENCE => Value::Reference(self.string_in(kind, depth)?),
            ext::STREAM_REFERENCE => {
                let stream_id = self
                    .string_in(kind, depth)?
                    .parse::<u32>()
                    .map_err(|_| bad("its stream id is not a number"))?;
                let writable = self.byte()? != 0;
                let live = self.byte()? != 0;
                let peer_id = self.string_in(kind, depth)?;
                Value::StreamReference(Box::new(StreamReference { stream_id, writable, live, peer_id }))
            }
            other => return Err(DecodeError::UnknownExtension(other)),
        })
    }
}
