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

/// A JSON value on the wire, with Netron's richer types written in an explicit tagged form: an
/// object whose only key is one of these tags becomes that type, anything else is
/// [`from_json`]'s.
///
/// | JSON | wire value |
/// |---|---|
/// | `{"$date": 1700000000000}` | `Date` (milliseconds since the Unix epoch) |
/// | `{"$bigint": "-12345678901234567890"}` | `bigint` |
/// | `{"$map": [[key, value], ...]}` | `Map` (keys of any type, in order) |
/// | `{"$set": [item, ...]}` | `Set` |
/// | `{"$bytes": [0, 255, ...]}` | bytes (a Node `Buffer`) |
/// | `{"$undefined": true}` | `undefined` |
///
/// Tags nest (`{"$map": [[{"$date": 0}, {"$set": [1]}]]}`). An object with one key that starts
/// with `$` but is not a tag is refused, so a typo is not sent as a plain object.
pub fn from_tagged_json(json: &serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    let tagged = |items: &[J]| items.iter().map(from_tagged_json).collect::<Result<Vec<_>, _>>();
    match json {
        J::Array(items) => Ok(Value::Array(tagged(items)?)),
        J::Object(fields) if fields.len() == 1 && fields.keys().all(|k| k.starts_with('$')) => {
            let (tag, inner) = fields.iter().next().expect("one field");
            match (tag.as_str(), inner) {
                ("$date", J::Number(ms)) => ms
                    .as_u64()
                    .map(Value::Date)
                    .ok_or_else(|| format!("$date: {ms} is not whole milliseconds since 1970")),
                ("$bigint", J::String(digits)) => {
                    let body = digits.strip_prefix('-').unwrap_or(digits);
                    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
                        Ok(Value::BigInt(digits.clone()))
                    } else {
                        Err(format!("$bigint: {digits:?} is not an integer's decimal digits"))
                    }
                }
                ("$map", J::Array(entries)) => entries
                    .iter()
                    .map(|entry| match entry {
                        J::Array(pair) if pair.len() == 2 => {
                            Ok((from_tagged_json(&pair[0])?, from_tagged_json(&pair[1])?))
                        }
                        other => Err(format!("$map: each entry is a [key, value] pair, not {other}")),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Map),
                ("$set", J::Array(items)) => Ok(Value::Set(tagged(items)?)),
                ("$bytes", J::Array(bytes)) => bytes
                    .iter()
                    .map(|b| {
                        b.as_u64()
                            .and_then(|b| u8::try_from(b).ok())
                            .ok_or_else(|| format!("$bytes: {b} is not a byte"))
                    })
                    .collect::<Result<Vec<u8>, _>>()
                    .map(Value::Bin),
                ("$undefined", J::Bool(true)) => Ok(Value::Undefined),
                (tag @ ("$date" | "$bigint" | "$map" | "$set" | "$bytes" | "$undefined"), other) => {
                    Err(format!("{tag} cannot hold {other}"))
                }
                (tag, _) => {
                    Err(format!("unknown tag {tag} (known: $date, $bigint, $map, $set, $bytes, $undefined)"))
                }
            }
        }
        J::Object(fields) => fields
            .iter()
            .map(|(k, v)| Ok((k.clone(), from_tagged_json(v)?)))
            .collect::<Result<Vec<_>, String>>()
            .map(Value::Object),
        plain => Ok(from_json(plain)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_json_carries_netrons_rich_types() {
        let json: serde_json::Value = serde_json::from_str(
            r#"[{"$date": 1700000000000}, {"$bigint": "-123456789012345678901"}, {"$set": [1, "a"]},
                {"$map": [[{"$date": 0}, {"$bytes": [0, 255]}]]}, {"$undefined": true}, {"plain": {"$set": []}}, 2.5]"#,
        )
        .unwrap();
        assert_eq!(
            from_tagged_json(&json).unwrap(),
            Value::Array(vec![
                Value::Date(1_700_000_000_000),
                Value::BigInt("-123456789012345678901".into()),
                Value::Set(vec![Value::Int(1), Value::str("a")]),
                Value::Map(vec![(Value::Date(0), Value::Bin(vec![0, 255]))]),
                Value::Undefined,
                Value::Object(vec![("plain".into(), Value::Set(vec![]))]),
                Value::Float(2.5),
            ])
        );
        for bad in [
            r#"{"$date": -1}"#,
            r#"{"$bigint": "12x"}"#,
            r#"{"$bytes": [256]}"#,
            r#"{"$map": [[1]]}"#,
            r#"{"$dtae": 1}"#,
        ] {
            let json: serde_json::Value = serde_json::from_str(bad).unwrap();
            assert!(from_tagged_json(&json).is_err(), "{bad} is refused");
        }
        let plain: serde_json::Value = serde_json::from_str(r#"{"a": 1, "$b": 2}"#).unwrap();
        assert_eq!(from_tagged_json(&plain).unwrap(), from_json(&plain), "two keys: a plain object");
    }
}
