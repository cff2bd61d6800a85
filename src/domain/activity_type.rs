//! An activity type: its key, its names by language, its place in lists.
//! Every tenant starts with the system types of [`crate::i18n::SYSTEM_TYPES`].

use std::{collections::BTreeMap, str::FromStr};

use super::{Check, MAX_NAME_CHARS, Stored, is_key};
use crate::{api, error::Reason, i18n::SYSTEM_TYPES};

/// Most languages one type is named in.
pub const MAX_LANGUAGES: usize = 32;

/// The writable fields of an activity type, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActivityTypeFields {
    /// The key activities name it by; the resource's id.
    pub key: String,
    /// The name when no localized one fits.
    pub display_name: String,
    /// Names by canonical BCP 47 tag.
    pub localized_names: BTreeMap<String, String>,
    /// Lower sorts first.
    pub sort_order: i32,
}

/// A stored activity type.
pub type ActivityType = Stored<ActivityTypeFields>;

impl ActivityTypeFields {
    /// Validates a type as sent by a caller.
    pub fn parse(check: &mut Check, activity_type: &api::ActivityType) -> ActivityTypeFields {
        let key = activity_type.key.trim().to_string();
        if !is_key(&key) {
            let path = check.path("key");
            check.fail(
                "key",
                Reason::FieldInvalid,
                format!("{path} {key:?} is not a key: use a lower-case letter, then up to 63 of a-z, 0-9 and _."),
            );
        }
        let display_name = check.required_text("display_name", &activity_type.display_name, MAX_NAME_CHARS);
        let mut localized_names = BTreeMap::new();
        if check.max_items("localized_names", activity_type.localized_names.len(), MAX_LANGUAGES) {
            for (tag, name) in &activity_type.localized_names {
                let field = format!("localized_names[{tag:?}]");
                match unic_langid::LanguageIdentifier::from_str(tag.trim()) {
                    Ok(language) if !tag.trim().is_empty() => {
                        let name = check.required_text(&field, name, MAX_NAME_CHARS);
                        localized_names.insert(language.to_string(), name);
                    }
                    _ => {
                        let path = check.path(&field);
                        check.fail(
                            &field,
                            Reason::FieldInvalid,
                            format!("{path}: {tag:?} is not a BCP 47 language tag."),
                        );
                    }
                }
            }
        }
        ActivityTypeFields { key, display_name, localized_names, sort_order: activity_type.sort_order }
    }

    /// Whether this is one of the types every tenant starts with.
    pub fn is_system(&self) -> bool {
        is_system_key(&self.key)
    }
}

/// Whether `key` is a system type's.
pub fn is_system_key(key: &str) -> bool {
    SYSTEM_TYPES.iter().any(|t| t.key == key)
}

/// The system types as a tenant starts with them.
pub fn system_types() -> impl Iterator<Item = ActivityTypeFields> {
    SYSTEM_TYPES.iter().map(|t| ActivityTypeFields {
        key: t.key.to_string(),
        display_name: t.english().to_string(),
        localized_names: t.names.iter().map(|(tag, name)| (tag.to_string(), name.to_string())).collect(),
        sort_order: t.sort_order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tags_are_checked() {
        let mut check = Check::new("activity_type.");
        let parsed = ActivityTypeFields::parse(
            &mut check,
            &api::ActivityType {
                key: "site_visit".into(),
                display_name: "Site visit".into(),
                localized_names: [("de-at".to_string(), "Termin".to_string())].into(),
                ..Default::default()
            },
        );
        assert!(check.finish(()).is_ok());
        assert_eq!(parsed.localized_names.get("de-AT").map(String::as_str), Some("Termin"));
        let mut check = Check::new("activity_type.");
        ActivityTypeFields::parse(
            &mut check,
            &api::ActivityType {
                key: "Site Visit".into(),
                localized_names: [("not a tag".to_string(), "x".to_string())].into(),
                ..Default::default()
            },
        );
        let Err(crate::error::Error::Invalid(v)) = check.finish(()) else { panic!("expected violations") };
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(system_types().all(|t| t.localized_names.len() >= 4 && is_system_key(&t.key)));
    }
}
