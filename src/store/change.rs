//! The change feed's rows: appended by the write path inside each writing
//! transaction, read by ListChanges and WatchChanges, purged after the
//! change retention.
//!
//! A consumer that resumes after the last sequence it saw must never miss a
//! change: sequence order has to be the order in which changes become
//! visible, also while many writers commit at once.
//!
//! On PostgreSQL the order comes from transaction ids, with no lock at all.
//! A change's sequence is its transaction's id (`pg_current_xact_id()`) times
//! [`PER_TRANSACTION`] plus its index in the transaction, and readers see only
//! changes below a fence: the `xmin` of their snapshot, the oldest
//! transaction still running. Every transaction below it has ended, so no
//! change below the fence can appear later, and no consumer can pass a
//! change that is still to commit. The cost is that one long writing
//! transaction holds the feed back until it ends (statement timeouts bound
//! that); sequences are strictly increasing per tenant, with gaps.
//!
//! A per-tenant counter row held to commit would give contiguous numbers,
//! but it makes one tenant's commits wait for each other's WAL flush:
//! measured on this machine, CreateContact at c=8 in one tenant fell from
//! about 3,700 to about 200 calls/s with it (see the closing notes).
//!
//! SQLite has one writer, so its commits are already in order: there the
//! counter row (`change_sequences.last_sequence`) numbers changes 1, 2, 3, ….
//! Both keep `change_sequences.purged_through`, what the purge has removed.

use diesel::{ExpressionMethods, Insertable, QueryDsl, Queryable, Selectable, SelectableHelper};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

use super::{
    Conn,
    schema::{change_sequences, changes},
    sql_types::JsonText,
};
use crate::{dispatch, error::Result};

/// The PostgreSQL channel every replica listens on; the payload is the tenant.
pub const NOTIFY_CHANNEL: &str = "agenda_changes";

/// Changes one PostgreSQL transaction may append (its sequences are
/// `xid * PER_TRANSACTION + index`); batches and purges stay far below.
pub const PER_TRANSACTION: i64 = 65_536;

/// The fence of a PostgreSQL read: the first sequence of the oldest
/// transaction still running; every change below it is final.
const PG_FENCE: &str = "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint * 65536)";

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

/// SQLite: hands out `count` sequences of `tenant` and returns the last one.
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

/// Appends `new` changes in the current transaction, numbering them in the
/// order given (see the module doc): on PostgreSQL from the transaction's
/// id, computed by the INSERT itself (one statement, one round trip); on
/// SQLite from each tenant's counter, taken in name order. Returns the
/// tenants, to wake their watchers once committed (the feed also NOTIFYs
/// the other replicas then: a NOTIFY inside the transaction would make
/// PostgreSQL serialize the commits of every tenant).
pub async fn append(conn: &mut Conn<'_>, new: &[ChangeRow]) -> Result<Vec<String>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    if i64::try_from(new.len()).unwrap_or(i64::MAX) > PER_TRANSACTION {
        return Err(crate::error::Error::Internal("too many changes in one transaction".into()));
    }
    let count = new.len();
    let tenants = tenants(new);
    match conn {
        Conn::Pg(c) => {
            use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};
            const COLUMNS: usize = 10;
            let mut text = String::from(
                "INSERT INTO changes (tenant_id, sequence, resource_type, resource_id, kind, revision, actor, \
                 request_id, time, diff, resource) VALUES ",
            );
            for i in 0..new.len() {
                let n = i * COLUMNS;
                if i > 0 {
                    text.push_str(", ");
                }
                text.push_str(&format!(
                    "(${}, pg_current_xact_id()::text::bigint * {PER_TRANSACTION} + {i}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}::jsonb, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6,
                    n + 7,
                    n + 8,
                    n + 9,
                    n + 10
                ));
            }
            let mut query = diesel::sql_query(text).into_boxed::<diesel::pg::Pg>();
            for row in new {
                query = query
                    .bind::<Text, _>(&row.tenant_id)
                    .bind::<Integer, _>(row.resource_type)
                    .bind::<Text, _>(&row.resource_id)
                    .bind::<Integer, _>(row.kind)
                    .bind::<BigInt, _>(row.revision)
                    .bind::<Text, _>(&row.actor)
                    .bind::<Nullable<Text>, _>(&row.request_id)
                    .bind::<BigInt, _>(row.time)
                    .bind::<Text, _>(&row.diff.0)
                    .bind::<Nullable<Binary>, _>(&row.resource);
            }
            // One change (the common write) is a fixed text, kept prepared.
            if count == 1 {
                super::prepared::Kept::fixed(query).execute(&mut *c).await?;
            } else {
                query.execute(&mut *c).await?;
            }
        }
        Conn::Sqlite(_) => {
            let mut rows = Vec::with_capacity(new.len());
            for tenant in &tenants {
                let mine: Vec<&ChangeRow> = new.iter().filter(|c| c.tenant_id == *tenant).collect();
                let count = i64::try_from(mine.len()).unwrap_or(i64::MAX);
                let first = take_sequences(conn, tenant, count).await? - count + 1;
                for (offset, change) in mine.into_iter().enumerate() {
                    rows.push(ChangeRow { sequence: first + offset as i64, ..change.clone() });
                }
            }
            if let Conn::Sqlite(c) = conn {
                c.spawn_blocking(move |c| {
                    for row in &rows {
                        diesel::RunQueryDsl::execute(diesel::insert_into(changes::table).values(row), c)?;
                    }
                    Ok(())
                })
                .await?;
            }
        }
    }
    Ok(tenants)
}

