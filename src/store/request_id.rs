//! Request ids: the same `request_id` from the same tenant within 24 hours
//! returns what the first request made. The key is claimed with an insert
//! inside the creating transaction, so concurrent retries cannot both create:
//! on PostgreSQL the second insert waits for the first transaction and then
//! sees its row; on SQLite writes are serialized.

use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};
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
    /// The id is new: go on and create the resource with the id given.
    New,
    /// The same request was made before: return this resource.
    Replay(String),
}

/// A request id to claim: who, what and for which resource.
#[derive(Debug, Clone)]
pub struct RequestKey<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The caller's request id (a UUID).
    pub request_id: &'a str,
    /// The RPC, e.g. `CreateContact`.
    pub operation: &'a str,
    /// A hash of the request without its request id.
    pub request_hash: &'a str,
}

/// Claims `key` for the resource `resource_id`, now. Must run in the
/// transaction that creates the resource.
pub async fn claim(conn: &mut Conn<'_>, key: &RequestKey<'_>, resource_id: &str, now: i64) -> Result<Claim> {
    let expired_before = now - REQUEST_ID_TTL_MICROS;
    let inserted = dispatch!(conn, |c| {
        diesel::delete(
            request_ids::table
                .filter(request_ids::tenant_id.eq(key.tenant))
                .filter(request_ids::request_id.eq(key.request_id))
                .filter(request_ids::create_time.lt(expired_before)),
        )
        .execute(c)
        .await?;
        diesel::insert_into(request_ids::table)
            .values((
                request_ids::tenant_id.eq(key.tenant),
                request_ids::request_id.eq(key.request_id),
                request_ids::operation.eq(key.operation),
                request_ids::request_hash.eq(key.request_hash),
                request_ids::resource_id.eq(resource_id),
                request_ids::create_time.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(c)
            .await?
    });
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let existing: Option<(String, String, String)> = dispatch!(conn, |c| {
        request_ids::table
            .filter(request_ids::tenant_id.eq(key.tenant))
            .filter(request_ids::request_id.eq(key.request_id))
            .select((request_ids::operation, request_ids::request_hash, request_ids::resource_id))
            .first(c)
            .await
            .optional()?
    });
    match existing {
        Some((operation, hash, resource)) if operation == key.operation && hash == key.request_hash => {
            Ok(Claim::Replay(resource))
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
}

/// Forgets request ids older than 24 hours; returns how many.
pub async fn purge_expired(conn: &mut Conn<'_>, now: i64) -> Result<usize> {
    let cutoff = now - REQUEST_ID_TTL_MICROS;
    Ok(dispatch!(conn, |c| {
        diesel::delete(request_ids::table.filter(request_ids::create_time.lt(cutoff))).execute(c).await?
    }))
}
