//! Task queries: tasks are the activities of type `task`, in the activities
//! table; the reminder scheduler's queue is an index over that table.

use diesel::{ExpressionMethods, QueryDsl, QueryableByName};
use diesel_async::RunQueryDsl;

use super::{
    Conn, TxFuture,
    activity::{ActivityTable, SPEC as ACTIVITIES},
    schema::activities,
    table::{Table, purge_rows},
};
use crate::{
    dispatch,
    domain::{
        Stored,
        activity::ActivityFields,
        task::{TASK_TYPE, is_task},
    },
    error::Result,
    query::{FieldKind, FieldSpec, ResourceSpec, spec::Sql},
    service::resource::Purged,
};

/// The resource name used in errors.
pub const RESOURCE: &str = "task";

const fn field(name: &'static str, column: &'static str, kind: FieldKind, orderable: bool) -> FieldSpec {
    FieldSpec { name, column, kind, orderable }
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The activity field `activity` under the task's `name` (the same column
/// and kind); a name the activities lack fails the build.
const fn activity_field(activity: &str, name: &'static str) -> FieldSpec {
    let mut i = 0;
    while i < ACTIVITIES.fields.len() {
        if same(ACTIVITIES.fields[i].name, activity) {
            return FieldSpec { name, ..ACTIVITIES.fields[i] };
        }
        i += 1;
    }
    panic!("not an activity field")
}

/// What callers may filter and order tasks by (docs/tasks.md), by the task's names.
pub const SPEC: ResourceSpec = ResourceSpec {
    table: "activities",
    fields: &[
        activity_field("status", "status"),
        activity_field("priority", "priority"),
        activity_field("due_time", "deadline"),
        activity_field("assignee.user_id", "responsible_user_id"),
        field("category_id", "category_id", FieldKind::Text { nullable: true }, false),
        field("contact_id", "contact_id", FieldKind::Text { nullable: true }, false),
        activity_field("related.type", "related.type"),
        activity_field("related.id", "related.id"),
        activity_field("parent_id", "parent_id"),
        field("overdue", "due_time", FieldKind::Overdue, false),
        activity_field("subject", "title"),
        activity_field("create_time", "create_time"),
        activity_field("update_time", "update_time"),
    ],
    default_order: "deadline",
    scope: Some("t.activity_type = 'task'"),
};

/// The queries of tasks: the activities table's, seeing only tasks.
pub struct TaskTable;

impl Table<ActivityFields> for TaskTable {
    fn find_many<'a>(
        conn: &'a mut Conn<'_>,
        tenant: &'a str,
        ids: &'a [String],
        lock: bool,
    ) -> TxFuture<'a, Vec<Stored<ActivityFields>>> {
        Box::pin(async move {
            let found = ActivityTable::find_many(conn, tenant, ids, lock).await?;
            Ok(found.into_iter().filter(|a| is_task(&a.fields)).collect())
        })
    }

    fn insert_many<'a>(conn: &'a mut Conn<'_>, rows: &'a [Stored<ActivityFields>]) -> TxFuture<'a, ()> {
        ActivityTable::insert_many(conn, rows)
    }

    fn write_many<'a>(conn: &'a mut Conn<'_>, rows: &'a [Stored<ActivityFields>]) -> TxFuture<'a, ()> {
        ActivityTable::write_many(conn, rows)
    }

    fn list<'a>(conn: &'a mut Conn<'_>, sql: &'a Sql) -> TxFuture<'a, Vec<Stored<ActivityFields>>> {
        ActivityTable::list(conn, sql)
    }

    fn purge_expired<'a>(conn: &'a mut Conn<'_>, now: i64, limit: i64) -> TxFuture<'a, Vec<Purged>> {
        Box::pin(purge_rows(conn, "activities", "activity_type = 'task'", now, limit))
    }
}

/// A reminder that is due.
#[derive(Debug, Clone, QueryableByName)]
pub struct DueReminder {
    /// The task's tenant.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub tenant_id: String,
    /// The task.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id: String,
    /// Its revision.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub revision: i64,
    /// When it was due.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub reminder_at: i64,
}

/// Claims up to `limit` reminders due by `now` and marks them fired, in the
/// current transaction. On PostgreSQL the claimed rows are locked and other
/// replicas skip them (SKIP LOCKED), so each fires on exactly one.
pub async fn claim_due(conn: &mut Conn<'_>, now: i64, limit: i64) -> Result<Vec<DueReminder>> {
    let sql = match conn {
        Conn::Pg(_) => {
            "UPDATE activities SET reminded_for = reminder_at, reminder_at = NULL \
             WHERE (tenant_id, id) IN (SELECT tenant_id, id FROM activities \
               WHERE reminder_at <= $1 ORDER BY reminder_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING tenant_id, id, revision, reminded_for AS reminder_at"
        }
        Conn::Sqlite(_) => {
            "UPDATE activities SET reminded_for = reminder_at, reminder_at = NULL \
             WHERE rowid IN (SELECT rowid FROM activities WHERE reminder_at <= ?1 ORDER BY reminder_at LIMIT ?2) \
             RETURNING tenant_id, id, revision, reminded_for AS reminder_at"
        }
    };
    Ok(dispatch!(conn, |c| {
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::BigInt, _>(now)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(c)
            .await?
    }))
}

/// When the next armed reminder of any tenant is due.
pub async fn next_due(conn: &mut Conn<'_>) -> Result<Option<i64>> {
    Ok(dispatch!(conn, |c| {
        activities::table
            .filter(activities::reminder_at.is_not_null())
            .select(diesel::dsl::min(activities::reminder_at))
            .first::<Option<i64>>(c)
            .await?
    }))
}

/// Whether any task of `tenant` (soft-deleted ones too) is in `category`.
pub async fn category_in_use(conn: &mut Conn<'_>, tenant: &str, category: &str) -> Result<bool> {
    let found: i64 = dispatch!(conn, |c| {
        activities::table
            .filter(activities::tenant_id.eq(tenant))
            .filter(activities::activity_type.eq(TASK_TYPE))
            .filter(activities::category_id.eq(category))
            .count()
            .get_result(c)
            .await?
    });
    Ok(found > 0)
}