/// The tenants of `changes`, each once, in name order.
pub fn tenants(changes: &[ChangeRow]) -> Vec<String> {
    let mut tenants: Vec<String> = changes.iter().map(|c| c.tenant_id.clone()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    tenants
}

/// Up to `limit` changes of `tenant` after `after`, in sequence order, below
/// the fence on PostgreSQL; with `types`, only those resource types.
pub async fn after(conn: &mut Conn<'_>, tenant: &str, after: i64, limit: i64, types: &[i32]) -> Result<Vec<ChangeRow>> {
    let fenced = conn.is_pg();
    let rows = dispatch!(conn, |c| {
        let mut query = changes::table
            .filter(changes::tenant_id.eq(tenant))
            .filter(changes::sequence.gt(after))
            .order(changes::sequence)
            .limit(limit)
            .select(ChangeRow::as_select())
            .into_boxed();
        if fenced {
            query = query.filter(changes::sequence.lt(diesel::dsl::sql::<diesel::sql_types::BigInt>(PG_FENCE)));
        }
        if !types.is_empty() {
            query = query.filter(changes::resource_type.eq_any(types));
        }
        query.load(c).await?
    });
    Ok(rows)
}

/// A tenant's feed: a sequence every final change is at or below (all
/// changes up to it can be read now), and the last one purged.
pub async fn state(conn: &mut Conn<'_>, tenant: &str) -> Result<(i64, i64)> {
    #[derive(diesel::QueryableByName)]
    struct State {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        last: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        purged: i64,
    }
    let sql = match conn {
        Conn::Pg(_) => format!(
            "SELECT {PG_FENCE} - 1 AS last, COALESCE((SELECT purged_through FROM change_sequences \
             WHERE tenant_id = $1), 0) AS purged"
        ),
        Conn::Sqlite(_) => {
            "SELECT COALESCE(MAX(last_sequence), 0) AS last, COALESCE(MAX(purged_through), 0) AS purged \
                            FROM change_sequences WHERE tenant_id = ?1"
                .to_string()
        }
    };
    let state: State = dispatch!(conn, |c| {
        diesel::sql_query(sql.clone()).bind::<diesel::sql_types::Text, _>(tenant).get_result(c).await?
    });
    Ok((state.last, state.purged))
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
            .load(&mut *c)
            .await?
        }
        Conn::Sqlite(c) => {
            diesel::sql_query(
                "DELETE FROM changes WHERE rowid IN (SELECT rowid FROM changes WHERE time < ?1 ORDER BY time \
                 LIMIT ?2) RETURNING tenant_id, sequence",
            )
            .bind::<diesel::sql_types::BigInt, _>(before)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(&mut *c)
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
    let greatest = if conn.is_pg() { "GREATEST" } else { "MAX" };
    let (p1, p2) = if conn.is_pg() { ("$1", "$2") } else { ("?1", "?2") };
    let upsert = format!(
        "INSERT INTO change_sequences (tenant_id, last_sequence, purged_through) VALUES ({p1}, {p2}, {p2}) \
         ON CONFLICT (tenant_id) DO UPDATE SET purged_through = \
         {greatest}(change_sequences.purged_through, excluded.purged_through)"
    );
    for (tenant, sequence) in through {
        dispatch!(conn, |c| {
            diesel::sql_query(upsert.clone())
                .bind::<diesel::sql_types::Text, _>(&tenant)
                .bind::<diesel::sql_types::BigInt, _>(sequence)
                .execute(c)
                .await?
        });
    }
    Ok(purged.len())
}

/// Tells every replica listening that `tenants` have new changes, in one
/// statement (PostgreSQL).
pub async fn notify(conn: &mut Conn<'_>, tenants: &[String]) -> Result<()> {
    if let Conn::Pg(c) = conn {
        let query = diesel::sql_query("SELECT pg_notify($1, tenant) FROM unnest($2) AS tenant")
            .bind::<diesel::sql_types::Text, _>(NOTIFY_CHANNEL)
            .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(tenants);
        super::prepared::Kept::fixed(query).execute(&mut *c).await?;
    }
    Ok(())
}

/// Subscribes a dedicated PostgreSQL connection to the change channel.
pub async fn listen(conn: &mut diesel_async::AsyncPgConnection) -> Result<()> {
    conn.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await?;
    Ok(())
}
