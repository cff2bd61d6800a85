//! Field masks for every resource, through the descriptors of the contract
//! (prost-reflect), so a resource needs only its message name: read masks
//! keep the fields named; update masks copy the fields named from the request
//! onto the stored resource, which is then validated as a whole again.
//!
//! What a field is comes from the proto itself: its `google.api.field_behavior`
//! annotations (AIP-203), read from the descriptor set the server serves.
//! An update mask naming an `OUTPUT_ONLY` field is `FIELD_OUTPUT_ONLY`; one
//! naming the `IDENTIFIER` (the id, which selects the resource) or an
//! `IMMUTABLE` field whose value would change is `FIELD_IMMUTABLE`.
//!
//! A mask is parsed and checked once per request ([`ReadMask::parse`],
//! [`UpdateMask::parse`]), before any transaction begins: at most
//! [`MAX_MASK_PATHS`] paths, duplicates dropped, so the work a mask causes
//! is bounded by the limit, never by how often a caller repeats a path.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::LazyLock,
};

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};
use prost_types::FieldMask;

use crate::{
    domain::custom_fields,
    error::{Error, Reason, Result},
};

/// Most paths of one read or update mask.
pub const MAX_MASK_PATHS: usize = 256;

/// The extension that declares field behaviour (AIP-203).
pub const FIELD_BEHAVIOR_EXTENSION: &str = "google.api.field_behavior";

/// The values of `google.api.FieldBehavior` the server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// The caller must set it.
    Required = 2,
    /// The server sets it; callers cannot.
    OutputOnly = 3,
    /// Set once, at create; never changed afterwards.
    Immutable = 5,
    /// The resource's identifier.
    Identifier = 8,
}

struct Contract {
    pool: DescriptorPool,
    field_behavior: ExtensionDescriptor,
}

static CONTRACT: LazyLock<Result<Contract, String>> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(crate::api::FILE_DESCRIPTOR_SET).map_err(|e| format!("descriptor set: {e}"))?;
    let field_behavior = pool
        .get_extension_by_name(FIELD_BEHAVIOR_EXTENSION)
        .ok_or_else(|| format!("the descriptor set lacks the {FIELD_BEHAVIOR_EXTENSION} extension"))?;
    Ok(Contract { pool, field_behavior })
});

/// Loads the contract's descriptors and field behaviours; the server calls
/// this at start-up, so a build without them never serves.
pub fn load_contract() -> Result<(), String> {
    CONTRACT.as_ref().map(|_| ()).map_err(Clone::clone)
}

fn contract() -> Result<&'static Contract> {
    CONTRACT.as_ref().map_err(|e| Error::Internal(e.clone()))
}

/// Whether `field` is annotated with `behavior`.
pub fn has_behavior(field: &FieldDescriptor, behavior: Behavior) -> bool {
    let Ok(contract) = contract() else { return false };
    let options = field.options();
    if !options.has_extension(&contract.field_behavior) {
        return false;
    }
    match options.get_extension(&contract.field_behavior).as_ref() {
        Value::List(values) => values.iter().any(|v| v.as_enum_number() == Some(behavior as i32)),
        Value::EnumNumber(n) => *n == behavior as i32,
        _ => false,
    }
}

/// The descriptor of a message of the contract, e.g. `agenda.v1.Contact`.
pub fn descriptor(full_name: &str) -> Result<MessageDescriptor> {
    contract()?
        .pool
        .get_message_by_name(full_name)
        .ok_or_else(|| Error::Internal(format!("no descriptor for {full_name}")))
}

/// The descriptor pool of the contract.
pub fn pool() -> Result<&'static DescriptorPool> {
    Ok(&contract()?.pool)
}

const STRUCT: &str = "google.protobuf.Struct";

fn unknown_path(field: &str, path: &str) -> Error {
    Error::invalid(
        field,
        Reason::FieldUnknown,
        format!("{field} names {path:?}, which is not a field of this resource."),
    )
}

