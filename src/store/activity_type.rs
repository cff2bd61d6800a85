//! Activity type queries, written once for both backends.

use std::collections::BTreeMap;

use diesel::{ExpressionMethods, Insertable, QueryDsl, Queryable, QueryableByName, Selectable, SelectableHelper};
use diesel_async::RunQueryDsl;

use super::{
    Conn,
    schema::activity_types,
    sql_types::JsonText,
    table::{Row, unique_error},
};
use crate::{
    dispatch,
    domain::activity_type::{ActivityType, ActivityTypeFields},
    error::{Error, Result},
    query::{FieldKind, FieldSpec, ResourceSpec},
};

/// The resource name used in errors.
pub const RESOURCE: &str = "activity_type";

/// What callers may filter and order activity types by.
pub const SPEC: ResourceSpec = ResourceSpec {
    table: "activity_types",
    fields: &[
        FieldSpec { name: "key", column: "id", kind: FieldKind::Text { nullable: false }, orderable: true },
        FieldSpec {
            name: "display_name",
            column: "display_name",
            kind: FieldKind::Text { nullable: false },
            orderable: true,
        },
        FieldSpec { name: "sort_order", column: "sort_order", kind: FieldKind::Integer, orderable: true },
        FieldSpec { name: "system", column: "system", kind: FieldKind::Bool, orderable: false },
    ],
    default_order: "sort_order",
    scope: None,
};

/// A row of `activity_types`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = activity_types, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ActivityTypeRow {
    tenant_id: String,
    id: String,
    display_name: String,
    localized_names: JsonText,
    sort_order: i32,
    system: bool,
    revision: i64,
    create_time: i64,
    update_time: i64,
    delete_time: Option<i64>,
    purge_time: Option<i64>,
    created_by: String,
    updated_by: String,
}

impl Row for ActivityTypeRow {
    type Fields = ActivityTypeFields;

    fn from_domain(stored: &ActivityType) -> Result<ActivityTypeRow> {
        let (m, f) = (&stored.meta, &stored.fields);
        let names = serde_json::to_string(&f.localized_names)
            .map_err(|e| Error::Internal(format!("encoding activity type names: {e}")))?;
        Ok(ActivityTypeRow {
            tenant_id: m.tenant.clone(),
            id: m.id.clone(),
            display_name: f.display_name.clone(),
            localized_names: JsonText(names),
            sort_order: f.sort_order,
            system: f.is_system(),
            revision: m.revision,
            create_time: m.create_time,
            update_time: m.update_time,
            delete_time: m.delete_time,
            purge_time: m.purge_time,
            created_by: m.created_by.clone(),
            updated_by: m.updated_by.clone(),
        })
    }

    fn into_domain(self) -> Result<ActivityType> {
        let localized_names: BTreeMap<String, String> = serde_json::from_str(&self.localized_names.0)
            .map_err(|e| Error::Internal(format!("decoding stored activity type names: {e}")))?;
        Ok(ActivityType {
            fields: ActivityTypeFields {
                key: self.id.clone(),
                display_name: self.display_name,
                localized_names,
                sort_order: self.sort_order,
            },
            meta: crate::meta_of_row!(self),
        })
    }
}

/// A taken key is `ALREADY_EXISTS`: keys stay taken while a type is soft-deleted.
fn write_error(error: diesel::result::Error, written: &[ActivityType]) -> Error {
    let key = written.first().map(|t| t.meta.id.clone()).unwrap_or_default();
    unique_error(error, || Error::Duplicate {
        resource: RESOURCE,
        field: "activity_type.key".to_string(),
        message: format!(
            "The tenant already has an activity type {key:?} (perhaps soft-deleted: UndeleteActivityType restores it)."
        ),
    })
}

crate::resource_table! {
    queries: ActivityTypeTable,
    table: activity_types,
    row: ActivityTypeRow,
    fields: ActivityTypeFields,
    write_error: write_error,
    update: [display_name, localized_names, sort_order, system, revision, update_time, delete_time, purge_time, updated_by],
}

/// Inserts the system types `tenant` lacks (none twice, also when replicas
/// seed at once) and returns those it inserted.
pub async fn seed(conn: &mut Conn<'_>, types: &[ActivityType]) -> Result<Vec<ActivityType>> {
    let rows = types.iter().map(ActivityTypeRow::from_domain).collect::<Result<Vec<_>>>()?;
    let inserted: Vec<ActivityTypeRow> = match conn {
        Conn::Pg(c) => {
            diesel::insert_into(activity_types::table)
                .values(&rows)
                .on_conflict_do_nothing()
                .returning(ActivityTypeRow::as_returning())
                .get_results(&mut *c)
                .await?
        }
        Conn::Sqlite(c) => {
            c.spawn_blocking(move |c| {
                let mut inserted = Vec::new();
                for row in &rows {
                    inserted.extend(diesel::RunQueryDsl::get_results(
                        diesel::insert_into(activity_types::table)
                            .values(row)
                            .on_conflict_do_nothing()
                            .returning(ActivityTypeRow::as_returning()),
                        c,
                    )?);
                }
                Ok(inserted)
            })
            .await?
        }
    };
    inserted.into_iter().map(Row::into_domain).collect()
}

/// Which of `keys` are live (not deleted) types of `tenant`. On PostgreSQL
/// they stay share-locked until the transaction ends, so a concurrent
/// delete of one waits, and then sees the activity that uses it.
pub async fn live_keys(conn: &mut Conn<'_>, tenant: &str, keys: &[String]) -> Result<Vec<String>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let query = activity_types::table
        .filter(activity_types::tenant_id.eq(tenant))
        .filter(activity_types::id.eq_any(keys))
        .filter(activity_types::delete_time.is_null())
        .order(activity_types::id)
        .select(activity_types::id);
    Ok(match conn {
        Conn::Pg(c) => query.for_share().load(&mut *c).await?,
        Conn::Sqlite(c) => query.load(&mut **c).await?,
    })
}

/// The names of `tenant`'s types: key, display_name and names by language.
pub async fn names(conn: &mut Conn<'_>, tenant: &str) -> Result<Vec<(String, String, BTreeMap<String, String>)>> {
    let rows: Vec<(String, String, JsonText)> = dispatch!(conn, |c| {
        activity_types::table
            .filter(activity_types::tenant_id.eq(tenant))
            .select((activity_types::id, activity_types::display_name, activity_types::localized_names))
            .load(c)
            .await?
    });
    rows.into_iter()
        .map(|(key, display_name, names)| {
            let names = serde_json::from_str(&names.0)
                .map_err(|e| Error::Internal(format!("decoding stored activity type names: {e}")))?;
            Ok((key, display_name, names))
        })
        .collect()
}
