//! Field masks for every resource, through the descriptors of the contract
//! (prost-reflect), so a resource needs only a [`MaskSpec`]: read masks keep
//! the fields named; update masks copy the fields named from the request onto
//! the stored resource, which is then validated as a whole again.

use std::{collections::BTreeMap, sync::LazyLock};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage, Value};
use prost_types::FieldMask;

use crate::error::{Error, Reason, Result};

static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(crate::api::FILE_DESCRIPTOR_SET).ok());

const STRUCT: &str = "google.protobuf.Struct";

/// What the mask machinery needs to know of a resource message.
#[derive(Debug)]
pub struct MaskSpec {
    /// The message's full name, e.g. `agenda.v1.Contact`.
    pub message: &'static str,
    /// Paths the server sets: an update mask naming one is `FIELD_OUTPUT_ONLY`.
    pub output_only: &'static [&'static str],
}

fn descriptor(full_name: &str) -> Result<MessageDescriptor> {
    POOL.as_ref()
        .and_then(|pool| pool.get_message_by_name(full_name))
        .ok_or_else(|| Error::Internal(format!("no descriptor for {full_name}")))
}

fn unknown_path(field: &str, path: &str) -> Error {
    Error::invalid(
        field,
        Reason::FieldUnknown,
        format!("{field} names {path:?}, which is not a field of this resource."),
    )
}

/// Checks one path against the message: each segment must name a field,
/// nested through singular message fields; below a Struct field, one
/// segment names a key.
fn check_path(root: &MessageDescriptor, path: &str, field: &str) -> Result<()> {
    let mut message = Some(root.clone());
    let mut segments = path.split('.').peekable();
    while let Some(part) = segments.next() {
        let current = message.take().ok_or_else(|| unknown_path(field, path))?;
        if current.full_name() == STRUCT {
            let valid = !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid || segments.peek().is_some() {
                return Err(unknown_path(field, path));
            }
            return Ok(());
        }
        let f = current.get_field_by_name(part).ok_or_else(|| unknown_path(field, path))?;
        message = match f.kind() {
            Kind::Message(m) if !f.is_list() && !f.is_map() => Some(m),
            _ => None,
        };
    }
    Ok(())
}

/// A tree of field-mask paths.
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

fn to_dynamic<M: Message>(message: &M, descriptor: &MessageDescriptor) -> Result<DynamicMessage> {
    DynamicMessage::decode(descriptor.clone(), message.encode_to_vec().as_slice())
        .map_err(|e| Error::Internal(format!("re-decoding {}: {e}", descriptor.full_name())))
}

fn from_dynamic<M: Message + Default>(message: &DynamicMessage) -> Result<M> {
    M::decode(message.encode_to_vec().as_slice())
        .map_err(|e| Error::Internal(format!("decoding {}: {e}", message.descriptor().full_name())))
}

/// Applies a read mask: keeps the fields the mask names (and `id`), clears
/// the others. An empty or absent mask, or `*`, keeps everything.
pub fn apply_read_mask<M: Message + Default>(message: M, full_name: &str, mask: Option<&FieldMask>) -> Result<M> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty() && !m.paths.iter().any(|p| p == "*")) else {
        return Ok(message);
    };
    let descriptor = descriptor(full_name)?;
    let mut tree = PathTree::default();
    tree.insert("id");
    for path in &mask.paths {
        check_path(&descriptor, path, "read_mask")?;
        tree.insert(path);
    }
    let mut dynamic = to_dynamic(&message, &descriptor)?;
    retain(&mut dynamic, &tree);
    from_dynamic(&dynamic)
}

fn retain(message: &mut DynamicMessage, tree: &PathTree) {
    let descriptor = message.descriptor();
    if descriptor.full_name() == STRUCT {
        if let Some(field) = descriptor.get_field_by_name("fields")
            && let Value::Map(map) = message.get_field_mut(&field)
        {
            map.retain(|key, _| matches!(key, MapKey::String(k) if tree.0.contains_key(k)));
        }
        return;
    }
    for field in descriptor.fields() {
        match tree.0.get(field.name()) {
            None => message.clear_field(&field),
            Some(sub) if sub.0.is_empty() => {}
            Some(sub) => {
                if message.has_field(&field)
                    && let Value::Message(child) = message.get_field_mut(&field)
                {
                    retain(child, sub);
                }
            }
        }
    }
}

