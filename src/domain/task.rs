//! A task: an activity of type `task` with a deadline and a person
//! responsible (docs/tasks.md). What a task has beyond its activity lives in
//! [`TaskFields`], kept on every activity (empty on the others); the rules of
//! completion, recurrence and reminders are here.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use rrule::{RRule, Tz, Unvalidated};

use super::{
    Check, MAX_NAME_CHARS, Meta, Stored,
    activity::{ActivityFields, micros_of, parse_related, valid_time},
    new_id, parse_id,
    rich_text::RichText,
};
use crate::{api, error::Reason};

/// The activity type of tasks.
pub const TASK_TYPE: &str = "task";
/// The longest reminder lead: one year, in minutes.
pub const MAX_ALERT_MINUTES: i32 = 525_600;
/// The zone of a task that names none.
pub const DEFAULT_TIME_ZONE: &str = "UTC";
const MAX_RECURRENCE_CHARS: usize = 512;
/// The most occurrences walked to find the next one (about 274 years daily).
pub const MAX_OCCURRENCES: usize = 100_000;

/// What a task has beyond its activity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskFields {
    /// Its TaskCategory.
    pub category_id: Option<String>,
    /// The contact it concerns.
    pub contact_id: Option<String>,
    /// Remind the responsible.
    pub notify_responsible: bool,
    /// Minutes before the deadline the reminder fires.
    pub alert_minutes: i32,
    /// The IANA zone recurrence is expanded in.
    pub time_zone: String,
    /// An RFC 5545 RRULE ("" for none).
    pub recurrence: String,
    /// The first occurrence (none on the first itself).
    pub recurrence_origin_id: Option<String>,
    /// The first occurrence's deadline: the rule's DTSTART.
    pub recurrence_start: Option<i64>,
    /// The next occurrence, once completing this one made it.
    pub successor_id: Option<String>,
    /// When it was completed.
    pub completed_time: Option<i64>,
    /// Who completed it.
    pub completed_by: String,
    /// The reminder time that last fired (server-kept).
    pub reminded_for: Option<i64>,
}

/// Whether a stored activity is a task.
pub fn is_task(fields: &ActivityFields) -> bool {
    fields.activity_type == TASK_TYPE
}

/// The zone of a name, if IANA knows it.
pub fn zone(name: &str) -> Option<chrono_tz::Tz> {
    chrono_tz::Tz::from_str(name).ok()
}