/// The fields a path walks through, from the root; `None` if a segment is not
/// a field. Below a Struct field one last segment names a key.
fn walk(root: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut message = Some(root.clone());
    let mut fields = Vec::new();
    let mut segments = path.split('.').peekable();
    while let Some(part) = segments.next() {
        let current = message.take()?;
        if current.full_name() == STRUCT {
            return (custom_fields::is_valid_key(part) && segments.peek().is_none()).then_some(fields);
        }
        let f = current.get_field_by_name(part)?;
        message = match f.kind() {
            Kind::Message(m) if !f.is_list() && !f.is_map() => Some(m),
            _ => None,
        };
        fields.push(f);
    }
    Some(fields)
}

/// The paths of a mask, bounded and without duplicates; `*` on its own.
fn bounded_paths(mask: &FieldMask, field: &str) -> Result<BTreeSet<String>> {
    if mask.paths.len() > MAX_MASK_PATHS {
        return Err(Error::invalid(
            field,
            Reason::TooMany,
            format!("{field} has {} paths; at most {MAX_MASK_PATHS} are allowed.", mask.paths.len()),
        ));
    }
    Ok(mask.paths.iter().cloned().collect())
}

/// A tree of field-mask paths.
#[derive(Debug, Default, Clone)]
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

/// A checked read mask: which fields of a resource message to return.
#[derive(Debug, Clone)]
pub struct ReadMask {
    /// `None` returns every field.
    keep: Option<(MessageDescriptor, PathTree)>,
}

impl ReadMask {
    /// Checks `mask` against the message `full_name`: an empty or absent
    /// mask, or one holding `*`, keeps everything; `id` is always kept.
    pub fn parse(full_name: &str, mask: Option<&FieldMask>) -> Result<ReadMask> {
        let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
            return Ok(ReadMask { keep: None });
        };
        let paths = bounded_paths(mask, "read_mask")?;
        if paths.contains("*") {
            return Ok(ReadMask { keep: None });
        }
        let descriptor = descriptor(full_name)?;
        let mut tree = PathTree::default();
        for field in descriptor.fields().filter(identifies) {
            tree.insert(field.name());
        }
        for path in &paths {
            walk(&descriptor, path).ok_or_else(|| unknown_path("read_mask", path))?;
            tree.insert(path);
        }
        Ok(ReadMask { keep: Some((descriptor, tree)) })
    }

    /// Keeps the fields the mask names, clears the others.
    pub fn apply<M: Message + Default>(&self, message: M) -> Result<M> {
        let Some((descriptor, tree)) = &self.keep else {
            return Ok(message);
        };
        let mut dynamic = to_dynamic(&message, descriptor)?;
        retain(&mut dynamic, tree);
        from_dynamic(&dynamic)
    }
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

/// Whether a top-level field names the resource in requests: its
/// `IDENTIFIER` (`id`), or, in a resource without one, its `key` (an
/// activity type is named by the immutable key chosen on create).
fn identifies(field: &FieldDescriptor) -> bool {
    has_behavior(field, Behavior::Identifier)
        || (field.name() == "key" && !field.parent_message().fields().any(|f| has_behavior(&f, Behavior::Identifier)))
}

/// A checked update mask of one resource message.
#[derive(Debug, Clone)]
pub struct UpdateMask {
    descriptor: MessageDescriptor,
    /// The paths to copy; `None`: the writable fields set in the patch.
    paths: Option<Vec<String>>,
}

/// Whether a top-level field may be named by an update: not the identifier,
/// not output only.
fn writable(field: &FieldDescriptor) -> bool {
    !has_behavior(field, Behavior::OutputOnly) && !identifies(field)
}

