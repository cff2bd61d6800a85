//! An activity: its validated fields and the rules that need no database
//! (docs/activities.md). The rules that do (the type exists, the contacts
//! exist, the parent chain has no cycle) are checked by the write path.

use prost_types::{Duration, Timestamp};
use serde::{Deserialize, Serialize};

use super::{Check, MAX_NAME_CHARS, Stored, custom_fields, is_key, parse_id, rich_text::RichText, task::TaskFields};
use crate::{api, error::Reason};

/// Most participants of an activity.
pub const MAX_PARTICIPANTS: usize = 100;
/// Most related records of an activity.
pub const MAX_RELATED: usize = 32;
/// Most ancestors an activity may have (its follow-up depth).
pub const MAX_DEPTH: usize = 32;
/// The type of an activity that names none.
pub const DEFAULT_TYPE: &str = "note";
/// The role of a participant that names none.
pub const DEFAULT_ROLE: &str = "target";
/// The longest duration: 366 days, in nanoseconds.
pub const MAX_DURATION_NANOS: i64 = 366 * 24 * 3600 * 1_000_000_000;
const MAX_PHONE_CHARS: usize = 64;
const MAX_RELATED_TYPE_CHARS: usize = 64;

/// A contact taking part in an activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// The contact (a UUID of the tenant's contacts).
    pub contact_id: String,
    /// Its role, `[a-z][a-z0-9_]{0,63}`.
    pub role: String,
}

/// A link to a record elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Related {
    /// The kind of record.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its id there.
    pub id: String,
}

/// The writable fields of an activity, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActivityFields {
    /// The ActivityType key.
    pub activity_type: String,
    /// Required subject.
    pub subject: String,
    /// The body.
    pub details: RichText,
    /// The Status number (never unspecified).
    pub status: i32,
    /// The Priority number (never unspecified).
    pub priority: i32,
    /// When it happens, microseconds since the epoch.
    pub occur_time: i64,
    /// When it is due, not before occur_time.
    pub due_time: Option<i64>,
    /// How long it takes, in nanoseconds (0 to 366 days).
    pub duration: Option<i64>,
    /// Where.
    pub location: String,
    /// The number called.
    pub phone_number: String,
    /// The Medium number (0: not set).
    pub medium: i32,
    /// The activity it follows up.
    pub parent_id: Option<String>,
    /// The contact who logged it.
    pub source_contact_id: Option<String>,
    /// The responsible person.
    pub assignee_user_id: String,
    /// The responsible group.
    pub assignee_group: String,
    /// The contacts in their roles, each pair once.
    pub participants: Vec<Participant>,
    /// Links to records elsewhere.
    pub related: Vec<Related>,
    /// Caller-defined fields, as a JSON object text.
    pub custom_fields: custom_fields::CustomFields,
    /// A test activity.
    pub is_test: bool,
    /// Made by a machine.
    pub is_auto: bool,
    /// The outcome.
    pub result: String,
    /// What a task has beyond its activity (empty on other activities).
    pub task: TaskFields,
}

/// A stored activity.
pub type Activity = Stored<ActivityFields>;

/// Microseconds of a Timestamp (sub-microsecond digits are dropped).
pub fn micros_of(time: &Timestamp) -> Option<i64> {
    time.seconds.checked_mul(1_000_000)?.checked_add(i64::from(time.nanos.div_euclid(1_000)))
}

fn enum_value(check: &mut Check, field: &str, value: i32, valid: bool, default: i32) -> i32 {
    if !valid {
        let path = check.path(field);
        check.fail(field, Reason::FieldInvalid, format!("{path} is not a known value ({value})."));
        return default;
    }
    if value == 0 { default } else { value }
}

fn optional_id(check: &mut Check, field: &str, value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let id = parse_id(value);
    if id.is_none() {
        let path = check.path(field);
        check.fail(field, Reason::FieldInvalid, format!("{path} must be a UUID, not {value:?}."));
    }
    id
}

/// Whether a Timestamp is one proto3 JSON can write: years 1 to 9999, nanos in range.
pub fn valid_time(time: &Timestamp) -> bool {
    (-62_135_596_800..=253_402_300_799).contains(&time.seconds) && (0..1_000_000_000).contains(&time.nanos)
}

fn time(check: &mut Check, field: &str, value: Option<&Timestamp>) -> Option<i64> {
    let value = value?;
    let micros = micros_of(value).filter(|_| valid_time(value));
    if micros.is_none() {
        let path = check.path(field);
        check.fail(field, Reason::FieldInvalid, format!("{path} is not a valid time (years 1 to 9999)."));
    }
    micros
}

