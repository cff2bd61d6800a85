//! The gRPC services: each converts the request, calls domain and store, and
//! converts the answer back. Shared here: timestamps, request hashes, and
//! answers built within the response budget (list pages and batch reads).

pub mod activity;
pub mod activity_type;
pub mod change;
pub mod contact;
pub mod journal;
pub mod mask;
pub mod resource;
pub mod task;

use prost::Message;
use prost_types::Timestamp;
use sha2::{Digest, Sha256};

pub use mask::{ReadMask, UpdateMask};

use crate::{
    error::{Error, Result},
    query::{ListPlan, list::anchor_gone, spec::Sql},
    store::{Conn, Db, TxFuture, row_exists},
};

/// The [`crate::query::ListParams`] of a List request message.
#[macro_export]
macro_rules! list_params {
    ($request:expr) => {
        $crate::query::ListParams {
            page_size: $request.page_size,
            page_token: std::mem::take(&mut $request.page_token),
            filter: std::mem::take(&mut $request.filter),
            order_by: std::mem::take(&mut $request.order_by),
            show_deleted: $request.show_deleted,
        }
    };
}

/// Rows read from the database at a time while an answer is built, so the
/// memory of one call is bounded by this many rows plus the response budget.
pub(crate) const CHUNK_ROWS: usize = 100;

/// What an answer may still take of the response budget, in encoded bytes.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    left: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget { left: limit }
    }

    /// Takes what `message` adds to a repeated field of the answer; `false`
    /// (and nothing taken) if it does not fit.
    pub fn take(&mut self, message: &impl Message) -> bool {
        // The field's tag and length prefix: at most 1 + 5 bytes here.
        let cost = message.encoded_len() + 6;
        if cost > self.left {
            return false;
        }
        self.left -= cost;
        true
    }
}

/// Loads the rows of a list query.
pub type LoadRows<T> = for<'a, 'b> fn(&'a mut Conn<'b>, &'a Sql) -> TxFuture<'a, Vec<T>>;

/// One page of a list, converted by `convert` and held to `budget_bytes`:
/// rows are read a chunk at a time, and a page that would outgrow the budget
/// ends early with a next_page_token (a single row over the budget is
/// `RESOURCE_EXHAUSTED`). A page token whose anchor row no longer exists is
/// `PAGE_TOKEN_INVALID`, never an empty last page.
/// `context` is loaded first, in the same transaction, and handed to every
/// conversion (the names a resource shows in the caller's language).
pub async fn list_page<T, P, C, X>(
    db: &Db,
    plan: ListPlan,
    budget_bytes: usize,
    load: LoadRows<T>,
    id: fn(&T) -> &str,
    context: X,
    convert: impl Fn(T, &C) -> Result<P> + Send + 'static,
) -> Result<(Vec<P>, String)>
where
    T: Send + 'static,
    P: Message + Send + 'static,
    C: Send + 'static,
    X: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, C> + Send + 'static,
{
    db.read(move |conn| {
        Box::pin(async move {
            let context = context(conn).await?;
            let mut budget = Budget::new(budget_bytes);
            let mut page: Vec<P> = Vec::new();
            let mut anchor = plan.anchor.clone();
            loop {
                let want = (plan.page_size - page.len()).min(CHUNK_ROWS);
                let sql = plan.sql(anchor.as_deref(), want + 1)?;
                let rows = load(conn, &sql).await?;
                if rows.is_empty()
                    && page.is_empty()
                    && let Some(first) = &plan.anchor
                    && !row_exists(conn, plan.table(), plan.tenant(), first).await?
                {
                    return Err(anchor_gone());
                }
                let more = rows.len() > want;
                let mut last: Option<String> = None;
                for row in rows.into_iter().take(want) {
                    let row_id = id(&row).to_string();
                    let message = convert(row, &context)?;
                    if !budget.take(&message) {
                        return match page.is_empty() {
                            true => Err(Error::ResponseTooLarge { limit: budget_bytes }),
                            false => Ok((page, plan.next_token(anchor.as_deref().unwrap_or_default()))),
                        };
                    }
                    page.push(message);
                    anchor = Some(row_id.clone());
                    last = Some(row_id);
                }
                match last {
                    Some(last) if more && page.len() == plan.page_size => {
                        return Ok((page, plan.next_token(&last)));
                    }
                    Some(_) if more => continue,
                    // More rows were there, but none after this chunk's anchor
                    // now (it was purged meanwhile): the next call says so.
                    None if !page.is_empty() => {
                        return Ok((page, anchor.as_deref().map(|a| plan.next_token(a)).unwrap_or_default()));
                    }
                    _ => return Ok((page, String::new())),
                }
            }
        })
    })
    .await
}

/// A stored rich text as the API returns it; none when it is empty.
pub fn rich_text(text: &crate::domain::rich_text::RichText) -> Option<crate::api::RichText> {
    (!text.raw.is_empty()).then(|| crate::api::RichText {
        format: text.format as i32,
        raw: text.raw.clone(),
        html: text.html.clone(),
    })
}

/// A stored time (microseconds since the epoch) as a protobuf Timestamp.
pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp { seconds: micros.div_euclid(1_000_000), nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32 }
}

/// A hash of an RPC's request, for request-id replays: the same operation and
/// the same bytes give the same hash. Callers clear the request_id first.
pub fn request_hash(operation: &str, request: &impl Message) -> String {
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update([0]);
    hasher.update(request.encode_to_vec());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_before_and_after_the_epoch() {
        assert_eq!(timestamp(1_500_000), Timestamp { seconds: 1, nanos: 500_000_000 });
        assert_eq!(timestamp(-1), Timestamp { seconds: -1, nanos: 999_999_000 });
    }
}
