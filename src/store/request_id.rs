//! Request ids: the same `request_id` from the same tenant within 24 hours
//! returns what the first request made. Keys are claimed with one insert
//! inside the creating transaction, so concurrent retries cannot both create:
//! on PostgreSQL a second insert of the same key waits for the first
//! transaction and then sees its row; on SQLite writes are serialized.

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;

use super::{Conn, schema::request_ids};
use crate::{
    dispatch,
    error::{Error, Reason, Result},
};

/// How long a request id is remembered, in microseconds.
pub const REQUEST_ID_TTL_MICROS: i64 = 24 * 3600 * 1_000_000;

/// The outcome of claiming a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The id is new: create the resource with the id given.
    New,
    /// The same request was made before: return this resource.
    Replay(String),
}

/// One request id to claim for one resource.
#[derive(Debug, Clone)]
pub struct RequestKey {
    /// The caller's request id (a canonical UUID).
    pub request_id: String,
    /// A hash of the request without its request id.
    pub request_hash: String,
    /// The id the resource gets if the claim is new.
    pub resource_id: String,
}

/// Claims `keys` of `tenant` for `operation`, now, in one insert. Must run in
/// the transaction that creates the resources. The result is in key order.
pub async fn claim_many(
    conn: &mut Conn<'_>,
    tenant: &str,
    operation: &str,
    keys: &[RequestKey],
    now: i64,
) -> Result<Vec<Claim>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = keys.iter().map(|k| k.request_id.as_str()).collect();
    // Inserted in request-id order, so two batches sharing ids cannot deadlock.
    let mut sorted: Vec<&RequestKey> = keys.iter().collect();
    sorted.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    let rows: Vec<_> = sorted
        .iter()
        .map(|k| {
            (
                request_ids::tenant_id.eq(tenant),
                request_ids::request_id.eq(k.request_id.as_str()),
                request_ids::operation.eq(operation),
                request_ids::request_hash.eq(k.request_hash.as_str()),
                request_ids::resource_id.eq(k.resource_id.as_str()),
                request_ids::create_time.eq(now),
            )
        })
        .collect();
    let expired_before = now - REQUEST_ID_TTL_MICROS;
    dispatch!(conn, |c| {
        diesel::delete(
            request_ids::table
                .filter(request_ids::tenant_id.eq(tenant))
                .filter(request_ids::request_id.eq_any(&ids))
                .filter(request_ids::create_time.lt(expired_before)),
        )
        .execute(c)
        .await?
    });
    let claimed: Vec<String> = match conn {
        Conn::Pg(c) => {
            diesel::insert_into(request_ids::table)
                .values(&rows)
                .on_conflict_do_nothing()
                .returning(request_ids::request_id)
                .get_results(&mut *c)
                .await?
        }
        Conn::Sqlite(c) => {
            let owned: Vec<RequestKey> = keys.to_vec();
            let (tenant, operation) = (tenant.to_string(), operation.to_string());
            c.spawn_blocking(move |c| {
                let mut claimed = Vec::new();
                for k in &owned {
                    let insert = diesel::insert_into(request_ids::table)
                        .values((
                            request_ids::tenant_id.eq(&tenant),
                            request_ids::request_id.eq(&k.request_id),
                            request_ids::operation.eq(&operation),
                            request_ids::request_hash.eq(&k.request_hash),
                            request_ids::resource_id.eq(&k.resource_id),
                            request_ids::create_time.eq(now),
                        ))
                        .on_conflict_do_nothing();
                    if diesel::RunQueryDsl::execute(insert, c)? == 1 {
                        claimed.push(k.request_id.clone());
                    }
                }
                Ok(claimed)
            })
            .await?
        }
    };
    if claimed.len() == keys.len() {
        return Ok(vec![Claim::New; keys.len()]);
    }
    let earlier: Vec<&str> = ids.iter().copied().filter(|id| !claimed.iter().any(|c| c == id)).collect();
    let existing: Vec<(String, String, String, String)> = dispatch!(conn, |c| {
        request_ids::table
            .filter(request_ids::tenant_id.eq(tenant))
            .filter(request_ids::request_id.eq_any(&earlier))
            .select((
                request_ids::request_id,
                request_ids::operation,
                request_ids::request_hash,
                request_ids::resource_id,
            ))
            .load(c)
            .await?
    });
    keys.iter()
        .map(|key| {
            if claimed.contains(&key.request_id) {
                return Ok(Claim::New);
            }
            match existing.iter().find(|(id, ..)| *id == key.request_id) {
                Some((_, op, hash, resource)) if op == operation && *hash == key.request_hash => {
                    Ok(Claim::Replay(resource.clone()))
                }
                Some(_) => Err(Error::FailedPrecondition {
                    reason: Reason::RequestIdReused,
                    subject: format!("request_id/{}", key.request_id),
                    message: format!(
                        "The request_id {:?} was used in the last 24 hours for a different request: use a new request_id for a new request.",
                        key.request_id
                    ),
                }),
                None => Err(Error::Database("a request id row vanished while it was claimed".into())),
            }
        })
        .collect()
}

/// Forgets request ids older than 24 hours; returns how many.
pub async fn purge_expired(conn: &mut Conn<'_>, now: i64) -> Result<usize> {
    let cutoff = now - REQUEST_ID_TTL_MICROS;
    Ok(dispatch!(conn, |c| {
        diesel::delete(request_ids::table.filter(request_ids::create_time.lt(cutoff))).execute(c).await?
    }))
}