fn duration(check: &mut Check, value: Option<&Duration>) -> Option<i64> {
    let value = value?;
    let nanos = value.seconds.checked_mul(1_000_000_000).and_then(|s| s.checked_add(i64::from(value.nanos)));
    match nanos {
        Some(n) if (0..=MAX_DURATION_NANOS).contains(&n) && value.nanos.abs() < 1_000_000_000 => Some(n),
        _ => {
            let path = check.path("duration");
            check.fail("duration", Reason::FieldInvalid, format!("{path} must be between 0 and 366 days."));
            None
        }
    }
}

/// Validates a participant's role ("target" when empty).
pub fn parse_role(check: &mut Check, field: &str, role: &str) -> String {
    let role = role.trim();
    if role.is_empty() {
        return DEFAULT_ROLE.to_string();
    }
    if !is_key(role) {
        let path = check.path(field);
        check.fail(
            field,
            Reason::FieldInvalid,
            format!("{path} {role:?} is not a role: use a lower-case letter, then up to 63 of a-z, 0-9 and _."),
        );
    }
    role.to_string()
}

/// Validates a participant's contact id.
pub fn parse_contact_id(check: &mut Check, field: &str, contact_id: &str) -> String {
    match optional_id(check, field, contact_id) {
        Some(id) => id,
        None => {
            if contact_id.trim().is_empty() {
                let path = check.path(field);
                check.fail(field, Reason::FieldRequired, format!("{path} is required."));
            }
            String::new()
        }
    }
}

fn parse_participants(check: &mut Check, participants: &[api::Participant]) -> Vec<Participant> {
    if !check.max_items("participants", participants.len(), MAX_PARTICIPANTS) {
        return Vec::new();
    }
    let mut parsed: Vec<Participant> = Vec::with_capacity(participants.len());
    for (i, p) in participants.iter().enumerate() {
        let contact_id = parse_contact_id(check, &format!("participants[{i}].contact_id"), &p.contact_id);
        let role = parse_role(check, &format!("participants[{i}].role"), &p.role);
        let participant = Participant { contact_id, role };
        if let Some(first) = parsed.iter().position(|q| *q == participant) {
            let path = check.path(&format!("participants[{i}]"));
            check.fail(
                format!("participants[{i}]"),
                Reason::FieldInvalid,
                format!("{path} repeats participants[{first}]: a contact takes each role once."),
            );
        }
        parsed.push(participant);
    }
    parsed
}

