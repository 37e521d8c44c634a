//! Services a peer exposes: a name and version, methods and properties, and the definition
//! (`meta`) generated from them. Declared with [`ServiceBuilder`]: each method is a Rust closure
//! whose arguments and result go through serde — no hand-written dispatch.

use crate::sync::Locked as _;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::convert::{from_json, to_json};
use crate::wire::{ErrorKind, JsError, Value};

type MethodFn =
    Arc<dyn Fn(Vec<Value>) -> Pin<Box<dyn Future<Output = Result<Output, JsError>> + Send>> + Send + Sync>;

/// What a method produced: a value, or a stream of values the caller reads as a Netron stream.
pub enum Output {
    /// A value (the reply).
    Value(Value),
    /// A stream: the reply is a stream reference, then the chunks follow.
    Stream(futures::stream::BoxStream<'static, Result<Value, JsError>>),
    /// Another service: the caller receives its definition (a sub-interface) and calls it; the
    /// same instance returned again keeps its definition.
    Service(Arc<Service>),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(value) => f.debug_tuple("Value").field(value).finish(),
            Self::Stream(_) => f.write_str("Stream(..)"),
            Self::Service(service) => f.debug_tuple("Service").field(&service.qualified_name()).finish(),
        }
    }
}

/// The arguments of a call as `A`: none as `()`, one as itself, several as a tuple.
fn arguments_as<A: DeserializeOwned>(method: &str, arity: usize, args: Vec<Value>) -> Result<A, JsError> {
    let json = match arity {
        0 => serde_json::Value::Null,
        1 => args.into_iter().next().map_or(serde_json::Value::Null, |v| to_json(&v)),
        _ => serde_json::Value::Array(args.iter().map(to_json).collect()),
    };
    serde_json::from_value(json).map_err(|e| type_error(format!("{method}: the arguments do not fit: {e}")))
}

/// A result as a wire value.
fn result_of<R: Serialize>(method: &str, output: R) -> Result<Value, JsError> {
    serde_json::to_value(output)
        .map(|json| from_json(&json))
        .map_err(|e| JsError::new(format!("{method}: the result cannot be sent: {e}")))
}

/// One method: its argument and result type names (as Netron's decorators write them) and its body.
struct Method {
    arguments: Vec<String>,
    returns: String,
    body: MethodFn,
}

/// One property: its type name, whether callers may write it, and its value.
struct Property {
    type_name: String,
    readonly: bool,
    value: Mutex<Value>,
}

/// A service ready to expose: `name@version` with its methods and properties.
pub struct Service {
    name: String,
    version: String,
    /// `name@version`, or `name` without a version.
    qualified: String,
    methods: BTreeMap<String, Method>,
    properties: BTreeMap<String, Property>,
    middleware: Vec<Arc<dyn crate::middleware::Middleware>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Declares a [`Service`].
pub struct ServiceBuilder {
    service: Service,
}

/// A name Netron accepts for a service: dot-separated runs of letters and digits.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Why a service cannot be declared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeclarationError(String);

impl ServiceBuilder {
    /// A service `name@version` (version semver, or empty).
    pub fn new(name: &str, version: &str) -> Result<Self, DeclarationError> {
        if !valid_name(name) {
            return Err(DeclarationError(format!(
                "service name {name:?} must be letters and digits, dot-separated"
            )));
        }
        if !version.is_empty() && semver::Version::parse(version).is_err() {
            return Err(DeclarationError(format!("service version {version:?} is not semver")));
        }
        let qualified = if version.is_empty() { name.to_owned() } else { format!("{name}@{version}") };
        let service = Service {
            name: name.to_owned(),
            version: version.to_owned(),
            qualified,
            methods: BTreeMap::new(),
            properties: BTreeMap::new(),
            middleware: Vec::new(),
        };
        Ok(Self { service })
    }

