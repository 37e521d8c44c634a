//! The values Netron's MessagePack dialect carries.

/// One value as a TypeScript Netron peer sends or receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// JavaScript `undefined` (`d4 00 00`): what a `void` method returns.
    Undefined,
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A whole number. Written as a MessagePack integer when it fits in 32 bits (as Netron writes
    /// JavaScript integers), as a float64 up to ±2^53 (a JavaScript number), as int64 beyond.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// Bytes (a Node `Buffer`).
    Bin(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A plain object: string keys in order.
    Object(Vec<(String, Value)>),
    /// A thrown `Error` (ext 126).
    Error(Box<JsError>),
    /// A `Date`, in milliseconds since the Unix epoch (ext 125).
    Date(u64),
    /// A JavaScript `Map` (ext 124): keys of any kind, in order.
    Map(Vec<(Value, Value)>),
    /// A JavaScript `Set` (ext 123).
    Set(Vec<Value>),
    /// A `RegExp` (ext 121).
    RegExp {
        /// The pattern.
        source: String,
        /// Its flags (`gi`, ...).
        flags: String,
    },
    /// A `bigint`, as its decimal text (ext 120).
    BigInt(String),
    /// An npm `long` (ext 119): 64 bits and whether they are unsigned.
    Long {
        /// Unsigned.
        unsigned: bool,
        /// The value's bits, big-endian.
        bits: u64,
    },
    /// A service definition (ext 109).
    Definition(Box<Definition>),
    /// A reference to a definition the receiver served (ext 108).
    Reference(String),
    /// A stream handed over in a result or an argument (ext 107).
    StreamReference(Box<StreamReference>),
}

/// The standard `Error` classes Netron numbers on the wire (1-7); any other class travels as 1
/// with its own `name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `Error` (1).
    Error = 1,
    /// `SyntaxError` (2).
    SyntaxError = 2,
    /// `TypeError` (3).
    TypeError = 3,
    /// `ReferenceError` (4).
    ReferenceError = 4,
    /// `RangeError` (5).
    RangeError = 5,
    /// `EvalError` (6).
    EvalError = 6,
    /// `URIError` (7).
    UriError = 7,
}

impl ErrorKind {
    /// The kind of wire id `id`, if it is one of 1-7.
    pub fn from_id(id: u16) -> Option<Self> {
        Some(match id {
            1 => Self::Error,
            2 => Self::SyntaxError,
            3 => Self::TypeError,
            4 => Self::ReferenceError,
            5 => Self::RangeError,
            6 => Self::EvalError,
            7 => Self::UriError,
            _ => return None,
        })
    }
}

/// A JavaScript error as Netron carries it (ext 126).
#[derive(Debug, Clone, PartialEq)]
pub struct JsError {
    /// Its class on the wire.
    pub kind: ErrorKind,
    /// `name` (`Error`, `TypeError`, or a custom class's name).
    pub name: String,
    /// `stack`, when sent.
    pub stack: Option<String>,
    /// `message`.
    pub message: String,
    /// Its other own fields (`code`, ...), in order.
    pub fields: Vec<(String, Value)>,
}

impl JsError {
    /// An `Error` with `message` and no stack.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Error,
            name: "Error".into(),
            stack: None,
            message: message.into(),
            fields: Vec::new(),
        }
    }
}

impl std::fmt::Display for JsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for JsError {}

/// A service's definition as exchanged by peers (ext 109).
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// Opaque id the caller uses to address the service.
    pub id: String,
    /// The definition this one was returned from (`""` for an exposed service).
    pub parent_id: String,
    /// The id of the peer that serves it.
    pub peer_id: String,
    /// The service's metadata (`{name, version, properties, methods}`), as a plain object.
    pub meta: Value,
}

/// A stream handed over by reference (ext 107).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamReference {
    /// The stream's id, chosen by its writer.
    pub stream_id: u32,
    /// `true`: the referenced side writes (the receiver reads); `false`: it reads.
    pub writable: bool,
    /// A live stream (no inactivity timeout).
    pub live: bool,
    /// The peer the reference was made for.
    pub peer_id: String,
}

impl Value {
    /// A string value.
    pub fn str(text: impl Into<String>) -> Self {
        Self::Str(text.into())
    }

    /// A plain object from `(key, value)` pairs.
    pub fn object<K: Into<String>>(fields: impl IntoIterator<Item = (K, Value)>) -> Self {
        Self::Object(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The field `key` of a plain object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Self::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(text) => Some(text),
            _ => None,
        }
    }
}
