//! `custom_fields`: a caller-defined `google.protobuf.Struct`, kept as a JSON
//! object of at most 64 keys and 16 KiB.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

use super::Check;
use crate::error::Reason;

/// Most keys at the top level.
pub const MAX_KEYS: usize = 64;
/// Most bytes as JSON.
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// Deepest nesting of objects and lists.
const MAX_DEPTH: usize = 16;

/// Most bytes of a key.
pub const MAX_KEY_BYTES: usize = 64;

/// The one grammar of custom field keys, in fields, masks, filters and
/// order_by alike: 1 to 64 ASCII letters, digits, `_` or `-`.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A resource's custom fields: a JSON object text, as the caller's Struct
/// was written or as the database gives it back. Two are equal when they
/// hold the same JSON, whatever their spelling (PostgreSQL's jsonb prints
/// its own spacing and key order), so a read keeps the text as it comes and
/// parses it once, when it becomes a Struct.
#[derive(Debug, Clone, Default)]
pub struct CustomFields(String);

impl CustomFields {
    /// The fields of a stored JSON object text.
    pub fn stored(text: String) -> Self {
        CustomFields(text)
    }

    /// None.
    pub fn empty() -> Self {
        CustomFields("{}".to_string())
    }

    /// The JSON object text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As a protobuf Struct; `None` when empty.
    pub fn to_struct(&self) -> Option<Struct> {
        to_struct(&self.0)
    }
}

impl PartialEq for CustomFields {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
            || matches!(
                (serde_json::from_str::<Json>(&self.0), serde_json::from_str::<Json>(&other.0)),
                (Ok(a), Ok(b)) if a == b
            )
    }
}

/// Validates a Struct and returns it as a JSON object text.
pub fn parse(check: &mut Check, field: &str, value: Option<&Struct>) -> CustomFields {
    CustomFields(parse_text(check, field, value))
}

fn parse_text(check: &mut Check, field: &str, value: Option<&Struct>) -> String {
    let Some(value) = value else {
        return "{}".to_string();
    };
    let path = check.path(field);
    if value.fields.len() > MAX_KEYS {
        check.fail(
            field,
            Reason::FieldInvalid,
            format!("{path} has {} keys; at most {MAX_KEYS} are allowed.", value.fields.len()),
        );
        return "{}".to_string();
    }
    for key in value.fields.keys() {
        if !is_valid_key(key) {
            check.fail(
                field,
                Reason::FieldInvalid,
                format!("{path} has the key {key:?}; keys are 1 to 64 letters, digits, '_' or '-'."),
            );
            return "{}".to_string();
        }
    }
    match struct_to_json(value, 0) {
        Ok(json) => {
            let text = Json::Object(json).to_string();
            if text.len() > MAX_JSON_BYTES {
                check.fail(
                    field,
                    Reason::FieldInvalid,
                    format!("{path} is {} bytes as JSON; at most {MAX_JSON_BYTES} are allowed.", text.len()),
                );
                return "{}".to_string();
            }
            text
        }
        Err(why) => {
            check.fail(field, Reason::FieldInvalid, format!("{path} {why}."));
            "{}".to_string()
        }
    }
}

fn struct_to_json(value: &Struct, depth: usize) -> Result<Map<String, Json>, String> {
    value.fields.iter().map(|(k, v)| Ok((k.clone(), value_to_json(v, depth + 1)?))).collect()
}

fn value_to_json(value: &Value, depth: usize) -> Result<Json, String> {
    if depth > MAX_DEPTH {
        return Err(format!("is nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => Json::Number(Number::from_f64(*n).ok_or("holds a number that is not finite")?),
        Some(Kind::StringValue(s)) if s.contains('\0') => return Err("holds a text with a NUL character".into()),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s, depth)?),
        Some(Kind::ListValue(l)) => {
            Json::Array(l.values.iter().map(|v| value_to_json(v, depth + 1)).collect::<Result<_, _>>()?)
        }
    })
}

/// A stored JSON object text back as a Struct; anything else is empty.
fn to_struct(text: &str) -> Option<Struct> {
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(map)) if !map.is_empty() => Some(map_to_struct(map)),
        _ => None,
    }
}

fn map_to_struct(map: Map<String, Json>) -> Struct {
    Struct { fields: map.into_iter().map(|(k, v)| (k, json_to_value(v))).collect() }
}

/// A JSON value as a protobuf Value.
pub fn json_to_value(json: Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(ListValue { values: items.into_iter().map(json_to_value).collect() }),
        Json::Object(map) => Kind::StructValue(map_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, Value)]) -> Struct {
        Struct { fields: pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    #[test]
    fn round_trips() {
        let value = s(&[
            ("source", json_to_value(Json::String("web".into()))),
            ("score", json_to_value(serde_json::json!(3.5))),
        ]);
        let mut check = Check::new("contact.");
        let fields = parse(&mut check, "custom_fields", Some(&value));
        assert!(check.finish(()).is_ok());
        assert_eq!(fields.to_struct(), Some(value));
    }

    #[test]
    fn equal_by_meaning_not_by_spelling() {
        let ours = CustomFields::stored(r#"{"score":1.5,"tier":"gold"}"#.into());
        let postgres = CustomFields::stored(r#"{"tier": "gold", "score": 1.5}"#.into());
        assert_eq!(ours, postgres);
        assert_ne!(ours, CustomFields::stored(r#"{"tier": "gold", "score": 2.5}"#.into()));
        assert_ne!(CustomFields::empty(), ours);
    }

    #[test]
    fn limits_are_enforced() {
        let many: Vec<(String, Value)> = (0..65).map(|i| (format!("k{i}"), json_to_value(Json::Null))).collect();
        let many = Struct { fields: many.into_iter().collect() };
        let big = s(&[("k", json_to_value(Json::String("x".repeat(MAX_JSON_BYTES))))]);
        let nan = s(&[("k", Value { kind: Some(Kind::NumberValue(f64::NAN)) })]);
        let nul = s(&[("k", json_to_value(serde_json::json!({"deep": ["a\u{0}b"]})))]);
        for value in [many, big, nan, nul] {
            let mut check = Check::new("");
            parse(&mut check, "custom_fields", Some(&value));
            assert!(check.finish(()).is_err());
        }
    }
}
