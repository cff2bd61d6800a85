//! The change feed's rows: appended by the write path inside each writing
//! transaction, read by ListChanges and WatchChanges, purged after the
//! change retention.
//!
//! Sequences are gap-free and in visibility order. Each transaction takes
//! its tenant's counter row (`change_sequences`) with one upsert just before
//! it appends its changes, and holds that row lock to its commit: the next
//! writer of the tenant gets its numbers only once this one has committed (or
//! rolled back, which gives the numbers back). So a reader that sees sequence
//! N sees every sequence below it, and a consumer resuming after N misses
//! nothing. Writers of other tenants take other rows and never wait; writers
//! of one tenant wait only for the few statements between the counter and
//! the commit. SQLite has one writer, so the same statements are trivially
//! in order there.

use diesel::{ExpressionMethods, Insertable, OptionalExtension, QueryDsl, Queryable, Selectable, SelectableHelper};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

use super::{
    Conn,
    schema::{change_sequences, changes},
    sql_types::JsonText,
};
use crate::{dispatch, error::Result};

/// The PostgreSQL channel every replica listens on; the payload is the tenant.
pub const NOTIFY_CHANNEL: &str = "agenda_changes";

/// A change: as stored, or about to be appended (then its `sequence` is
/// handed out by [`append`]).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = changes, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ChangeRow {
    /// The tenant.
    pub tenant_id: String,
    /// Per tenant, strictly increasing.
    pub sequence: i64,
    /// The `ResourceType` number.
    pub resource_type: i32,
    /// The resource's id.
    pub resource_id: String,
    /// The `ChangeKind` number.
    pub kind: i32,
    /// The revision after the change.
    pub revision: i64,
    /// Who made it.
    pub actor: String,
    /// The call's request id.
    pub request_id: Option<String>,
    /// When (microseconds since the epoch).
    pub time: i64,
    /// The diff (JSON array).
    pub diff: JsonText,
    /// The resource after the change, protobuf-encoded.
    pub resource: Option<Vec<u8>>,
}

/// Hands out `count` sequences of `tenant` (locking its counter row until
/// the transaction ends) and returns the last one.
async fn take_sequences(conn: &mut Conn<'_>, tenant: &str, count: i64) -> Result<i64> {
    use diesel::upsert::excluded;
    let last: i64 = dispatch!(conn, |c| {
        diesel::insert_into(change_sequences::table)
            .values((
                change_sequences::tenant_id.eq(tenant),
                change_sequences::last_sequence.eq(count),
                change_sequences::purged_through.eq(0),
            ))
            .on_conflict(change_sequences::tenant_id)
            .do_update()
            .set(
                change_sequences::last_sequence
                    .eq(change_sequences::last_sequence + excluded(change_sequences::last_sequence)),
            )
            .returning(change_sequences::last_sequence)
            .get_result(c)
            .await?
    });
    Ok(last)
}

/// Appends `new` changes in the current transaction, numbering each tenant's
/// in the order given; tenants are taken in name order so that transactions
/// touching several (the purge) cannot deadlock. Returns the tenants and
/// their last sequence, to wake their watchers once committed (the feed
/// also NOTIFYs the other replicas then: a NOTIFY inside the transaction
/// would make PostgreSQL serialize the commits of every tenant).
pub async fn append(conn: &mut Conn<'_>, new: Vec<ChangeRow>) -> Result<Vec<(String, i64)>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let mut tenants: Vec<String> = new.iter().map(|c| c.tenant_id.clone()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut rows = Vec::with_capacity(new.len());
    let mut woken = Vec::with_capacity(tenants.len());
    let mut pending = new;
    for tenant in tenants {
        let (mine, rest): (Vec<ChangeRow>, Vec<ChangeRow>) = pending.into_iter().partition(|c| c.tenant_id == tenant);
        pending = rest;
        let count = i64::try_from(mine.len()).unwrap_or(i64::MAX);
        let last = take_sequences(conn, &tenant, count).await?;
        let first = last - count + 1;
        for (offset, change) in mine.into_iter().enumerate() {
            rows.push(ChangeRow { sequence: first + offset as i64, ..change });
        }
        woken.push((tenant, last));
    }
    match conn {
        Conn::Pg(c) => {
            diesel::insert_into(changes::table).values(&rows).execute(&mut **c).await?;
        }
        Conn::Sqlite(c) => {
            c.spawn_blocking(move |c| {
                for row in &rows {
                    diesel::RunQueryDsl::execute(diesel::insert_into(changes::table).values(row), c)?;
                }
                Ok(())
            })
            .await?;
        }
    }
    Ok(woken)
}

