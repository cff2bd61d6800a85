//! Activity queries and the revision journal, written once for both backends.

use diesel::{
    ExpressionMethods, Insertable, OptionalExtension, QueryDsl, Queryable, QueryableByName, Selectable,
    SelectableHelper,
};
use diesel_async::RunQueryDsl;

use super::{
    Conn,
    schema::{activities, activity_revisions, contacts},
    sql_types::JsonText,
    table::{Row, id_taken},
};
use crate::{
    api, dispatch,
    domain::{
        activity::{Activity, ActivityFields},
        custom_fields::CustomFields,
        rich_text::RichText,
        task::{self, TaskFields},
    },
    error::{Error, Result},
    query::{FieldKind, FieldSpec, ResourceSpec, spec::Lookup},
};

/// The resource name used in errors.
pub const RESOURCE: &str = "activity";

const fn values<const N: usize>(names: &'static [(&'static str, i32); N]) -> &'static [(&'static str, i32)] {
    names
}

const STATUS: &[(&str, i32)] = values(&[
    ("STATUS_UNSPECIFIED", 0),
    ("STATUS_SCHEDULED", 1),
    ("STATUS_IN_PROGRESS", 2),
    ("STATUS_COMPLETED", 3),
    ("STATUS_CANCELLED", 4),
]);
const PRIORITY: &[(&str, i32)] = values(&[
    ("PRIORITY_UNSPECIFIED", 0),
    ("PRIORITY_LOW", 1),
    ("PRIORITY_NORMAL", 2),
    ("PRIORITY_HIGH", 3),
    ("PRIORITY_URGENT", 4),
]);
const MEDIUM: &[(&str, i32)] = values(&[
    ("MEDIUM_UNSPECIFIED", 0),
    ("MEDIUM_IN_PERSON", 1),
    ("MEDIUM_PHONE", 2),
    ("MEDIUM_EMAIL", 3),
    ("MEDIUM_LETTER", 4),
    ("MEDIUM_SMS", 5),
    ("MEDIUM_VIDEO", 6),
    ("MEDIUM_CHAT", 7),
    ("MEDIUM_SOCIAL", 8),
    ("MEDIUM_OTHER", 9),
]);

/// On SQLite, participants.* and related.* are read from this table.
const ELEMENTS: Option<Lookup> = Some(Lookup { table: "activity_elements", id_column: "activity_id" });

const fn field(name: &'static str, column: &'static str, kind: FieldKind, orderable: bool) -> FieldSpec {
    FieldSpec { name, column, kind, orderable }
}

/// What callers may filter and order activities by (docs/activities.md).
pub const SPEC: ResourceSpec = ResourceSpec {
    table: "activities",
    fields: &[
        field("type", "activity_type", FieldKind::Text { nullable: false }, true),
        field("status", "status", FieldKind::Enum { prefix: "STATUS_", values: STATUS }, true),
        field("priority", "priority", FieldKind::Enum { prefix: "PRIORITY_", values: PRIORITY }, true),
        field("medium", "medium", FieldKind::Enum { prefix: "MEDIUM_", values: MEDIUM }, true),
        field("occur_time", "occur_time", FieldKind::Timestamp, true),
        field("due_time", "due_time", FieldKind::OptionalTimestamp, true),
        field("create_time", "create_time", FieldKind::Timestamp, true),
        field("update_time", "update_time", FieldKind::Timestamp, true),
        field("parent_id", "parent_id", FieldKind::Text { nullable: true }, false),
        field("source_contact_id", "source_contact_id", FieldKind::Text { nullable: true }, false),
        field("assignee.user_id", "assignee_user_id", FieldKind::Text { nullable: false }, true),
        field("assignee.group", "assignee_group", FieldKind::Text { nullable: false }, true),
        field(
            "participants.contact_id",
            "participants",
            FieldKind::RepeatedKey { key: "contact_id", lookup: ELEMENTS },
            false,
        ),
        field("participants.role", "participants", FieldKind::RepeatedKey { key: "role", lookup: ELEMENTS }, false),
        field("related.type", "related", FieldKind::RepeatedKey { key: "type", lookup: ELEMENTS }, false),
        field("related.id", "related", FieldKind::RepeatedKey { key: "id", lookup: ELEMENTS }, false),
        field("subject", "subject", FieldKind::Text { nullable: false }, true),
        field("is_test", "is_test", FieldKind::Bool, false),
        field("custom_fields", "custom_fields", FieldKind::Custom, true),
    ],
    default_order: "occur_time desc",
    scope: None,
};