fn parse_rule(check: &mut Check, rule: &str, deadline: Option<i64>, zone: Option<chrono_tz::Tz>) {
    if rule.is_empty() {
        return;
    }
    let path = check.path("recurrence");
    if rule.len() > MAX_RECURRENCE_CHARS {
        check.fail("recurrence", Reason::FieldInvalid, format!("{path} is longer than {MAX_RECURRENCE_CHARS} bytes."));
        return;
    }
    let Some(deadline) = deadline else {
        check.fail(
            "recurrence",
            Reason::FieldInvalid,
            format!("{path} needs a deadline: the first occurrence is the task's deadline."),
        );
        return;
    };
    // RFC 5545 rules are ASCII; the rrule crate slices its parts by byte
    // and panics inside a multi-byte character (found by fuzzing).
    if !rule.is_ascii() {
        check.fail(
            "recurrence",
            Reason::FieldInvalid,
            format!("{path} is not a valid RFC 5545 RRULE: it holds a character outside ASCII."),
        );
        return;
    }
    let start = match (zone, Utc.timestamp_micros(deadline).single()) {
        (Some(zone), Some(utc)) => utc.with_timezone(&Tz::Tz(zone)),
        _ => return,
    };
    let parsed = rule.strip_prefix("RRULE:").unwrap_or(rule).parse::<RRule<Unvalidated>>();
    if let Ok(rule) = &parsed
        && matches!(rule.get_freq(), rrule::Frequency::Secondly | rrule::Frequency::Minutely)
    {
        check.fail(
            "recurrence",
            Reason::FieldInvalid,
            format!("{path}: a task recurs at most hourly (FREQ=HOURLY or slower)."),
        );
        return;
    }
    if let Err(error) = parsed.and_then(|r| r.validate(start)) {
        check.fail(
            "recurrence",
            Reason::FieldInvalid,
            format!("{path} is not a valid RFC 5545 RRULE such as \"FREQ=WEEKLY;BYDAY=MO\": {error}"),
        );
    }
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

/// Validates a task as sent by a caller, as the activity it is. The
/// activity fields a task does not have are left empty, for the write path
/// to carry over from the stored activity ([`carry_into_task`]).
pub fn parse(check: &mut Check, task: &api::Task) -> ActivityFields {
    let subject = check.required_text("title", &task.title, MAX_NAME_CHARS);
    let details = match &task.description {
        Some(d) => RichText::parse(check, "description", d.format, &d.raw),
        None => RichText::default(),
    };
    let status = match api::Status::try_from(task.status) {
        Ok(api::Status::Unspecified) => api::Status::Scheduled as i32,
        Ok(status) => status as i32,
        Err(_) => {
            let path = check.path("status");
            check.fail("status", Reason::FieldInvalid, format!("{path} is not a known value ({}).", task.status));
            api::Status::Scheduled as i32
        }
    };
    let priority = match api::Priority::try_from(task.priority) {
        Ok(api::Priority::Unspecified) => api::Priority::Normal as i32,
        Ok(priority) => priority as i32,
        Err(_) => {
            let path = check.path("priority");
            check.fail("priority", Reason::FieldInvalid, format!("{path} is not a known value ({}).", task.priority));
            api::Priority::Normal as i32
        }
    };
    let deadline = task.deadline.as_ref().and_then(|d| {
        let micros = micros_of(d).filter(|_| valid_time(d));
        if micros.is_none() {
            let path = check.path("deadline");
            check.fail("deadline", Reason::FieldInvalid, format!("{path} is not a valid time."));
        }
        micros
    });
    if !(0..=MAX_ALERT_MINUTES).contains(&task.alert_minutes) {
        let path = check.path("alert_minutes");
        check.fail(
            "alert_minutes",
            Reason::FieldInvalid,
            format!("{path} must be between 0 and {MAX_ALERT_MINUTES} (a year)."),
        );
    }
    let time_zone = match task.time_zone.trim() {
        "" => DEFAULT_TIME_ZONE.to_string(),
        name => name.to_string(),
    };
    let tz = zone(&time_zone);
    if tz.is_none() {
        let path = check.path("time_zone");
        check.fail(
            "time_zone",
            Reason::FieldInvalid,
            format!("{path} {time_zone:?} is not an IANA time zone such as \"Europe/Berlin\"."),
        );
    }
    let recurrence = task.recurrence.trim().to_string();
    parse_rule(check, &recurrence, deadline, tz);
    ActivityFields {
        activity_type: TASK_TYPE.to_string(),
        subject,
        details,
        status,
        priority,
        occur_time: deadline.unwrap_or_else(|| Utc::now().timestamp_micros()),
        due_time: deadline,
        assignee_user_id: check.optional_text("responsible_user_id", &task.responsible_user_id, MAX_NAME_CHARS),
        parent_id: optional_id(check, "parent_id", &task.parent_id),
        related: parse_related(check, &task.related),
        custom_fields: super::custom_fields::CustomFields::empty(),
        task: TaskFields {
            category_id: optional_id(check, "category_id", &task.category_id),
            contact_id: optional_id(check, "contact_id", &task.contact_id),
            notify_responsible: task.notify_responsible,
            alert_minutes: task.alert_minutes,
            time_zone,
            recurrence,
            // The first occurrence starts its rule; a later one keeps the
            // first's start ([`carry_into_task`]).
            recurrence_start: deadline,
            ..TaskFields::default()
        },
        ..ActivityFields::default()
    }
}

/// A task's new fields over its stored activity: what the Task message
/// does not carry (the activity's own fields, the server's task state) is
/// kept; a task without a deadline keeps its occur_time. The first
/// occurrence's deadline is its rule's start.
pub fn carry_into_task(before: &ActivityFields, parsed: ActivityFields) -> ActivityFields {
    let task = TaskFields {
        recurrence_origin_id: before.task.recurrence_origin_id.clone(),
        recurrence_start: match before.task.recurrence_origin_id {
            Some(_) => before.task.recurrence_start,
            None => parsed.due_time,
        },
        successor_id: before.task.successor_id.clone(),
        completed_time: before.task.completed_time,
        completed_by: before.task.completed_by.clone(),
        reminded_for: before.task.reminded_for,
        ..parsed.task
    };
    ActivityFields {
        occur_time: if parsed.due_time.is_some() { parsed.occur_time } else { before.occur_time },
        duration: before.duration,
        location: before.location.clone(),
        phone_number: before.phone_number.clone(),
        medium: before.medium,
        source_contact_id: before.source_contact_id.clone(),
        assignee_group: before.assignee_group.clone(),
        participants: before.participants.clone(),
        custom_fields: before.custom_fields.clone(),
        is_test: before.is_test,
        is_auto: before.is_auto,
        result: before.result.clone(),
        task,
        ..parsed
    }
}

/// The first occurrence of a recurring task: its origin, or itself.
pub fn origin_of(task: &Stored<ActivityFields>) -> Option<String> {
    if task.fields.task.recurrence.is_empty() && task.fields.task.recurrence_origin_id.is_none() {
        return None;
    }
    Some(task.fields.task.recurrence_origin_id.clone().unwrap_or_else(|| task.meta.id.clone()))
}

/// Whether the task's deadline passed `now` while it is open.
pub fn overdue(fields: &ActivityFields, now: i64) -> bool {
    let open = fields.status != api::Status::Completed as i32 && fields.status != api::Status::Cancelled as i32;
    open && fields.due_time.is_some_and(|due| due < now)
}

/// When the task's reminder is to fire: `deadline − alert_minutes`, while it
/// asks for one, is open and not deleted, unless that time fired already.
pub fn reminder_at(meta: &Meta, fields: &ActivityFields) -> Option<i64> {
    let open = fields.status != api::Status::Completed as i32 && fields.status != api::Status::Cancelled as i32;
    if !is_task(fields) || !fields.task.notify_responsible || !open || meta.delete_time.is_some() {
        return None;
    }
    let at = fields.due_time?.saturating_sub(i64::from(fields.task.alert_minutes) * 60_000_000);
    (fields.task.reminded_for != Some(at)).then_some(at)
}

/// The deadline of the occurrence after `task`'s, in its zone; `None` when
/// the rule has no more (COUNT, UNTIL) or the task does not recur.
pub fn next_deadline(fields: &ActivityFields) -> Option<i64> {
    let (rule, start, due) = (&fields.task.recurrence, fields.task.recurrence_start?, fields.due_time?);
    // A stored rule passed parse_rule; outside ASCII the rrule crate panics.
    if rule.is_empty() || !rule.is_ascii() {
        return None;
    }
    let zone = Tz::Tz(zone(&fields.task.time_zone)?);
    let start: DateTime<Tz> = Utc.timestamp_micros(start).single()?.with_timezone(&zone);
    let set = rule.strip_prefix("RRULE:").unwrap_or(rule).parse::<RRule<Unvalidated>>().ok()?.build(start).ok()?;
    // Occurrences are walked from the first: bounded, so a deadline moved
    // far ahead costs at most this many steps (and ends the series).
    set.into_iter().take(MAX_OCCURRENCES).map(|d| d.timestamp_micros()).find(|d| *d > due)
}

/// Completes a task for `actor` at `now`: its completed state, and the next
/// occurrence when it recurs and none was made yet (same fields, the next
/// deadline, the origin kept). `None` when it is completed already.
pub fn complete(
    task: &Stored<ActivityFields>,
    actor: &str,
    now: i64,
) -> Option<(ActivityFields, Option<Stored<ActivityFields>>)> {
    if task.fields.status == api::Status::Completed as i32 {
        return None;
    }
    let mut done = task.fields.clone();
    done.status = api::Status::Completed as i32;
    done.task.completed_time = Some(now);
    done.task.completed_by = actor.to_string();
    // A soft-deleted occurrence ends its series: nothing live comes of it.
    let next = match (&task.fields.task.successor_id, next_deadline(&task.fields)) {
        (None, Some(deadline)) if task.meta.delete_time.is_none() => {
            let mut fields = task.fields.clone();
            fields.status = api::Status::Scheduled as i32;
            fields.due_time = Some(deadline);
            fields.occur_time = deadline;
            fields.task.completed_time = None;
            fields.task.completed_by = String::new();
            fields.task.successor_id = None;
            fields.task.reminded_for = None;
            fields.task.recurrence_origin_id =
                Some(task.fields.task.recurrence_origin_id.clone().unwrap_or_else(|| task.meta.id.clone()));
            let stored = Stored { meta: Meta::new(&task.meta.tenant, new_id(), actor, now), fields };
            done.task.successor_id = Some(stored.meta.id.clone());
            Some(stored)
        }
        _ => None,
    };
    Some((done, next))
}

/// Reopens a completed task; `None` when it is not completed.
pub fn reopen(fields: &ActivityFields) -> Option<ActivityFields> {
    if fields.status != api::Status::Completed as i32 {
        return None;
    }
    let mut open = fields.clone();
    open.status = api::Status::Scheduled as i32;
    open.task.completed_time = None;
    open.task.completed_by = String::new();
    Some(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_micros()).unwrap_or_default()
    }

    fn weekly(zone: &str, first: &str, rule: &str) -> ActivityFields {
        let mut fields = ActivityFields { due_time: Some(at(first)), ..ActivityFields::default() };
        fields.task.time_zone = zone.into();
        fields.task.recurrence = rule.into();
        fields.task.recurrence_start = Some(at(first));
        fields
    }

    #[test]
    fn local_time_is_kept_across_daylight_saving() {
        // Monday 09:00 in Berlin: 08:00Z in winter, 07:00Z once DST starts (2026-03-29).
        let fields = weekly("Europe/Berlin", "2026-03-23T08:00:00Z", "FREQ=WEEKLY;BYDAY=MO");
        assert_eq!(next_deadline(&fields), Some(at("2026-03-30T07:00:00Z")));
        let fields = weekly("America/New_York", "2026-10-26T13:00:00Z", "FREQ=WEEKLY;BYDAY=MO");
        assert_eq!(next_deadline(&fields), Some(at("2026-11-02T14:00:00Z")));
    }

    #[test]
    fn count_ends_the_series() {
        let mut fields = weekly("UTC", "2026-01-05T09:00:00Z", "FREQ=DAILY;COUNT=2");
        assert_eq!(next_deadline(&fields), Some(at("2026-01-06T09:00:00Z")));
        fields.due_time = Some(at("2026-01-06T09:00:00Z"));
        assert_eq!(next_deadline(&fields), None);
    }

    #[test]
    fn bad_rules_and_zones_are_refused() {
        let mut check = Check::new("task.");
        parse(
            &mut check,
            &api::Task {
                title: "x".into(),
                time_zone: "Mars/Olympus".into(),
                recurrence: "FREQ=WEEKLY".into(),
                ..Default::default()
            },
        );
        let Err(crate::error::Error::Invalid(v)) = check.finish(()) else { panic!("expected violations") };
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["task.time_zone", "task.recurrence"]);
        let mut check = Check::new("task.");
        parse(
            &mut check,
            &api::Task {
                title: "x".into(),
                deadline: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
                recurrence: "FREQ=SECONDLY".into(),
                ..Default::default()
            },
        );
        assert!(check.finish(()).is_err(), "sub-hourly rules are refused");
    }

    #[test]
    fn a_deadline_moved_far_ahead_ends_the_series_in_bounded_steps() {
        let mut fields = weekly("UTC", "2026-01-05T09:00:00Z", "FREQ=HOURLY");
        fields.due_time = Some(at("9999-12-01T00:00:00Z"));
        assert_eq!(next_deadline(&fields), None);
    }
}
