//! The queries every resource table answers, written once: a resource's
//! store module declares its row type (how a stored resource becomes a row
//! and back) and invokes [`resource_table!`], which writes the inserts,
//! upserts, locked reads, list reads and purges of its table for both
//! backends.

use crate::{
    domain::Stored,
    error::{Error, Result},
    query::spec::Sql,
    service::resource::Purged,
    store::{Conn, TxFuture},
};

/// A table row of a resource: how its stored form becomes a row and back.
pub trait Row: Sized {
    /// The resource's validated fields.
    type Fields;
    /// The row of a stored resource.
    fn from_domain(stored: &Stored<Self::Fields>) -> Result<Self>;
    /// The stored resource of a row.
    fn into_domain(self) -> Result<Stored<Self::Fields>>;
}

/// The queries the shared write path runs on a resource's table.
pub trait Table<F>: 'static {
    /// The resources of `tenant` among `ids` (missing ones left out); with
    /// `lock`, locked until the transaction ends (in id order).
    fn find_many<'a>(
        conn: &'a mut Conn<'_>,
        tenant: &'a str,
        ids: &'a [String],
        lock: bool,
    ) -> TxFuture<'a, Vec<Stored<F>>>;
    /// Inserts new resources; a taken id fails (a concurrent create won).
    fn insert_many<'a>(conn: &'a mut Conn<'_>, rows: &'a [Stored<F>]) -> TxFuture<'a, ()>;
    /// Writes resources whose new state was decided under lock.
    fn write_many<'a>(conn: &'a mut Conn<'_>, rows: &'a [Stored<F>]) -> TxFuture<'a, ()>;
    /// The rows of a list query.
    fn list<'a>(conn: &'a mut Conn<'_>, sql: &'a Sql) -> TxFuture<'a, Vec<Stored<F>>>;
    /// Removes up to `limit` resources past their purge time; returns what went.
    fn purge_expired<'a>(conn: &'a mut Conn<'_>, now: i64, limit: i64) -> TxFuture<'a, Vec<Purged>>;
}

/// The purge of a resource table: up to `limit` rows whose purge time has
/// passed. On PostgreSQL, replicas purging at once skip each other's rows.
pub async fn purge_rows(conn: &mut Conn<'_>, table: &str, scope: &str, now: i64, limit: i64) -> Result<Vec<Purged>> {
    #[derive(diesel::QueryableByName)]
    struct Gone {
        #[diesel(sql_type = diesel::sql_types::Text)]
        tenant_id: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        revision: i64,
    }
    let sql = match conn {
        Conn::Pg(_) => format!(
            "DELETE FROM {table} WHERE (tenant_id, id) IN (SELECT tenant_id, id FROM {table} \
             WHERE purge_time < $1 AND {scope} LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING tenant_id, id, revision"
        ),
        Conn::Sqlite(_) => format!(
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE purge_time < ?1 AND {scope} LIMIT ?2) \
             RETURNING tenant_id, id, revision"
        ),
    };
    let gone: Vec<Gone> = crate::dispatch!(conn, |c| {
        diesel_async::RunQueryDsl::load(
            diesel::sql_query(sql)
                .bind::<diesel::sql_types::BigInt, _>(now)
                .bind::<diesel::sql_types::BigInt, _>(limit),
            c,
        )
        .await?
    });
    Ok(gone.into_iter().map(|g| Purged { tenant: g.tenant_id, id: g.id, revision: g.revision }).collect())
}

/// The [`crate::domain::Meta`] of a row whose meta columns have the
/// names every resource table gives them.
#[macro_export]
macro_rules! meta_of_row {
    ($row:expr) => {
        $crate::domain::Meta {
            tenant: $row.tenant_id,
            id: $row.id,
            revision: $row.revision,
            create_time: $row.create_time,
            update_time: $row.update_time,
            delete_time: $row.delete_time,
            purge_time: $row.purge_time,
            created_by: $row.created_by,
            updated_by: $row.updated_by,
        }
    };
}