/// A row of `activities`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = activities, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
#[diesel(treat_none_as_default_value = false)]
pub struct ActivityRow {
    tenant_id: String,
    id: String,
    activity_type: String,
    subject: String,
    details_format: i32,
    details_raw: String,
    details_html: String,
    status: i32,
    priority: i32,
    occur_time: i64,
    due_time: Option<i64>,
    duration: Option<i64>,
    location: String,
    phone_number: String,
    medium: i32,
    parent_id: Option<String>,
    source_contact_id: Option<String>,
    assignee_user_id: String,
    assignee_group: String,
    participants: JsonText,
    related: JsonText,
    custom_fields: JsonText,
    is_test: bool,
    is_auto: bool,
    result: String,
    category_id: Option<String>,
    contact_id: Option<String>,
    notify_responsible: bool,
    alert_minutes: i32,
    time_zone: String,
    recurrence: String,
    recurrence_origin_id: Option<String>,
    recurrence_start: Option<i64>,
    successor_id: Option<String>,
    completed_time: Option<i64>,
    completed_by: String,
    reminded_for: Option<i64>,
    reminder_at: Option<i64>,
    revision: i64,
    create_time: i64,
    update_time: i64,
    delete_time: Option<i64>,
    purge_time: Option<i64>,
    created_by: String,
    updated_by: String,
}

impl Row for ActivityRow {
    type Fields = ActivityFields;

    fn from_domain(activity: &Activity) -> Result<ActivityRow> {
        let (m, f) = (&activity.meta, &activity.fields);
        let json =
            |v: serde_json::Result<String>| v.map_err(|e| Error::Internal(format!("encoding activity JSON: {e}")));
        Ok(ActivityRow {
            tenant_id: m.tenant.clone(),
            id: m.id.clone(),
            activity_type: f.activity_type.clone(),
            subject: f.subject.clone(),
            details_format: f.details.format as i32,
            details_raw: f.details.raw.clone(),
            details_html: f.details.html.clone(),
            status: f.status,
            priority: f.priority,
            occur_time: f.occur_time,
            due_time: f.due_time,
            duration: f.duration,
            location: f.location.clone(),
            phone_number: f.phone_number.clone(),
            medium: f.medium,
            parent_id: f.parent_id.clone(),
            source_contact_id: f.source_contact_id.clone(),
            assignee_user_id: f.assignee_user_id.clone(),
            assignee_group: f.assignee_group.clone(),
            participants: JsonText(json(serde_json::to_string(&f.participants))?),
            related: JsonText(json(serde_json::to_string(&f.related))?),
            custom_fields: JsonText(f.custom_fields.as_str().to_string()),
            is_test: f.is_test,
            is_auto: f.is_auto,
            result: f.result.clone(),
            category_id: f.task.category_id.clone(),
            contact_id: f.task.contact_id.clone(),
            notify_responsible: f.task.notify_responsible,
            alert_minutes: f.task.alert_minutes,
            time_zone: f.task.time_zone.clone(),
            recurrence: f.task.recurrence.clone(),
            recurrence_origin_id: f.task.recurrence_origin_id.clone(),
            recurrence_start: f.task.recurrence_start,
            successor_id: f.task.successor_id.clone(),
            completed_time: f.task.completed_time,
            completed_by: f.task.completed_by.clone(),
            reminded_for: f.task.reminded_for,
            reminder_at: task::reminder_at(m, f),
            revision: m.revision,
            create_time: m.create_time,
            update_time: m.update_time,
            delete_time: m.delete_time,
            purge_time: m.purge_time,
            created_by: m.created_by.clone(),
            updated_by: m.updated_by.clone(),
        })
    }

