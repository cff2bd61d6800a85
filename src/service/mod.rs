//! The gRPC services: each converts the request, calls domain and store, and
//! converts the answer back. Shared here: timestamps, read masks and request
//! hashes.

pub mod contact;

use std::{collections::BTreeMap, sync::LazyLock};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage};
use prost_types::{FieldMask, Timestamp};
use sha2::{Digest, Sha256};

use crate::error::{Error, Reason, Result};

/// The descriptors of every agenda message, for read masks.
static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(crate::api::FILE_DESCRIPTOR_SET).ok());

/// A stored time (microseconds since the epoch) as a protobuf Timestamp.
pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp { seconds: micros.div_euclid(1_000_000), nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32 }
}

/// A hash of an RPC's request, for request-id replays: the same operation and
/// the same bytes give the same hash. Callers clear the request_id first.
pub fn request_hash(operation: &str, request: &impl Message) -> String {
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update([0]);
    hasher.update(request.encode_to_vec());
    hex::encode(hasher.finalize())
}

fn descriptor(full_name: &str) -> Result<MessageDescriptor> {
    POOL.as_ref()
        .and_then(|pool| pool.get_message_by_name(full_name))
        .ok_or_else(|| Error::Internal(format!("no descriptor for {full_name}")))
}

/// A tree of field-mask paths: each key is a field, its subtree the nested
/// paths below it (empty: the whole field).
#[derive(Debug, Default)]
struct PathTree(BTreeMap<String, PathTree>);

impl PathTree {
    fn insert(&mut self, path: &str) {
        let mut node = self;
        for part in path.split('.') {
            node = node.0.entry(part.to_string()).or_default();
        }
    }
}

/// Checks every path of `mask` against the message `full_name`: each must
/// name fields (nested through singular message fields). `field` names the
/// mask in errors.
pub fn check_mask_paths(full_name: &str, mask: &FieldMask, field: &str) -> Result<()> {
    let root = descriptor(full_name)?;
    for path in &mask.paths {
        if path == "*" {
            continue;
        }
        let mut message = Some(root.clone());
        for part in path.split('.') {
            let Some(current) = message.take() else {
                return Err(unknown_path(field, path));
            };
            let Some(f) = current.get_field_by_name(part) else {
                return Err(unknown_path(field, path));
            };
            message = match f.kind() {
                prost_reflect::Kind::Message(m) if !f.is_list() && !f.is_map() => Some(m),
                _ => None,
            };
        }
    }
    Ok(())
}

fn unknown_path(field: &str, path: &str) -> Error {
    Error::invalid(
        field,
        Reason::FieldUnknown,
        format!("{field} names {path:?}, which is not a field of this resource."),
    )
}

/// Applies a read mask: keeps the fields the mask names (and `id`), clears
/// the others. An empty or absent mask, or `*`, keeps everything.
pub fn apply_read_mask<M: Message + Default>(message: M, full_name: &str, mask: Option<&FieldMask>) -> Result<M> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty() && !m.paths.iter().any(|p| p == "*")) else {
        return Ok(message);
    };
    check_mask_paths(full_name, mask, "read_mask")?;
    let mut tree = PathTree::default();
    tree.insert("id");
    for path in &mask.paths {
        tree.insert(path);
    }
    let bytes = message.encode_to_vec();
    let mut dynamic = DynamicMessage::decode(descriptor(full_name)?, bytes.as_slice())
        .map_err(|e| Error::Internal(format!("re-decoding {full_name}: {e}")))?;
    retain(&mut dynamic, &tree);
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| Error::Internal(format!("decoding {full_name}: {e}")))
}

fn retain(message: &mut DynamicMessage, tree: &PathTree) {
    let descriptor = message.descriptor();
    for field in descriptor.fields() {
        match tree.0.get(field.name()) {
            None => message.clear_field(&field),
            Some(sub) if sub.0.is_empty() => {}
            Some(sub) => {
                if message.has_field(&field)
                    && let prost_reflect::Value::Message(child) = message.get_field_mut(&field)
                {
                    retain(child, sub);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;

    #[test]
    fn timestamps_convert_before_and_after_the_epoch() {
        assert_eq!(timestamp(1_500_000), Timestamp { seconds: 1, nanos: 500_000_000 });
        assert_eq!(timestamp(-1), Timestamp { seconds: -1, nanos: 999_999_000 });
    }

    #[test]
    fn read_mask_keeps_named_fields_and_id() {
        let contact = api::Contact {
            id: "x".into(),
            display_name: "Ada".into(),
            organization: "ACME".into(),
            notes: Some(api::RichText { format: 2, raw: "*hi*".into(), html: "<p>hi</p>".into() }),
            ..Default::default()
        };
        let mask = FieldMask { paths: vec!["display_name".into(), "notes.raw".into()] };
        let masked = apply_read_mask(contact, "agenda.v1.Contact", Some(&mask)).expect("valid mask");
        assert_eq!(masked.id, "x");
        assert_eq!(masked.display_name, "Ada");
        assert_eq!(masked.organization, "");
        assert_eq!(masked.notes, Some(api::RichText { format: 0, raw: "*hi*".into(), html: String::new() }));
    }

    #[test]
    fn unknown_mask_paths_are_refused() {
        for path in ["nope", "display_name.x", "emails.address", ""] {
            let mask = FieldMask { paths: vec![path.into()] };
            let err = apply_read_mask(api::Contact::default(), "agenda.v1.Contact", Some(&mask)).unwrap_err();
            assert_eq!(err.reason(), Reason::FieldUnknown, "{path}");
        }
    }
}
