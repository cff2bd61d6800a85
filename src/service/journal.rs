//! The journal entry of a mutation, computed once for every resource: the
//! diff between the resource before and after, field by field, in the
//! proto3 JSON form of each field (so an enum reads as its name, a time as
//! RFC 3339, a message as an object). The change feed stores it with each
//! Change; the revision journal of activities shows the same diff.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{Map, Value as Json};

use super::mask::descriptor;
use crate::{
    api,
    domain::custom_fields::json_to_value,
    error::{Error, Result},
};

/// Fields that change with every revision and so say nothing about it.
const NOISE: &[&str] = &["revision", "etag", "update_time", "updated_by", "create_time", "created_by"];

/// A resource message as a proto3 JSON object, fields under their proto names.
fn to_json<M: Message>(full_name: &str, message: &M) -> Result<Map<String, Json>> {
    let descriptor = descriptor(full_name)?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| Error::Internal(format!("re-decoding {full_name}: {e}")))?;
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(true);
    let json = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| Error::Internal(format!("{full_name} as JSON: {e}")))?;
    match json {
        Json::Object(map) => Ok(map),
        _ => Err(Error::Internal(format!("{full_name} is not a JSON object"))),
    }
}

/// The diff of a change as a JSON array of `{field, old_value, new_value}`,
/// in field order; `before` is `None` for a create.
pub fn diff<M: Message>(full_name: &str, before: Option<&M>, after: &M) -> Result<String> {
    let old = match before {
        Some(before) => to_json(full_name, before)?,
        None => Map::new(),
    };
    let new = to_json(full_name, after)?;
    let descriptor = descriptor(full_name)?;
    let mut entries = Vec::new();
    for field in descriptor.fields() {
        let name = field.name();
        if NOISE.contains(&name) || name == "id" {
            continue;
        }
        let (was, is) = (old.get(name), new.get(name));
        if was != is {
            entries.push(serde_json::json!({
                "field": name,
                "old_value": was.cloned().unwrap_or(Json::Null),
                "new_value": is.cloned().unwrap_or(Json::Null),
            }));
        }
    }
    Ok(Json::Array(entries).to_string())
}

/// A stored diff as the API's field changes.
pub fn field_changes(diff: &str) -> Vec<api::FieldChange> {
    let Ok(Json::Array(entries)) = serde_json::from_str::<Json>(diff) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| match entry {
            Json::Object(mut map) => Some(api::FieldChange {
                field: map.get("field").and_then(Json::as_str).unwrap_or_default().to_string(),
                old_value: Some(json_to_value(map.remove("old_value").unwrap_or(Json::Null))),
                new_value: Some(json_to_value(map.remove("new_value").unwrap_or(Json::Null))),
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_only_what_changed() {
        let before = api::Contact {
            id: "x".into(),
            display_name: "Ada".into(),
            organization: "ACME".into(),
            revision: 1,
            ..Default::default()
        };
        let after = api::Contact {
            display_name: "Ada L.".into(),
            job_title: "Engineer".into(),
            revision: 2,
            etag: "e".into(),
            ..before.clone()
        };
        let changes = field_changes(&diff("agenda.v1.Contact", Some(&before), &after).unwrap());
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["display_name", "job_title"]);
        assert_eq!(changes[0].old_value, Some(json_to_value(Json::String("Ada".into()))));
        assert_eq!(changes[1].old_value, Some(json_to_value(Json::Null)));
        let created = field_changes(&diff("agenda.v1.Contact", None, &after).unwrap());
        assert_eq!(created.len(), 3, "{created:?}");
        assert!(field_changes(&diff("agenda.v1.Contact", Some(&after), &after).unwrap()).is_empty());
    }
}