    fn into_domain(self) -> Result<Activity> {
        let json = |what: &str, e: serde_json::Error| Error::Internal(format!("decoding stored activity {what}: {e}"));
        Ok(Activity {
            fields: ActivityFields {
                activity_type: self.activity_type,
                subject: self.subject,
                details: RichText::stored(self.details_format, self.details_raw, self.details_html),
                status: self.status,
                priority: self.priority,
                occur_time: self.occur_time,
                due_time: self.due_time,
                duration: self.duration,
                location: self.location,
                phone_number: self.phone_number,
                medium: self.medium,
                parent_id: self.parent_id,
                source_contact_id: self.source_contact_id,
                assignee_user_id: self.assignee_user_id,
                assignee_group: self.assignee_group,
                participants: serde_json::from_str(&self.participants.0).map_err(|e| json("participants", e))?,
                related: serde_json::from_str(&self.related.0).map_err(|e| json("related", e))?,
                custom_fields: CustomFields::stored(self.custom_fields.0),
                is_test: self.is_test,
                is_auto: self.is_auto,
                result: self.result,
                task: TaskFields {
                    category_id: self.category_id,
                    contact_id: self.contact_id,
                    notify_responsible: self.notify_responsible,
                    alert_minutes: self.alert_minutes,
                    time_zone: self.time_zone,
                    recurrence: self.recurrence,
                    recurrence_origin_id: self.recurrence_origin_id,
                    recurrence_start: self.recurrence_start,
                    successor_id: self.successor_id,
                    completed_time: self.completed_time,
                    completed_by: self.completed_by,
                    reminded_for: self.reminded_for,
                },
            },
            meta: crate::meta_of_row!(self),
        })
    }
}

fn write_error(error: diesel::result::Error, activities: &[Activity]) -> Error {
    id_taken(RESOURCE, error, activities)
}

crate::resource_table! {
    queries: ActivityTable,
    table: activities,
    row: ActivityRow,
    fields: ActivityFields,
    write_error: write_error,
    update: [
        activity_type, subject, details_format, details_raw, details_html, status, priority, occur_time, due_time,
        duration, location, phone_number, medium, parent_id, source_contact_id, assignee_user_id, assignee_group,
        participants, related, custom_fields, is_test, is_auto, result, category_id, contact_id, notify_responsible,
        alert_minutes, time_zone, recurrence, recurrence_origin_id, recurrence_start, successor_id, completed_time,
        completed_by, reminded_for, reminder_at, revision, update_time, delete_time, purge_time, updated_by,
    ],
    purge_where: "activity_type <> 'task'",
}

/// Which of `ids` are not contacts of `tenant` (soft-deleted ones count as missing).
pub async fn missing_contacts(conn: &mut Conn<'_>, tenant: &str, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let found: Vec<String> = dispatch!(conn, |c| {
        contacts::table
            .filter(contacts::tenant_id.eq(tenant))
            .filter(contacts::id.eq_any(ids))
            .filter(contacts::delete_time.is_null())
            .select(contacts::id)
            .load(c)
            .await?
    });
    Ok(ids.iter().filter(|id| !found.contains(id)).cloned().collect())
}

/// Which of `ids` are activities of `tenant`.
pub async fn existing(conn: &mut Conn<'_>, tenant: &str, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(dispatch!(conn, |c| {
        activities::table
            .filter(activities::tenant_id.eq(tenant))
            .filter(activities::id.eq_any(ids))
            .select(activities::id)
            .load(c)
            .await?
    }))
}

/// Serializes the writes that change who follows up whom in a tenant, so
/// two of them cannot each close half of a cycle unseen by the other. A
/// transaction-scoped advisory lock on PostgreSQL; SQLite's single writer
/// already serializes every write.
pub async fn lock_tree(conn: &mut Conn<'_>, tenant: &str) -> Result<()> {
    if let Conn::Pg(c) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended('agenda.activity_tree:' || $1, 0))")
            .bind::<diesel::sql_types::Text, _>(tenant)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