impl UpdateMask {
    /// Checks `mask` against the message `full_name`: every path must name a
    /// field, none may be output only or the identifier; `*` stands for every
    /// writable field.
    pub fn parse(full_name: &str, mask: Option<&FieldMask>) -> Result<UpdateMask> {
        let descriptor = descriptor(full_name)?;
        let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
            return Ok(UpdateMask { descriptor, paths: None });
        };
        let mut paths = BTreeSet::new();
        for path in bounded_paths(mask, "update_mask")? {
            if path == "*" {
                paths.extend(descriptor.fields().filter(writable).map(|f| f.name().to_string()));
                continue;
            }
            let fields = walk(&descriptor, &path).ok_or_else(|| unknown_path("update_mask", &path))?;
            if fields.first().is_some_and(identifies) {
                return Err(Error::invalid(
                    "update_mask",
                    Reason::FieldImmutable,
                    format!(
                        "update_mask names {path:?}, which identifies the resource and cannot change; leave it out."
                    ),
                ));
            }
            if fields.iter().any(|f| has_behavior(f, Behavior::OutputOnly)) {
                return Err(Error::invalid(
                    "update_mask",
                    Reason::FieldOutputOnly,
                    format!("update_mask names {path:?}, which the server sets; leave it out."),
                ));
            }
            paths.insert(path);
        }
        Ok(UpdateMask { descriptor, paths: Some(paths.into_iter().collect()) })
    }

    /// `current` with the fields of `patch` that the mask names copied over
    /// (a field named but unset in `patch` is cleared). Unless `creating`, an
    /// `IMMUTABLE` field whose value would change is `FIELD_IMMUTABLE`. The
    /// result still needs validating.
    pub fn merge<M: Message + Default>(&self, current: &M, patch: &M, creating: bool) -> Result<M> {
        let mut target = to_dynamic(current, &self.descriptor)?;
        let source = to_dynamic(patch, &self.descriptor)?;
        let implicit: Vec<String>;
        let paths = match &self.paths {
            Some(paths) => paths,
            None => {
                implicit = self
                    .descriptor
                    .fields()
                    .filter(|f| writable(f) && source.has_field(f))
                    .map(|f| f.name().to_string())
                    .collect();
                &implicit
            }
        };
        for path in paths {
            let segments: Vec<&str> = path.split('.').collect();
            copy_path(&mut target, Some(&source), &segments);
        }
        if !creating {
            let before = to_dynamic(current, &self.descriptor)?;
            for field in self.descriptor.fields().filter(|f| has_behavior(f, Behavior::Immutable)) {
                if before.get_field(&field) != target.get_field(&field) {
                    return Err(Error::invalid(
                        "update_mask",
                        Reason::FieldImmutable,
                        format!("{} is set when the resource is created and cannot change.", field.name()),
                    ));
                }
            }
        }
        from_dynamic(&target)
    }
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

    const CONTACT: &str = "agenda.v1.Contact";

    fn mask(paths: &[&str]) -> FieldMask {
        FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }
    }

    fn text(s: &str) -> prost_types::Value {
        prost_types::Value { kind: Some(StructKind::StringValue(s.into())) }
    }

    fn merge(current: &api::Contact, patch: &api::Contact, paths: Option<&[&str]>) -> Result<api::Contact> {
        UpdateMask::parse(CONTACT, paths.map(mask).as_ref())?.merge(current, patch, false)
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
        let read = ReadMask::parse(CONTACT, Some(&mask(&["display_name", "notes.raw"]))).unwrap();
        let masked = read.apply(contact).unwrap();
        assert_eq!(masked.id, "x");
        assert_eq!(masked.display_name, "Ada");
        assert_eq!(masked.organization, "");
        assert_eq!(masked.notes, Some(api::RichText { format: 0, raw: "*hi*".into(), html: String::new() }));
    }

    #[test]
    fn unknown_mask_paths_are_refused() {
        for path in ["nope", "display_name.x", "emails.address", "", "custom_fields.a.b"] {
            let err = ReadMask::parse(CONTACT, Some(&mask(&[path]))).unwrap_err();
            assert_eq!(err.reason(), Reason::FieldUnknown, "{path}");
        }
        // The custom key grammar is the one custom_fields accepts.
        assert!(ReadMask::parse(CONTACT, Some(&mask(&["custom_fields.my-key_2"]))).is_ok());
    }

    #[test]
    fn masks_are_bounded_and_deduplicated() {
        let many: Vec<&str> = vec!["display_name"; MAX_MASK_PATHS + 1];
        let err = ReadMask::parse(CONTACT, Some(&mask(&many))).unwrap_err();
        assert_eq!(err.reason(), Reason::TooMany);
        let err = UpdateMask::parse(CONTACT, Some(&mask(&vec!["*"; MAX_MASK_PATHS + 1]))).unwrap_err();
        assert_eq!(err.reason(), Reason::TooMany);
        let update = UpdateMask::parse(CONTACT, Some(&mask(&["*", "*", "display_name", "display_name"]))).unwrap();
        let paths = update.paths.unwrap();
        let unique: BTreeSet<&String> = paths.iter().collect();
        assert_eq!(unique.len(), paths.len());
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
        let merged =
            merge(&current, &patch, Some(&["display_name", "organization", "custom_fields.a", "custom_fields.b"]))
                .unwrap();
        assert_eq!(merged.display_name, "Ada L.");
        assert_eq!(merged.organization, "");
        assert_eq!(merged.job_title, "Engineer");
        assert_eq!(merged.custom_fields, Some(Struct { fields: [("a".into(), text("9"))].into() }));

        // No mask: the fields set in the patch.
        let merged = merge(&current, &patch, None).unwrap();
        assert_eq!((merged.display_name.as_str(), merged.organization.as_str()), ("Ada L.", "ACME"));
        assert_eq!(merged.custom_fields, patch.custom_fields);

        // "*": every writable field, unset ones cleared.
        let merged = merge(&current, &patch, Some(&["*"])).unwrap();
        assert_eq!((merged.display_name.as_str(), merged.job_title.as_str()), ("Ada L.", ""));
    }

    #[test]
    fn output_only_identifier_and_unknown_paths_are_refused() {
        let c = api::Contact::default();
        for (path, reason) in [
            ("etag", Reason::FieldOutputOnly),
            ("notes.html", Reason::FieldOutputOnly),
            ("update_time", Reason::FieldOutputOnly),
            ("id", Reason::FieldImmutable),
            ("nickname", Reason::FieldUnknown),
            ("emails.address", Reason::FieldUnknown),
        ] {
            let err = merge(&c, &c, Some(&[path])).unwrap_err();
            assert_eq!(err.reason(), reason, "{path}");
        }
    }

    /// Every field of an agenda.v1 message that the server sets carries
    /// OUTPUT_ONLY, so what `grpcurl describe` shows is what the server does.
    /// What the server sets is found by asking it: a contact converted from
    /// stored fields that are all empty has exactly the server's fields set.
    #[test]
    fn every_field_the_server_sets_is_output_only() {
        use crate::domain::{Meta, contact::Contact, rich_text::RichText};
        let stored = Contact {
            meta: Meta {
                delete_time: Some(2),
                purge_time: Some(3),
                ..Meta::new("t", "0190a000-0000-7000-8000-000000000000".into(), "u", 1)
            },
            fields: crate::domain::contact::ContactFields {
                notes: RichText::stored(2, String::new(), "<p>x</p>".into()),
                ..Default::default()
            },
        };
        let mut proto = crate::service::contact::to_proto(stored);
        proto.notes = Some(api::RichText { format: 0, raw: String::new(), html: "<p>x</p>".into() });
        let descriptor = descriptor(CONTACT).unwrap();
        let dynamic = to_dynamic(&proto, &descriptor).unwrap();
        let mut missing = Vec::new();
        for field in descriptor.fields().filter(|f| dynamic.has_field(f)) {
            let server_set = has_behavior(&field, Behavior::OutputOnly) || has_behavior(&field, Behavior::Identifier);
            match dynamic.get_field(&field).as_ref() {
                Value::Message(child) if !server_set => {
                    for sub in child.descriptor().fields().filter(|f| child.has_field(f)) {
                        if !has_behavior(&sub, Behavior::OutputOnly) {
                            missing.push(format!("{}.{}", field.name(), sub.name()));
                        }
                    }
                }
                _ if !server_set => missing.push(field.name().to_string()),
                _ => {}
            }
        }
        assert!(missing.is_empty(), "fields the server sets without OUTPUT_ONLY: {missing:?}");

        // And by name across every agenda.v1 message: the fields every
        // resource shares are output only wherever they appear.
        const SERVER_SET: &[&str] = &[
            "revision",
            "etag",
            "create_time",
            "update_time",
            "delete_time",
            "purge_time",
            "created_by",
            "updated_by",
            "html",
        ];
        let pool = pool().unwrap();
        let mut unmarked = Vec::new();
        for message in pool.all_messages().filter(|m| m.package_name() == "agenda.v1" && !m.name().ends_with("Request"))
        {
            for field in message.fields().filter(|f| SERVER_SET.contains(&f.name())) {
                if !has_behavior(&field, Behavior::OutputOnly) {
                    unmarked.push(field.full_name().to_string());
                }
            }
        }
        assert!(unmarked.is_empty(), "server-set fields without OUTPUT_ONLY: {unmarked:?}");
    }
}
