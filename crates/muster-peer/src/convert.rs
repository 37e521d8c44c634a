//! Between wire values and JSON values, the bridge serde types cross: numbers, strings, arrays
//! and objects map one to one; `undefined` becomes `null`; extension values become what
//! JavaScript's `JSON.stringify` would make of them (a date its milliseconds, a map an object of
//! entries, a set an array, a big integer its digits, an error `{name, message}`).

use crate::wire::Value;

/// A wire value as JSON.
pub fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Undefined | Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(n) => J::from(*n),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) | Value::BigInt(s) | Value::Reference(s) => J::String(s.clone()),
        Value::Bin(bytes) => J::Array(bytes.iter().map(|b| J::from(*b)).collect()),
        Value::Array(items) | Value::Set(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Object(fields) => J::Object(fields.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Error(error) => serde_json::json!({"name": error.name, "message": error.message}),
        Value::Date(ms) => J::from(*ms),
        Value::RegExp { source, flags } => J::String(format!("/{source}/{flags}")),
        Value::Long { unsigned, bits } => {
            if *unsigned {
                J::from(*bits)
            } else {
                J::from(*bits as i64)
            }
        }
        Value::Definition(definition) => {
            serde_json::json!({"id": definition.id, "meta": to_json(&definition.meta)})
        }
        Value::StreamReference(reference) => serde_json::json!({"streamId": reference.stream_id}),
    }
}

/// A JSON value on the wire: whole numbers as integers, others as floats.
pub fn from_json(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s.clone()),
        J::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        J::Object(fields) => Value::Object(fields.iter().map(|(k, v)| (k.clone(), from_json(v))).collect()),
    }
}

/// Typed arguments as a call's argument list: a tuple (or array) gives one argument per item, any
/// other value one argument.
fn arguments_of<A: serde::Serialize>(args: A) -> Result<Vec<Value>, crate::PeerError> {
    let json = serde_json::to_value(args).map_err(|e| crate::PeerError::Arguments(e.to_string()))?;
    Ok(match from_json(&json) {
        Value::Array(items) => items,
        single => vec![single],
    })
}

/// A call's result as `R`.
fn result_as<R: serde::de::DeserializeOwned>(method: &str, result: &Value) -> Result<R, crate::PeerError> {
    serde_json::from_value(to_json(result))
        .map_err(|e| crate::PeerError::Protocol(format!("{method} answered a value that does not fit: {e}")))
}

/// A call with typed arguments (a tuple for several) and a typed result, through `call` (one
/// interface's or a named service's).
pub(crate) async fn typed_call<A, R, F, Fut>(method: &str, args: A, call: F) -> Result<R, crate::PeerError>
where
    A: serde::Serialize,
    R: serde::de::DeserializeOwned,
    F: FnOnce(Vec<Value>) -> Fut,
    Fut: std::future::Future<Output = Result<Value, crate::PeerError>>,
{
    let result = call(arguments_of(args)?).await?;
    result_as(method, &result)
}