    /// A method whose arguments deserialize into `A` (a tuple for several: `(f64, f64)`) and whose
    /// result serializes from `R`. `arguments` and `returns` are the type names the definition
    /// announces (`["Number", "Number"]`, `"Number"`).
    #[must_use]
    pub fn method<A, R, F, Fut>(self, name: &str, arguments: &[&str], returns: &str, body: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, JsError>> + Send + 'static,
    {
        self.declare(name, arguments, returns, move |input: A, method: Arc<str>| {
            let result = body(input);
            async move { result_of(&method, result.await?).map(Output::Value) }
        })
    }

    /// A method that returns a stream: the caller receives a stream reference and then every item
    /// as a chunk of a live Netron stream, in order, until the stream ends (or fails: the caller's
    /// stream fails with the error's message).
    #[must_use]
    pub fn stream_method<A, R, F, S>(self, name: &str, arguments: &[&str], returns: &str, body: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> S + Send + Sync + 'static,
        S: futures::Stream<Item = Result<R, JsError>> + Send + 'static,
    {
        use futures::StreamExt;
        self.declare(name, arguments, returns, move |input: A, method: Arc<str>| {
            let items = body(input).map(move |item| item.and_then(|r| result_of(&method, r)));
            std::future::ready(Ok(Output::Stream(items.boxed())))
        })
    }

    /// A stream method whose items are wire values as they are (bytes stay `Bin`, extension values
    /// keep their types), not passed through serde.
    #[must_use]
    pub fn value_stream_method<A, F, S>(self, name: &str, arguments: &[&str], returns: &str, body: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        F: Fn(A) -> S + Send + Sync + 'static,
        S: futures::Stream<Item = Result<Value, JsError>> + Send + 'static,
    {
        use futures::StreamExt;
        self.declare(name, arguments, returns, move |input: A, _| {
            std::future::ready(Ok(Output::Stream(body(input).boxed())))
        })
    }

    /// A method that returns another service (a sub-interface the caller then calls, and releases
    /// with `Interface::release`).
    #[must_use]
    pub fn service_method<A, F, Fut>(self, name: &str, arguments: &[&str], returns: &str, body: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<Service>, JsError>> + Send + 'static,
    {
        self.declare(name, arguments, returns, move |input: A, _| {
            let service = body(input);
            async move { service.await.map(Output::Service) }
        })
    }

    /// Every kind of method: the arguments decoded into `A` (a `TypeError` when they do not fit),
    /// then `body` with them and the method's name.
    fn declare<A, F, Fut>(mut self, name: &str, arguments: &[&str], returns: &str, body: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        F: Fn(A, Arc<str>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Output, JsError>> + Send + 'static,
    {
        let body = Arc::new(body);
        let arity = arguments.len();
        let method_name: Arc<str> = name.into();
        let call: MethodFn = Arc::new(move |args: Vec<Value>| {
            let (body, method_name) = (Arc::clone(&body), Arc::clone(&method_name));
            Box::pin(async move {
                let input: A = arguments_as(&method_name, arity, args)?;
                body(input, method_name).await
            })
        });
        let arguments = arguments.iter().map(|a| (*a).to_owned()).collect();
        self.service
            .methods
            .insert(name.to_owned(), Method { arguments, returns: returns.to_owned(), body: call });
        self
    }

    /// A property with its initial value; `readonly` ones refuse writes.
    #[must_use]
    pub fn property(mut self, name: &str, type_name: &str, readonly: bool, value: Value) -> Self {
        self.service.properties.insert(
            name.to_owned(),
            Property { type_name: type_name.to_owned(), readonly, value: Mutex::new(value) },
        );
        self
    }

    /// A check every call to this service passes first (after the peer's own).
    #[must_use]
    pub fn middleware(mut self, middleware: Arc<dyn crate::middleware::Middleware>) -> Self {
        self.service.middleware.push(middleware);
        self
    }

    /// The service.
    pub fn build(self) -> Arc<Service> {
        Arc::new(self.service)
    }
}

impl Service {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its middleware.
    pub(crate) fn middleware(&self) -> &[Arc<dyn crate::middleware::Middleware>] {
        &self.middleware
    }

    /// Its version (`""` when it has none).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `name@version`, or `name` without a version: the key peers find it by.
    pub fn qualified_name(&self) -> &str {
        &self.qualified
    }

    /// The definition's `meta`: `{name, version, properties, methods}` as Netron's decorators write it.
    pub fn meta(&self) -> Value {
        let properties = self
            .properties
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    Value::object([
                        ("type", Value::str(&p.type_name)),
                        ("readonly", Value::Bool(p.readonly)),
                    ]),
                )
            })
            .collect();
        let methods = self
            .methods
            .iter()
            .map(|(name, m)| {
                let arguments = m.arguments.iter().map(Value::str).collect();
                (
                    name.clone(),
                    Value::object([("type", Value::str(&m.returns)), ("arguments", Value::Array(arguments))]),
                )
            })
            .collect();
        Value::object([
            ("name", Value::str(&self.name)),
            ("version", Value::str(&self.version)),
            ("properties", Value::Object(properties)),
            ("methods", Value::Object(methods)),
        ])
    }

    /// Runs method `name` with `args`.
    pub async fn call(&self, name: &str, args: Vec<Value>) -> Result<Output, JsError> {
        let method = self.methods.get(name).ok_or_else(|| type_error(format!("{name} is not a function")))?;
        (method.body)(args).await
    }

    /// Reads property `name`.
    pub fn get(&self, name: &str) -> Result<Value, JsError> {
        let property =
            self.properties.get(name).ok_or_else(|| JsError::new(format!("Unknown property: {name}")))?;
        Ok(property.value.locked().clone())
    }

    /// Writes property `name` (refused for read-only ones).
    pub fn set(&self, name: &str, value: Value) -> Result<(), JsError> {
        let property =
            self.properties.get(name).ok_or_else(|| JsError::new(format!("Unknown property: {name}")))?;
        if property.readonly {
            return Err(type_error(format!("Cannot assign to read only property '{name}'")));
        }
        {
            let mut slot = property.value.locked();
            *slot = value;
        }
        Ok(())
    }
}

/// A `TypeError` with `message`.
pub(crate) fn type_error(message: String) -> JsError {
    JsError { kind: ErrorKind::TypeError, name: "TypeError".into(), stack: None, message, fields: Vec::new() }
}
