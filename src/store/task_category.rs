//! Task category queries, written once for both backends.

use diesel::{ExpressionMethods, Insertable, QueryDsl, Queryable, QueryableByName, Selectable};
use diesel_async::RunQueryDsl;

use super::{
    Conn,
    schema::task_categories,
    table::{Row, id_taken, unique_error},
};
use crate::{
    dispatch,
    domain::task_category::{TaskCategory, TaskCategoryFields},
    error::{Error, Result},
    query::{FieldKind, FieldSpec, ResourceSpec},
};

/// The resource name used in errors.
pub const RESOURCE: &str = "task_category";

/// What callers may filter and order task categories by.
pub const SPEC: ResourceSpec = ResourceSpec {
    table: "task_categories",
    fields: &[
        FieldSpec { name: "title", column: "title", kind: FieldKind::Text { nullable: false }, orderable: true },
        FieldSpec { name: "sort_order", column: "sort_order", kind: FieldKind::Integer, orderable: true },
    ],
    default_order: "sort_order",
    scope: None,
};

/// A row of `task_categories`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = task_categories, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct TaskCategoryRow {
    tenant_id: String,
    id: String,
    title: String,
    title_key: String,
    description: String,
    image_url: String,
    sort_order: i32,
    revision: i64,
    create_time: i64,
    update_time: i64,
    delete_time: Option<i64>,
    purge_time: Option<i64>,
    created_by: String,
    updated_by: String,
}

impl Row for TaskCategoryRow {
    type Fields = TaskCategoryFields;

    fn from_domain(stored: &TaskCategory) -> Result<TaskCategoryRow> {
        let (m, f) = (&stored.meta, &stored.fields);
        Ok(TaskCategoryRow {
            tenant_id: m.tenant.clone(),
            id: m.id.clone(),
            title: f.title.clone(),
            title_key: title_key(&f.title),
            description: f.description.clone(),
            image_url: f.image_url.clone(),
            sort_order: f.sort_order,
            revision: m.revision,
            create_time: m.create_time,
            update_time: m.update_time,
            delete_time: m.delete_time,
            purge_time: m.purge_time,
            created_by: m.created_by.clone(),
            updated_by: m.updated_by.clone(),
        })
    }

    fn into_domain(self) -> Result<TaskCategory> {
        Ok(TaskCategory {
            fields: TaskCategoryFields {
                title: self.title.clone(),
                description: self.description.clone(),
                image_url: self.image_url.clone(),
                sort_order: self.sort_order,
            },
            meta: crate::meta_of_row!(self),
        })
    }
}

/// A title another live category has is `DUPLICATE`; a taken id is the race
/// of two upserts ([`id_taken`]).
fn write_error(error: diesel::result::Error, written: &[TaskCategory]) -> Error {
    match super::unique_violation(&error) {
        Some(message) if message.contains("title") => unique_error(error, taken_title),
        _ => id_taken(RESOURCE, error, written),
    }
}

/// The error of a title another live category of the tenant has.
pub fn taken_title() -> Error {
    Error::Duplicate {
        resource: RESOURCE,
        field: "task_category.title".to_string(),
        message: "Another task category has this title: titles are unique in the tenant (ignoring case).".to_string(),
    }
}

crate::resource_table! {
    queries: TaskCategoryTable,
    table: task_categories,
    row: TaskCategoryRow,
    fields: TaskCategoryFields,
    write_error: write_error,
    update: [
        title, title_key, description, image_url, sort_order, revision, update_time, delete_time, purge_time, updated_by,
    ],
}

/// A title as uniqueness compares it.
fn title_key(title: &str) -> String {
    title.to_lowercase()
}

/// Whether a live category of `tenant` other than `except` has `title`
/// (ignoring case): one lookup through the unique index.
pub async fn title_taken(conn: &mut Conn<'_>, tenant: &str, title: &str, except: &str) -> Result<bool> {
    let key = title_key(title);
    let holders: i64 = dispatch!(conn, |c| {
        task_categories::table
            .filter(task_categories::tenant_id.eq(tenant))
            .filter(task_categories::title_key.eq(&key))
            .filter(task_categories::delete_time.is_null())
            .filter(task_categories::id.ne(except))
            .count()
            .get_result(c)
            .await?
    });
    Ok(holders > 0)
}

/// The live categories of `tenant` among `ids`, share-locked on PostgreSQL
/// until the transaction ends (a concurrent delete waits, then sees the task).
pub async fn live(conn: &mut Conn<'_>, tenant: &str, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let query = task_categories::table
        .filter(task_categories::tenant_id.eq(tenant))
        .filter(task_categories::id.eq_any(ids))
        .filter(task_categories::delete_time.is_null())
        .order(task_categories::id)
        .select(task_categories::id);
    Ok(match conn {
        Conn::Pg(c) => query.for_share().load(&mut *c).await?,
        Conn::Sqlite(c) => query.load(&mut **c).await?,
    })
}

/// Every category of `tenant` (for the summaries on tasks).
pub async fn all(conn: &mut Conn<'_>, tenant: &str) -> Result<Vec<TaskCategory>> {
    use diesel::SelectableHelper;
    let rows: Vec<TaskCategoryRow> = dispatch!(conn, |c| {
        task_categories::table
            .filter(task_categories::tenant_id.eq(tenant))
            .select(TaskCategoryRow::as_select())
            .load(c)
            .await?
    });
    rows.into_iter().map(Row::into_domain).collect()
}