/// The chain above `start`: `start`, its parent, that one's parent, …, at
/// most `limit` ids, as the database holds them (the writer of a new parent
/// puts its own change on top). One recursive query.
pub async fn ancestors(conn: &mut Conn<'_>, tenant: &str, start: &str, limit: i64) -> Result<Vec<String>> {
    #[derive(QueryableByName)]
    struct Link {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let sql = match conn {
        Conn::Pg(_) => {
            "WITH RECURSIVE chain (id, parent_id, depth) AS ( \
               SELECT id, parent_id, 1 FROM activities WHERE tenant_id = $1 AND id = $2 \
               UNION ALL \
               SELECT a.id, a.parent_id, chain.depth + 1 FROM activities a JOIN chain \
                 ON a.tenant_id = $1 AND a.id = chain.parent_id WHERE chain.depth < $3) \
             SELECT id FROM chain ORDER BY depth"
        }
        Conn::Sqlite(_) => {
            "WITH RECURSIVE chain (id, parent_id, depth) AS ( \
               SELECT id, parent_id, 1 FROM activities WHERE tenant_id = ?1 AND id = ?2 \
               UNION ALL \
               SELECT a.id, a.parent_id, chain.depth + 1 FROM activities a JOIN chain \
                 ON a.tenant_id = ?1 AND a.id = chain.parent_id WHERE chain.depth < ?3) \
             SELECT id FROM chain ORDER BY depth"
        }
    };
    let links: Vec<Link> = dispatch!(conn, |c| {
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::Text, _>(tenant)
            .bind::<diesel::sql_types::Text, _>(start)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(c)
            .await?
    });
    Ok(links.into_iter().map(|l| l.id).collect())
}

/// How many levels of follow-ups hang below `id` (0 for none), counted up
/// to `limit`, from the rows that name it as parent (also when `id` itself
/// is not stored). One recursive query over the parent index.
pub async fn height(conn: &mut Conn<'_>, tenant: &str, id: &str, limit: i64) -> Result<i64> {
    #[derive(QueryableByName)]
    struct Height {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        height: i64,
    }
    let sql = match conn {
        Conn::Pg(_) => {
            "WITH RECURSIVE below (id, depth) AS ( \
               SELECT id, 1 FROM activities WHERE tenant_id = $1 AND parent_id = $2 \
               UNION ALL \
               SELECT a.id, below.depth + 1 FROM activities a JOIN below \
                 ON a.tenant_id = $1 AND a.parent_id = below.id WHERE below.depth < $3) \
             SELECT CAST(COALESCE(MAX(depth), 0) AS BIGINT) AS height FROM below"
        }
        Conn::Sqlite(_) => {
            "WITH RECURSIVE below (id, depth) AS ( \
               SELECT id, 1 FROM activities WHERE tenant_id = ?1 AND parent_id = ?2 \
               UNION ALL \
               SELECT a.id, below.depth + 1 FROM activities a JOIN below \
                 ON a.tenant_id = ?1 AND a.parent_id = below.id WHERE below.depth < ?3) \
             SELECT CAST(COALESCE(MAX(depth), 0) AS BIGINT) AS height FROM below"
        }
    };
    let rows: Vec<Height> = dispatch!(conn, |c| {
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::Text, _>(tenant)
            .bind::<diesel::sql_types::Text, _>(id)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(c)
            .await?
    });
    Ok(rows.iter().map(|r| r.height).max().unwrap_or(0))
}

/// Whether any activity of `tenant` (soft-deleted ones too) has the type `key`.
pub async fn type_in_use(conn: &mut Conn<'_>, tenant: &str, key: &str) -> Result<bool> {
    let found: Option<String> = dispatch!(conn, |c| {
        activities::table
            .filter(activities::tenant_id.eq(tenant))
            .filter(activities::activity_type.eq(key))
            .select(activities::id)
            .first(c)
            .await
            .optional()?
    });
    Ok(found.is_some())
}

/// A row of the revision journal.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = activity_revisions, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct RevisionRow {
    /// The tenant.
    pub tenant_id: String,
    /// The activity.
    pub activity_id: String,
    /// Its revision after the change.
    pub revision: i64,
    /// The RevisionKind number.
    pub kind: i32,
    /// Who made the change.
    pub actor: String,
    /// When (microseconds since the epoch).
    pub time: i64,
    /// The change's diff (JSON array).
    pub diff: JsonText,
    /// The comment's TextFormat number.
    pub comment_format: i32,
    /// The comment as written.
    pub comment_raw: String,
    /// The comment rendered and sanitized.
    pub comment_html: String,
}