/// The paths an update changes: the mask's, checked (`*` is every writable
/// field), or without a mask every writable field set in `patch`.
fn update_paths(
    spec: &MaskSpec,
    descriptor: &MessageDescriptor,
    patch: &DynamicMessage,
    mask: Option<&FieldMask>,
) -> Result<Vec<String>> {
    let writable = |name: &str| name != "id" && !spec.output_only.contains(&name);
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(descriptor
            .fields()
            .filter(|f| writable(f.name()) && patch.has_field(f))
            .map(|f| f.name().to_string())
            .collect());
    };
    let mut paths = Vec::new();
    for path in &mask.paths {
        if path == "*" {
            paths.extend(descriptor.fields().filter(|f| writable(f.name())).map(|f| f.name().to_string()));
            continue;
        }
        check_path(descriptor, path, "update_mask")?;
        let output_only =
            path == "id" || spec.output_only.iter().any(|o| path == o || path.starts_with(&format!("{o}.")));
        if output_only {
            return Err(Error::invalid(
                "update_mask",
                Reason::FieldOutputOnly,
                format!("update_mask names {path:?}, which the server sets; leave it out."),
            ));
        }
        paths.push(path.clone());
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// `current` with the fields of `patch` that the update mask names (see
/// [`update_paths`]) copied over; a field named but unset in `patch` is
/// cleared. The result still needs validating.
pub fn merge_update<M: Message + Default>(
    spec: &MaskSpec,
    current: &M,
    patch: &M,
    mask: Option<&FieldMask>,
) -> Result<M> {
    let descriptor = descriptor(spec.message)?;
    let mut target = to_dynamic(current, &descriptor)?;
    let source = to_dynamic(patch, &descriptor)?;
    for path in update_paths(spec, &descriptor, &source, mask)? {
        let segments: Vec<&str> = path.split('.').collect();
        copy_path(&mut target, Some(&source), &segments);
    }
    from_dynamic(&target)
}

fn copy_path(target: &mut DynamicMessage, source: Option<&DynamicMessage>, segments: &[&str]) {
    let descriptor = target.descriptor();
    let Some((first, rest)) = segments.split_first() else { return };
    if descriptor.full_name() == STRUCT {
        copy_struct_key(target, source, first);
        return;
    }
    let Some(field) = descriptor.get_field_by_name(first) else { return };
    if rest.is_empty() {
        match source.filter(|s| s.has_field(&field)) {
            Some(source) => target.set_field(&field, source.get_field(&field).into_owned()),
            None => target.clear_field(&field),
        }
        return;
    }
    let child_source = source.filter(|s| s.has_field(&field)).and_then(|s| match s.get_field(&field).into_owned() {
        Value::Message(m) => Some(m),
        _ => None,
    });
    if let Value::Message(child) = target.get_field_mut(&field) {
        copy_path(child, child_source.as_ref(), rest);
    }
}

fn copy_struct_key(target: &mut DynamicMessage, source: Option<&DynamicMessage>, key: &str) {
    let Some(fields) = target.descriptor().get_field_by_name("fields") else { return };
    let value = source.and_then(|s| match s.get_field(&fields).into_owned() {
        Value::Map(map) => map.get(&MapKey::String(key.to_string())).cloned(),
        _ => None,
    });
    if let Value::Map(map) = target.get_field_mut(&fields) {
        match value {
            Some(value) => {
                map.insert(MapKey::String(key.to_string()), value);
            }
            None => {
                map.remove(&MapKey::String(key.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prost_types::{Struct, value::Kind as StructKind};

    use super::*;
    use crate::api;

    const SPEC: MaskSpec =
        MaskSpec { message: "agenda.v1.Contact", output_only: &["revision", "etag", "notes.html", "create_time"] };

    fn mask(paths: &[&str]) -> FieldMask {
        FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }
    }

    fn text(s: &str) -> prost_types::Value {
        prost_types::Value { kind: Some(StructKind::StringValue(s.into())) }
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
        let masked =
            apply_read_mask(contact, "agenda.v1.Contact", Some(&mask(&["display_name", "notes.raw"]))).unwrap();
        assert_eq!(masked.id, "x");
        assert_eq!(masked.display_name, "Ada");
        assert_eq!(masked.organization, "");
        assert_eq!(masked.notes, Some(api::RichText { format: 0, raw: "*hi*".into(), html: String::new() }));
    }

    #[test]
    fn unknown_mask_paths_are_refused() {
        for path in ["nope", "display_name.x", "emails.address", "", "custom_fields.a.b"] {
            let err = apply_read_mask(api::Contact::default(), "agenda.v1.Contact", Some(&mask(&[path]))).unwrap_err();
            assert_eq!(err.reason(), Reason::FieldUnknown, "{path}");
        }
    }

    #[test]
    fn update_copies_named_fields_and_clears_unset_ones() {
        let current = api::Contact {
            display_name: "Ada".into(),
            organization: "ACME".into(),
            job_title: "Engineer".into(),
            custom_fields: Some(Struct { fields: [("a".into(), text("1")), ("b".into(), text("2"))].into() }),
            ..Default::default()
        };
        let patch = api::Contact {
            display_name: "Ada L.".into(),
            custom_fields: Some(Struct { fields: [("a".into(), text("9"))].into() }),
            ..Default::default()
        };
        let merged = merge_update(
            &SPEC,
            &current,
            &patch,
            Some(&mask(&["display_name", "organization", "custom_fields.a", "custom_fields.b"])),
        )
        .unwrap();
        assert_eq!(merged.display_name, "Ada L.");
        assert_eq!(merged.organization, "");
        assert_eq!(merged.job_title, "Engineer");
        assert_eq!(merged.custom_fields, Some(Struct { fields: [("a".into(), text("9"))].into() }));

        // No mask: the fields set in the patch.
        let merged = merge_update(&SPEC, &current, &patch, None).unwrap();
        assert_eq!((merged.display_name.as_str(), merged.organization.as_str()), ("Ada L.", "ACME"));
        assert_eq!(merged.custom_fields, patch.custom_fields);

        // "*": every writable field, unset ones cleared.
        let merged = merge_update(&SPEC, &current, &patch, Some(&mask(&["*"]))).unwrap();
        assert_eq!((merged.display_name.as_str(), merged.job_title.as_str()), ("Ada L.", ""));
    }

    #[test]
    fn output_only_and_unknown_paths_are_refused() {
        let c = api::Contact::default();
        for (path, reason) in [
            ("etag", Reason::FieldOutputOnly),
            ("notes.html", Reason::FieldOutputOnly),
            ("id", Reason::FieldOutputOnly),
            ("nickname", Reason::FieldUnknown),
            ("emails.address", Reason::FieldUnknown),
        ] {
            let err = merge_update(&SPEC, &c, &c, Some(&mask(&[path]))).unwrap_err();
            assert_eq!(err.reason(), reason, "{path}");
        }
    }
}
