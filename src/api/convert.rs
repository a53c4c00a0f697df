//! Conversions between protobuf well-known types and domain values.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value as PbValue};
use serde_json::{Map, Number, Value};
use tonic::Status;

use super::error::invalid;

/// Largest integer a JSON number keeps exactly as a double.
const MAX_SAFE_INT: f64 = 9_007_199_254_740_991.0;

/// A Struct as a JSON object; non-finite numbers are refused naming the path.
pub fn struct_to_json(field: &str, s: Struct) -> Result<Map<String, Value>, Status> {
    let mut out = Map::new();
    for (k, v) in s.fields {
        let path = format!("{field}.{k}");
        let value = value_to_json(&path, v)?;
        out.insert(k, value);
    }
    Ok(out)
}

/// An optional Struct; absent means an empty object.
pub fn opt_struct(field: &str, s: Option<Struct>) -> Result<Map<String, Value>, Status> {
    s.map_or_else(|| Ok(Map::new()), |s| struct_to_json(field, s))
}

/// A protobuf Value as JSON; non-finite numbers are refused naming `path`.
pub fn value_to_json(path: &str, v: PbValue) -> Result<Value, Status> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => {
            if !n.is_finite() {
                return Err(invalid(
                    path,
                    "numbers must be finite (JSON has no NaN or Infinity)",
                ));
            }
            if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INT {
                Value::Number(Number::from(n as i64))
            } else {
                Number::from_f64(n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(path, s)?),
        Some(Kind::ListValue(l)) => Value::Array(list_to_json(path, l)?),
    })
}

/// A ListValue as JSON values; `path` names the list in errors.
pub fn list_to_json(path: &str, l: prost_types::ListValue) -> Result<Vec<Value>, Status> {
    l.values
        .into_iter()
        .enumerate()
        .map(|(i, v)| value_to_json(&format!("{path}[{i}]"), v))
        .collect()
}

/// A JSON object as a Struct.
pub fn json_to_struct(m: &Map<String, Value>) -> Struct {
    Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// JSON as a protobuf Value.
pub fn json_to_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(json_to_struct(m)),
    };
    PbValue { kind: Some(kind) }
}

/// Milliseconds as a Duration.
pub fn duration(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// Milliseconds since the epoch as a Timestamp.
pub fn timestamp(ms: u64) -> Timestamp {
    Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A Duration as milliseconds; negative or out-of-range durations are refused.
pub fn duration_ms(field: &str, d: &prost_types::Duration) -> Result<u64, Status> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    (d.seconds as u64)
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(d.nanos as u64 / 1_000_000))
        .ok_or_else(|| invalid(field, "is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_struct() {
        let v = json!({"a": 1, "b": [true, null, "x", 1.5], "c": {"d": -3}});
        let m = v.as_object().unwrap().clone();
        let back = struct_to_json("p", json_to_struct(&m)).unwrap();
        assert_eq!(Value::Object(back), v);
    }

    #[test]
    fn nan_is_refused_with_its_path() {
        let s = Struct {
            fields: [(
                "x".to_owned(),
                PbValue {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        let err = struct_to_json("payload", s).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("payload.x"));
    }
}