impl RevisionRow {
    /// The comment, when there is one.
    pub fn comment(&self) -> Option<RichText> {
        (!self.comment_raw.is_empty())
            .then(|| RichText::stored(self.comment_format, self.comment_raw.clone(), self.comment_html.clone()))
    }

    /// Sets the comment (an empty one removes it).
    pub fn set_comment(&mut self, comment: Option<&RichText>) {
        let empty = RichText::default();
        let comment = comment.unwrap_or(&empty);
        self.comment_format = if comment.raw.is_empty() { 0 } else { comment.format as i32 };
        self.comment_raw = comment.raw.clone();
        self.comment_html = comment.html.clone();
    }
}

/// Appends revisions: one statement on PostgreSQL, one hop on SQLite.
pub async fn append_revisions(conn: &mut Conn<'_>, rows: Vec<RevisionRow>) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    match conn {
        Conn::Pg(c) => {
            diesel::insert_into(activity_revisions::table).values(&rows).execute(&mut *c).await?;
        }
        Conn::Sqlite(c) => {
            c.spawn_blocking(move |c| {
                for row in &rows {
                    diesel::RunQueryDsl::execute(diesel::insert_into(activity_revisions::table).values(row), c)?;
                }
                Ok(())
            })
            .await?;
        }
    }
    Ok(())
}

/// Up to `limit` revisions of an activity after `after`, oldest first.
pub async fn revisions(
    conn: &mut Conn<'_>,
    tenant: &str,
    activity_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<RevisionRow>> {
    Ok(dispatch!(conn, |c| {
        activity_revisions::table
            .filter(activity_revisions::tenant_id.eq(tenant))
            .filter(activity_revisions::activity_id.eq(activity_id))
            .filter(activity_revisions::revision.gt(after))
            .order(activity_revisions::revision)
            .limit(limit)
            .select(RevisionRow::as_select())
            .load(c)
            .await?
    }))
}

/// One revision, locked on PostgreSQL until the transaction ends.
pub async fn revision(
    conn: &mut Conn<'_>,
    tenant: &str,
    activity_id: &str,
    revision: i64,
) -> Result<Option<RevisionRow>> {
    let query = activity_revisions::table
        .filter(activity_revisions::tenant_id.eq(tenant))
        .filter(activity_revisions::activity_id.eq(activity_id))
        .filter(activity_revisions::revision.eq(revision));
    Ok(match conn {
        Conn::Pg(c) => query.select(RevisionRow::as_select()).for_update().first(&mut *c).await.optional()?,
        _ => dispatch!(conn, |c| query.select(RevisionRow::as_select()).first(c).await.optional()?),
    })
}

/// Writes a revision's comment.
pub async fn write_comment(conn: &mut Conn<'_>, row: &RevisionRow) -> Result<()> {
    dispatch!(conn, |c| {
        diesel::update(activity_revisions::table)
            .filter(activity_revisions::tenant_id.eq(&row.tenant_id))
            .filter(activity_revisions::activity_id.eq(&row.activity_id))
            .filter(activity_revisions::revision.eq(row.revision))
            .set((
                activity_revisions::comment_format.eq(row.comment_format),
                activity_revisions::comment_raw.eq(&row.comment_raw),
                activity_revisions::comment_html.eq(&row.comment_html),
            ))
            .execute(c)
            .await?
    });
    Ok(())
}

/// The RevisionKind of a ChangeKind (the same numbers for the kinds both have).
pub fn revision_kind(kind: i32) -> i32 {
    match api::ChangeKind::try_from(kind) {
        Ok(api::ChangeKind::Purged | api::ChangeKind::ReminderDue) | Err(_) => 0,
        Ok(kind) => kind as i32,
    }
}
