//! Validated types and rules of the resources: a value that got past parsing
//! here is valid, and the store never checks it again. The domain parses the
//! generated request messages (`crate::api`) it validates, but knows nothing
//! of transport (no tonic status, no metadata) or of storage (no diesel).

pub mod activity;
pub mod activity_type;
pub mod contact;
pub mod custom_fields;
pub mod rich_text;
pub mod task;
pub mod task_category;

use sha2::{Digest, Sha256};

use crate::error::{Error, Reason, Violation};

/// Limit of names, subjects and most short texts, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// Collects the violations of one request, under a field prefix (such as
/// `contact.` or `requests[3].contact.`), so every problem is reported at once.
#[derive(Debug, Default)]
pub struct Check {
    prefix: String,
    violations: Vec<Violation>,
}

impl Check {
    /// A check whose field paths start with `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Check { prefix: prefix.into(), violations: Vec::new() }
    }

    /// Records a violation of `field` (relative to the prefix).
    pub fn fail(&mut self, field: impl AsRef<str>, reason: Reason, description: impl Into<String>) {
        self.violations.push(Violation::new(format!("{}{}", self.prefix, field.as_ref()), reason, description));
    }

    /// The full path of `field`.
    pub fn path(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    /// A required text: trimmed, 1 to `max` characters.
    pub fn required_text(&mut self, field: &str, value: &str, max: usize) -> String {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            let path = self.path(field);
            self.fail(field, Reason::FieldRequired, format!("{path} is required and must not be blank."));
        } else {
            self.max_chars(field, trimmed, max);
        }
        trimmed.to_string()
    }

    /// An optional text: trimmed, at most `max` characters.
    pub fn optional_text(&mut self, field: &str, value: &str, max: usize) -> String {
        let trimmed = value.trim();
        self.max_chars(field, trimmed, max);
        trimmed.to_string()
    }

    fn max_chars(&mut self, field: &str, value: &str, max: usize) {
        let count = value.chars().count();
        if count > max {
            let path = self.path(field);
            self.fail(
                field,
                Reason::FieldInvalid,
                format!("{path} has {count} characters; at most {max} are allowed."),
            );
        } else if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            let path = self.path(field);
            self.fail(field, Reason::FieldInvalid, format!("{path} contains control characters."));
        }
    }

    /// At most `max` items in a repeated field.
    pub fn max_items(&mut self, field: &str, count: usize, max: usize) -> bool {
        if count > max {
            let path = self.path(field);
            self.fail(field, Reason::FieldInvalid, format!("{path} has {count} items; at most {max} are allowed."));
            return false;
        }
        true
    }

    /// `value` if no violation was recorded, else every violation.
    pub fn finish<T>(self, value: T) -> Result<T, Error> {
        if self.violations.is_empty() { Ok(value) } else { Err(Error::Invalid(self.violations)) }
    }
}

/// Whether `value` is a key: a lower-case letter, then up to 63 lower-case
/// letters, digits and `_` (activity type keys, participant roles).
pub fn is_key(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && value.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses a resource id: a UUID, in its canonical lower-case form. An id that
/// is not a UUID cannot exist, so it is reported as `NOT_FOUND` by callers
/// that look it up, and as `FIELD_INVALID` where the caller chooses it.
pub fn parse_id(value: &str) -> Option<String> {
    uuid::Uuid::parse_str(value.trim()).ok().map(|u| u.hyphenated().to_string())
}

/// A new resource id: a UUIDv7, ordered by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

/// The etag of a resource at a revision: opaque to callers, changes with
/// every revision.
pub fn etag(id: &str, revision: i64) -> String {
    let digest = Sha256::digest(format!("{id}/{revision}").as_bytes());
    format!("\"{}\"", hex::encode(&digest[..8]))
}

/// What the server keeps about every resource, whatever its kind: identity,
/// revision, times and actors. The rules of revisions, etags and soft delete
/// live here once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The tenant.
    pub tenant: String,
    /// The id (a UUID).
    pub id: String,
    /// 1 at create, +1 per change.
    pub revision: i64,
    /// Microseconds since the epoch.
    pub create_time: i64,
    /// Microseconds since the epoch.
    pub update_time: i64,
    /// Set while soft-deleted.
    pub delete_time: Option<i64>,
    /// When a soft-deleted resource is purged.
    pub purge_time: Option<i64>,
    /// The creator's `sub`.
    pub created_by: String,
    /// The last changer's `sub`.
    pub updated_by: String,
}