/// Validates related records.
pub fn parse_related(check: &mut Check, related: &[api::RelatedRecord]) -> Vec<Related> {
    if !check.max_items("related", related.len(), MAX_RELATED) {
        return Vec::new();
    }
    related
        .iter()
        .enumerate()
        .map(|(i, r)| Related {
            kind: check.required_text(&format!("related[{i}].type"), &r.r#type, MAX_RELATED_TYPE_CHARS),
            id: check.required_text(&format!("related[{i}].id"), &r.id, MAX_NAME_CHARS),
        })
        .collect()
}

impl ActivityFields {
    /// Validates an activity as sent by a caller; violations are reported
    /// under `check`'s prefix. Output-only fields are ignored.
    pub fn parse(check: &mut Check, activity: &api::Activity) -> ActivityFields {
        let activity_type = match activity.r#type.trim() {
            "" => DEFAULT_TYPE.to_string(),
            key if is_key(key) => key.to_string(),
            key => {
                let path = check.path("type");
                check.fail("type", Reason::FieldInvalid, format!("{path} {key:?} is not an activity type key."));
                key.to_string()
            }
        };
        let subject = check.required_text("subject", &activity.subject, MAX_NAME_CHARS);
        let details = match &activity.details {
            Some(details) => RichText::parse(check, "details", details.format, &details.raw),
            None => RichText::default(),
        };
        let status = enum_value(
            check,
            "status",
            activity.status,
            api::Status::try_from(activity.status).is_ok(),
            api::Status::Scheduled as i32,
        );
        let priority = enum_value(
            check,
            "priority",
            activity.priority,
            api::Priority::try_from(activity.priority).is_ok(),
            api::Priority::Normal as i32,
        );
        let medium = enum_value(check, "medium", activity.medium, api::Medium::try_from(activity.medium).is_ok(), 0);
        let occur_time = time(check, "occur_time", activity.occur_time.as_ref())
            .unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
        let due_time = time(check, "due_time", activity.due_time.as_ref());
        if let Some(due) = due_time
            && due < occur_time
        {
            let path = check.path("due_time");
            check.fail("due_time", Reason::FieldInvalid, format!("{path} must not be before occur_time."));
        }
        let assignee = activity.assignee.clone().unwrap_or_default();
        ActivityFields {
            activity_type,
            subject,
            details,
            status,
            priority,
            occur_time,
            due_time,
            duration: duration(check, activity.duration.as_ref()),
            location: check.optional_text("location", &activity.location, MAX_NAME_CHARS),
            phone_number: check.optional_text("phone_number", &activity.phone_number, MAX_PHONE_CHARS),
            medium,
            parent_id: optional_id(check, "parent_id", &activity.parent_id),
            source_contact_id: optional_id(check, "source_contact_id", &activity.source_contact_id),
            assignee_user_id: check.optional_text("assignee.user_id", &assignee.user_id, MAX_NAME_CHARS),
            assignee_group: check.optional_text("assignee.group", &assignee.group, MAX_NAME_CHARS),
            participants: parse_participants(check, &activity.participants),
            related: parse_related(check, &activity.related),
            custom_fields: custom_fields::parse(check, "custom_fields", activity.custom_fields.as_ref()),
            is_test: activity.is_test,
            is_auto: activity.is_auto,
            result: check.optional_text("result", &activity.result, MAX_NAME_CHARS),
            task: TaskFields::default(),
        }
    }

    /// The contacts the activity names: its participants and its source.
    pub fn contacts(&self) -> impl Iterator<Item = &str> {
        self.participants.iter().map(|p| p.contact_id.as_str()).chain(self.source_contact_id.as_deref())
    }

    /// With `participant` added; `None` if it is there already.
    pub fn with_participant(&self, check: &mut Check, participant: Participant) -> Option<ActivityFields> {
        if self.participants.contains(&participant) {
            return None;
        }
        if !check.max_items("participants", self.participants.len() + 1, MAX_PARTICIPANTS) {
            return None;
        }
        let mut fields = self.clone();
        fields.participants.push(participant);
        Some(fields)
    }

    /// Without `participant`; `None` if it is not there.
    pub fn without_participant(&self, participant: &Participant) -> Option<ActivityFields> {
        let index = self.participants.iter().position(|p| p == participant)?;
        let mut fields = self.clone();
        fields.participants.remove(index);
        Some(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn violations(activity: &api::Activity) -> Vec<(String, Reason)> {
        let mut check = Check::new("activity.");
        ActivityFields::parse(&mut check, activity);
        match check.finish(()) {
            Ok(()) => Vec::new(),
            Err(Error::Invalid(v)) => v.into_iter().map(|v| (v.field, v.reason)).collect(),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_are_filled() {
        let mut check = Check::new("activity.");
        let fields = ActivityFields::parse(
            &mut check,
            &api::Activity {
                subject: "Call back".into(),
                participants: vec![api::Participant { contact_id: uuid::Uuid::nil().to_string(), role: "".into() }],
                ..Default::default()
            },
        );
        assert!(check.finish(()).is_ok());
        assert_eq!(fields.activity_type, "note");
        assert_eq!(fields.status, api::Status::Scheduled as i32);
        assert_eq!(fields.priority, api::Priority::Normal as i32);
        assert_eq!(fields.participants[0].role, "target");
        assert!(fields.occur_time > 0);
    }

    #[test]
    fn each_problem_is_named() {
        let nil = uuid::Uuid::nil().to_string();
        let activity = api::Activity {
            subject: " ".into(),
            r#type: "Bad Type".into(),
            status: 99,
            occur_time: Some(Timestamp { seconds: 100, nanos: 0 }),
            due_time: Some(Timestamp { seconds: 50, nanos: 0 }),
            duration: Some(Duration { seconds: 367 * 24 * 3600, nanos: 0 }),
            participants: vec![
                api::Participant { contact_id: nil.clone(), role: "Bad-Role".into() },
                api::Participant { contact_id: nil.clone(), role: "target".into() },
                api::Participant { contact_id: nil, role: "".into() },
            ],
            parent_id: "nope".into(),
            ..Default::default()
        };
        let fields: Vec<String> = violations(&activity).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "activity.type",
                "activity.subject",
                "activity.status",
                "activity.due_time",
                "activity.duration",
                "activity.parent_id",
                "activity.participants[0].role",
                "activity.participants[2]",
            ]
        );
    }

    #[test]
    fn times_outside_years_1_to_9999_are_refused() {
        let far = api::Activity {
            subject: "x".into(),
            occur_time: Some(Timestamp { seconds: 253_402_300_800, nanos: 0 }),
            ..Default::default()
        };
        assert_eq!(violations(&far), vec![("activity.occur_time".to_string(), Reason::FieldInvalid)]);
    }

    #[test]
    fn participants_are_added_and_removed_once() {
        let fields = ActivityFields::default();
        let p = Participant { contact_id: "c".into(), role: "target".into() };
        let mut check = Check::new("");
        let added = fields.with_participant(&mut check, p.clone()).expect("added");
        assert!(added.with_participant(&mut check, p.clone()).is_none());
        assert!(added.without_participant(&p).is_some_and(|f| f.participants.is_empty()));
        assert!(fields.without_participant(&p).is_none());
    }
}