/// Writes the [`Table`] of a resource: `$queries` implements it for
/// `$fields` over the diesel table `$table` with rows `$row` (a [`Row`],
/// `Insertable`, `Selectable`); `$write_error` maps a write's database error
/// (given the rows written) to the caller's error; `update` lists the
/// columns an upsert rewrites (all but the key, create_time and created_by);
/// `purge_where` limits the purge to the rows of this resource when the
/// table holds several (activities and tasks).
///
/// Inserts are one multi-row statement on PostgreSQL; on SQLite (in-process,
/// no network) one hop to its thread, a statement per row. Upserts likewise.
/// Locked reads take row locks in id order on PostgreSQL, so concurrent
/// batches cannot deadlock; SQLite has a single writer and needs none.
#[macro_export]
macro_rules! resource_table {
    (
        queries: $queries:ident,
        table: $table:ident,
        row: $row:ty,
        fields: $fields:ty,
        write_error: $write_error:path,
        update: [$($column:ident),* $(,)?]
        $(, purge_where: $purge_where:expr)? $(,)?
    ) => {
        /// The queries of this resource's table.
        pub struct $queries;

        impl $queries {
            fn rows(items: &[$crate::domain::Stored<$fields>]) -> $crate::error::Result<Vec<$row>> {
                items.iter().map(<$row as $crate::store::table::Row>::from_domain).collect()
            }
        }

        impl $crate::store::table::Table<$fields> for $queries {
            fn find_many<'a>(
                conn: &'a mut $crate::store::Conn<'_>,
                tenant: &'a str,
                ids: &'a [String],
                lock: bool,
            ) -> $crate::store::TxFuture<'a, Vec<$crate::domain::Stored<$fields>>> {
                Box::pin(async move {
                    use ::diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
                    use ::diesel_async::RunQueryDsl;
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let rows: Vec<$row> = match conn {
                        $crate::store::Conn::Pg(c) => {
                            // One id is `id = $2`, a statement PostgreSQL plans once
                            // (`id = ANY($2)` is planned at every execution).
                            let c = &mut *c;
                            let one = $table::table.filter($table::tenant_id.eq(tenant));
                            match (ids, lock) {
                                ([id], true) => one.filter($table::id.eq(id)).select(<$row>::as_select()).for_update().load(c).await?,
                                ([id], false) => one.filter($table::id.eq(id)).select(<$row>::as_select()).load(c).await?,
                                (_, true) => one.filter($table::id.eq_any(ids)).order($table::id).select(<$row>::as_select()).for_update().load(c).await?,
                                (_, false) => one.filter($table::id.eq_any(ids)).order($table::id).select(<$row>::as_select()).load(c).await?,
                            }
                        }
                        // Read by diesel's own connection on the thread it runs on
                        // (see `load_sql!`); SQLite has one writer and needs no locks.
                        $crate::store::Conn::Sqlite(c) => {
                            let (tenant, ids) = (tenant.to_string(), ids.to_vec());
                            c.spawn_blocking(move |c| {
                                let one = $table::table.filter($table::tenant_id.eq(&tenant));
                                // `IN (?, …)` is prepared anew for each count; one id is `id = ?`.
                                match ids.as_slice() {
                                    [id] => ::diesel::RunQueryDsl::load(
                                        one.filter($table::id.eq(id)).select(<$row>::as_select()),
                                        c,
                                    ),
                                    _ => ::diesel::RunQueryDsl::load(
                                        one.filter($table::id.eq_any(&ids)).order($table::id).select(<$row>::as_select()),
                                        c,
                                    ),
                                }
                            })
                            .await?
                        }
                    };
                    rows.into_iter().map($crate::store::table::Row::into_domain).collect()
                })
            }

            fn insert_many<'a>(
                conn: &'a mut $crate::store::Conn<'_>,
                items: &'a [$crate::domain::Stored<$fields>],
            ) -> $crate::store::TxFuture<'a, ()> {
                Box::pin(async move {
                    use ::diesel_async::RunQueryDsl;
                    if items.is_empty() {
                        return Ok(());
                    }
                    let rows = Self::rows(items)?;
                    let inserted = match conn {
                        // One row is a statement prepared once per connection;
                        // diesel prepares a multi-row insert at every execution.
                        $crate::store::Conn::Pg(c) if rows.len() == 1 => {
                            ::diesel::insert_into($table::table).values(&rows[0]).execute(&mut *c).await.map(|_| ())
                        }
                        $crate::store::Conn::Pg(c) => {
                            ::diesel::insert_into($table::table).values(&rows).execute(&mut *c).await.map(|_| ())
                        }
                        $crate::store::Conn::Sqlite(c) => {
                            c.spawn_blocking(move |c| {
                                for row in &rows {
                                    ::diesel::RunQueryDsl::execute(::diesel::insert_into($table::table).values(row), c)?;
                                }
                                Ok(())
                            })
                            .await
                        }
                    };
                    inserted.map_err(|e| $write_error(e, items))
                })
            }

            fn write_many<'a>(
                conn: &'a mut $crate::store::Conn<'_>,
                items: &'a [$crate::domain::Stored<$fields>],
            ) -> $crate::store::TxFuture<'a, ()> {
                Box::pin(async move {
                    use ::diesel::{ExpressionMethods, upsert::excluded};
                    use ::diesel_async::RunQueryDsl;
                    if items.is_empty() {
                        return Ok(());
                    }
                    let rows = Self::rows(items)?;
                    macro_rules! upsert {
                        ($values:expr) => {
                            ::diesel::insert_into($table::table)
                                .values($values)
                                .on_conflict(($table::tenant_id, $table::id))
                                .do_update()
                                .set(($($table::$column.eq(excluded($table::$column)),)*))
                        };
                    }
                    let written = match conn {
                        $crate::store::Conn::Pg(c) if rows.len() == 1 => upsert!(&rows[0]).execute(&mut *c).await.map(|_| ()),
                        $crate::store::Conn::Pg(c) => upsert!(&rows).execute(&mut *c).await.map(|_| ()),
                        $crate::store::Conn::Sqlite(c) => {
                            c.spawn_blocking(move |c| {
                                for row in &rows {
                                    ::diesel::RunQueryDsl::execute(upsert!(row), c)?;
                                }
                                Ok(())
                            })
                            .await
                        }
                    };
                    written.map_err(|e| $write_error(e, items))
                })
            }

            fn list<'a>(
                conn: &'a mut $crate::store::Conn<'_>,
                sql: &'a $crate::query::spec::Sql,
            ) -> $crate::store::TxFuture<'a, Vec<$crate::domain::Stored<$fields>>> {
                Box::pin(async move {
                    let rows: Vec<$row> = $crate::load_sql!(conn, sql);
                    rows.into_iter().map($crate::store::table::Row::into_domain).collect()
                })
            }

            fn purge_expired<'a>(
                conn: &'a mut $crate::store::Conn<'_>,
                now: i64,
                limit: i64,
            ) -> $crate::store::TxFuture<'a, Vec<$crate::service::resource::Purged>> {
                let scopes = ["TRUE" $(, $purge_where)?];
                let scope = scopes[scopes.len() - 1];
                Box::pin($crate::store::table::purge_rows(conn, stringify!($table), scope, now, limit))
            }
        }
    };
}

/// The error of a write that hit a unique key: a taken id is `ABORTED
/// ETAG_MISMATCH`. That is two upserts of one new caller-chosen id racing:
/// neither found a row to lock, both insert, and PostgreSQL makes the second
/// wait for the first and then refuses it on the primary key, so the loser
/// reads the resource and retries on top of it. Any other database error is
/// classified as every database error is.
pub fn id_taken<F>(resource: &'static str, error: diesel::result::Error, written: &[Stored<F>]) -> Error {
    unique_error(error, || Error::EtagMismatch {
        resource,
        id: written.first().map(|s| s.meta.id.clone()).unwrap_or_default(),
    })
}

/// `taken()` for a unique violation; any other database error classified
/// as every database error is.
pub fn unique_error(error: diesel::result::Error, taken: impl FnOnce() -> Error) -> Error {
    match super::unique_violation(&error) {
        Some(_) => taken(),
        None => error.into(),
    }
}