impl Meta {
    /// A new resource's meta: revision 1, created now by `actor`.
    pub fn new(tenant: &str, id: String, actor: &str, now: i64) -> Meta {
        Meta {
            tenant: tenant.to_string(),
            id,
            revision: 1,
            create_time: now,
            update_time: now,
            delete_time: None,
            purge_time: None,
            created_by: actor.to_string(),
            updated_by: actor.to_string(),
        }
    }

    /// The current etag.
    pub fn etag(&self) -> String {
        etag(&self.id, self.revision)
    }

    /// `ABORTED ETAG_MISMATCH` unless `expected` is empty or current.
    pub fn check_etag(&self, resource: &'static str, expected: &str) -> Result<(), Error> {
        if !expected.is_empty() && expected != self.etag() {
            return Err(Error::EtagMismatch { resource, id: self.id.clone() });
        }
        Ok(())
    }

    /// The next revision, changed by `actor` now.
    pub fn next(&self, actor: &str, now: i64) -> Meta {
        Meta { revision: self.revision + 1, update_time: now, updated_by: actor.to_string(), ..self.clone() }
    }

    /// Soft-deleted by `actor` now, purged after `retention_micros`; `None`
    /// if it is deleted already (deleting again changes nothing).
    pub fn deleted(&self, actor: &str, now: i64, retention_micros: i64) -> Option<Meta> {
        if self.delete_time.is_some() {
            return None;
        }
        Some(Meta {
            delete_time: Some(now),
            purge_time: Some(now.saturating_add(retention_micros)),
            ..self.next(actor, now)
        })
    }

    /// Restored by `actor` now; `FAILED_PRECONDITION NOT_DELETED` if it is not deleted.
    pub fn undeleted(&self, resource: &'static str, actor: &str, now: i64) -> Result<Meta, Error> {
        if self.delete_time.is_none() {
            return Err(Error::FailedPrecondition {
                reason: Reason::NotDeleted,
                subject: format!("{resource}/{}", self.id),
                message: format!("The {resource} {:?} is not deleted, so it cannot be undeleted.", self.id),
            });
        }
        Ok(Meta { delete_time: None, purge_time: None, ..self.next(actor, now) })
    }
}

/// A stored resource of any kind: its validated fields and its [`Meta`].
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<F> {
    /// Identity, revision, times, actors.
    pub meta: Meta,
    /// The writable fields.
    pub fields: F,
}

/// Parses an optional `request_id`: empty or a UUID.
pub fn parse_request_id(check: &mut Check, field: &str, value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    match parse_id(value) {
        Some(id) => Some(id),
        None => {
            let path = check.path(field);
            check.fail(field, Reason::FieldInvalid, format!("{path} must be a UUID, such as one made by uuidgen."));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_trimmed_and_bounded() {
        let mut check = Check::new("contact.");
        assert_eq!(check.required_text("display_name", "  Ada  ", 255), "Ada");
        check.required_text("given_name", "   ", 255);
        check.optional_text("job_title", &"x".repeat(256), 255);
        check.optional_text("organization", &"é".repeat(255), 255);
        let Err(Error::Invalid(violations)) = check.finish(()) else { panic!("expected violations") };
        let fields: Vec<_> = violations.iter().map(|v| (v.field.as_str(), v.reason)).collect();
        assert_eq!(
            fields,
            vec![("contact.given_name", Reason::FieldRequired), ("contact.job_title", Reason::FieldInvalid)]
        );
    }

    #[test]
    fn ids_are_canonical_uuids() {
        let id = new_id();
        assert_eq!(parse_id(&id.to_uppercase()), Some(id.clone()));
        assert_eq!(parse_id("42"), None);
        assert_ne!(etag(&id, 1), etag(&id, 2));
    }
}