/// Up to `limit` changes of `tenant` after `after`, in sequence order; with
/// `types`, only those resource types.
pub async fn after(conn: &mut Conn<'_>, tenant: &str, after: i64, limit: i64, types: &[i32]) -> Result<Vec<ChangeRow>> {
    let rows = dispatch!(conn, |c| {
        let mut query = changes::table
            .filter(changes::tenant_id.eq(tenant))
            .filter(changes::sequence.gt(after))
            .order(changes::sequence)
            .limit(limit)
            .select(ChangeRow::as_select())
            .into_boxed();
        if !types.is_empty() {
            query = query.filter(changes::resource_type.eq_any(types));
        }
        query.load(c).await?
    });
    Ok(rows)
}

/// A tenant's feed: the last sequence handed out and the last one purged.
pub async fn state(conn: &mut Conn<'_>, tenant: &str) -> Result<(i64, i64)> {
    let found: Option<(i64, i64)> = dispatch!(conn, |c| {
        change_sequences::table
            .filter(change_sequences::tenant_id.eq(tenant))
            .select((change_sequences::last_sequence, change_sequences::purged_through))
            .first(c)
            .await
            .optional()?
    });
    Ok(found.unwrap_or((0, 0)))
}

/// Removes up to `limit` changes older than `before` (microseconds) and
/// records per tenant what was purged; returns how many went.
pub async fn purge_expired(conn: &mut Conn<'_>, before: i64, limit: i64) -> Result<usize> {
    #[derive(diesel::QueryableByName)]
    struct Purged {
        #[diesel(sql_type = diesel::sql_types::Text)]
        tenant_id: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        sequence: i64,
    }
    let purged: Vec<Purged> = match conn {
        Conn::Pg(c) => {
            diesel::sql_query(
                "DELETE FROM changes WHERE (tenant_id, sequence) IN (SELECT tenant_id, sequence FROM changes \
                 WHERE time < $1 ORDER BY time LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING tenant_id, sequence",
            )
            .bind::<diesel::sql_types::BigInt, _>(before)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(&mut **c)
            .await?
        }
        Conn::Sqlite(c) => {
            diesel::sql_query(
                "DELETE FROM changes WHERE rowid IN (SELECT rowid FROM changes WHERE time < ?1 ORDER BY time \
                 LIMIT ?2) RETURNING tenant_id, sequence",
            )
            .bind::<diesel::sql_types::BigInt, _>(before)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(&mut **c)
            .await?
        }
    };
    let mut through: Vec<(String, i64)> = Vec::new();
    for row in &purged {
        match through.iter_mut().find(|(t, _)| *t == row.tenant_id) {
            Some((_, seq)) => *seq = (*seq).max(row.sequence),
            None => through.push((row.tenant_id.clone(), row.sequence)),
        }
    }
    through.sort();
    for (tenant, sequence) in through {
        dispatch!(conn, |c| {
            diesel::update(change_sequences::table.filter(change_sequences::tenant_id.eq(&tenant)))
                .filter(change_sequences::purged_through.lt(sequence))
                .set(change_sequences::purged_through.eq(sequence))
                .execute(c)
                .await?
        });
    }
    Ok(purged.len())
}

/// Tells every replica listening that `tenants` have new changes (PostgreSQL).
pub async fn notify(conn: &mut Conn<'_>, tenants: &[String]) -> Result<()> {
    if let Conn::Pg(c) = conn {
        for tenant in tenants {
            diesel::sql_query("SELECT pg_notify($1, $2)")
                .bind::<diesel::sql_types::Text, _>(NOTIFY_CHANNEL)
                .bind::<diesel::sql_types::Text, _>(tenant)
                .execute(&mut **c)
                .await?;
        }
    }
    Ok(())
}

/// Subscribes a dedicated PostgreSQL connection to the change channel.
pub async fn listen(conn: &mut diesel_async::AsyncPgConnection) -> Result<()> {
    conn.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await?;
    Ok(())
}
