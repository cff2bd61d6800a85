//! `agenda.v1.ChangeService`: the journal made consumable. ListChanges pages
//! through stored changes; WatchChanges replays what is stored after the
//! caller's cursor and then streams live changes from the replica's
//! [`Feed`], handing over from replay to live with no gap and no duplicate:
//! the watcher registers first, replays second, and then skips every live
//! change it has already sent.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Budget, journal::field_changes, timestamp};
use crate::{
    api::{self, change_service_server::ChangeService},
    auth::Principal,
    error::{Error, Reason, Result},
    feed::Feed,
    store::{
        Db,
        change::{self, ChangeRow},
    },
    telemetry::metrics,
};

/// Changes per ListChanges page when none is asked for.
const DEFAULT_PAGE: i64 = 100;
/// Largest ListChanges page.
const MAX_PAGE: i64 = 1000;
/// Changes read at a time while a watcher replays.
const REPLAY_CHUNK: i64 = 500;

/// The change service.
#[derive(Clone)]
pub struct ChangeApi {
    db: Db,
    feed: Feed,
    max_response_bytes: usize,
}

/// What a consumer asked for.
#[derive(Clone)]
struct Selection {
    tenant: String,
    types: Vec<i32>,
    include_resources: bool,
    /// When the caller's token expires (seconds since the epoch).
    expires_at: u64,
}

impl ChangeApi {
    /// The service over `db`, with live changes from `feed`.
    pub fn new(db: Db, feed: Feed, max_response_bytes: usize) -> Self {
        ChangeApi { db, feed, max_response_bytes }
    }

    /// A page of changes after `start_after` (see ListChanges); `last` is
    /// the tenant's readable end, read before the page.
    async fn list_page(
        &self,
        wanted: Selection,
        start_after: i64,
        last: i64,
        page: i64,
    ) -> Result<(Vec<api::Change>, i64)> {
        let limit = self.max_response_bytes;
        self.db
            .read(move |c| {
                Box::pin(async move {
                    let rows = change::after(c, &wanted.tenant, start_after, page, &wanted.types).await?;
                    still_whole(c, &wanted.tenant, start_after).await?;
                    let full = rows.len() as i64 == page;
                    let mut budget = Budget::new(limit);
                    let mut changes = Vec::with_capacity(rows.len());
                    let mut next = start_after;
                    for row in &rows {
                        let change = to_proto(row, wanted.include_resources);
                        if !budget.take(&change) {
                            if changes.is_empty() {
                                return Err(Error::ResponseTooLarge { limit });
                            }
                            return Ok((changes, next));
                        }
                        next = row.sequence;
                        changes.push(change);
                    }
                    if !full {
                        next = next.max(last);
                    }
                    Ok((changes, next))
                })
            })
            .await
    }

    /// The cursor to read after: `start_after`, or for 0 ("from the oldest
    /// kept") the last purged sequence; `CURSOR_EXPIRED` when changes after
    /// `start_after` were purged. Also returns the tenant's last sequence.
    async fn check_cursor(&self, tenant: &str, start_after: i64) -> Result<(i64, i64)> {
        if start_after < 0 {
            return Err(Error::invalid("start_after", Reason::FieldInvalid, "start_after must not be negative."));
        }
        let tenant = tenant.to_string();
        let (last, purged_through) =
            self.db.read(move |c| Box::pin(async move { change::state(c, &tenant).await })).await?;
        let after = cursor(start_after, purged_through)?;
        Ok((after, last))
    }
}

fn selection(caller: &Principal, types: &[i32], include_resources: bool) -> Result<Selection> {
    for (i, t) in types.iter().enumerate() {
        match api::ResourceType::try_from(*t) {
            Ok(api::ResourceType::Unspecified) | Err(_) => {
                return Err(Error::invalid(
                    format!("resource_types[{i}]"),
                    Reason::FieldInvalid,
                    format!("resource_types[{i}] is not a resource type."),
                ));
            }
            Ok(_) => {}
        }
    }
    let mut types = types.to_vec();
    types.sort_unstable();
    types.dedup();
    Ok(Selection { tenant: caller.tenant.clone(), types, include_resources, expires_at: caller.expires_at })
}

/// The sequence to read after for a consumer's `start_after`, given what was
/// purged: 0 starts at the oldest kept; a cursor before that has missed
/// purged changes.
fn cursor(start_after: i64, purged_through: i64) -> Result<i64> {
    match start_after {
        0 => Ok(purged_through),
        after if after < purged_through => Err(Error::CursorExpired { oldest_sequence: purged_through + 1 }),
        after => Ok(after),
    }
}

/// Rows read after `after` are whole only if nothing after it was purged
/// meanwhile (the purge runs beside the reads); else the cursor expired.
async fn still_whole(conn: &mut crate::store::Conn<'_>, tenant: &str, after: i64) -> Result<()> {
    let (_, purged_through) = change::state(conn, tenant).await?;
    if purged_through > after {
        return Err(Error::CursorExpired { oldest_sequence: purged_through + 1 });
    }
    Ok(())
}

/// A stored change as the API returns it.
fn to_proto(row: &ChangeRow, include_resources: bool) -> api::Change {
    let resource = match (&row.resource, include_resources) {
        (Some(bytes), true) => match api::ResourceType::try_from(row.resource_type) {
            Ok(api::ResourceType::Contact) => {
                api::Contact::decode(bytes.as_slice()).ok().map(api::change::Resource::Contact)
            }
            Ok(api::ResourceType::Activity) => {
                api::Activity::decode(bytes.as_slice()).ok().map(api::change::Resource::Activity)
            }
            Ok(api::ResourceType::ActivityType) => {
                api::ActivityType::decode(bytes.as_slice()).ok().map(api::change::Resource::ActivityType)
            }
            Ok(api::ResourceType::Task) => api::Task::decode(bytes.as_slice()).ok().map(api::change::Resource::Task),
            Ok(api::ResourceType::TaskCategory) => {
                api::TaskCategory::decode(bytes.as_slice()).ok().map(api::change::Resource::TaskCategory)
            }
            _ => None,
        },
        _ => None,
    };
    api::Change {
        sequence: row.sequence,
        resource_type: row.resource_type,
        resource_id: row.resource_id.clone(),
        kind: row.kind,
        revision: row.revision,
        actor: row.actor.clone(),
        request_id: row.request_id.clone().unwrap_or_default(),
        time: Some(timestamp(row.time)),
        changes: field_changes(&row.diff.0),
        resource,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = std::result::Result<api::Change, Status>> + Send>>;

#[tonic::async_trait]
impl ChangeService for ChangeApi {
    async fn list_changes(
        &self,
        request: Request<api::ListChangesRequest>,
    ) -> std::result::Result<Response<api::ListChangesResponse>, Status> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        if request.page_size < 0 {
            return Err(Error::invalid("page_size", Reason::FieldInvalid, "page_size must not be negative.").into());
        }
        let page = match i64::from(request.page_size) {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let wanted = selection(&caller, &request.resource_types, request.include_resources)?;
        // The last sequence is read before the page: every change up to it
        // had committed, so a short page has seen all of them.
        // A consumer starting from the oldest kept (0) is never refused: when
        // the purge passes it while it reads, it starts again from the new oldest.
        let mut attempts = 0;
        let (changes, next) = loop {
            let (start_after, last) = self.check_cursor(&wanted.tenant, request.start_after).await?;
            attempts += 1;
            match self.list_page(wanted.clone(), start_after, last, page).await {
                // A purge outruns a read only briefly; after a few tries the
                // caller is told, rather than the server trying forever.
                Err(Error::CursorExpired { .. }) if request.start_after == 0 && attempts < 5 => continue,
                other => break other?,
            }
        };
        Ok(Response::new(api::ListChangesResponse { changes, next_start_after: next }))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        request: Request<api::WatchChangesRequest>,
    ) -> std::result::Result<Response<Self::WatchChangesStream>, Status> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        let wanted = selection(&caller, &request.resource_types, request.include_resources)?;
        let (start_after, _) = self.check_cursor(&wanted.tenant, request.start_after).await?;
        // A watcher slot is taken now, so an over-full replica refuses at once.
        let slot = self.feed.reserve()?;
        let (tx, rx) = mpsc::channel(16);
        let from_oldest = request.start_after == 0;
        tokio::spawn(watch(self.db.clone(), self.feed.clone(), wanted, start_after, slot, from_oldest, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends one change; `false` once the caller has gone. Every change sent is
/// counted; only live ones count towards the commit-to-send lag.
async fn send(
    tx: &mpsc::Sender<std::result::Result<api::Change, Status>>,
    row: &ChangeRow,
    wanted: &Selection,
    live: bool,
) -> bool {
    let change = to_proto(row, wanted.include_resources);
    let sent = tx.send(Ok(change)).await.is_ok();
    if sent {
        metrics::change_sent(row.time, live);
    }
    sent
}

/// Replays the stored changes after `*last` until caught up; `false` once
/// the caller has gone or the cursor expired (the error is sent).
async fn replay(
    db: &Db,
    feed: &Feed,
    wanted: &Selection,
    last: &mut i64,
    from_oldest: bool,
    tx: &mpsc::Sender<std::result::Result<api::Change, Status>>,
) -> bool {
    let mut start = *last;
    loop {
        let (selection, after) = (wanted.clone(), *last);
        let Ok(slot) = feed.read_slot().await else { return false };
        let rows = db
            .read(move |c| {
                Box::pin(async move {
                    let rows = change::after(c, &selection.tenant, after, REPLAY_CHUNK, &selection.types).await?;
                    still_whole(c, &selection.tenant, after).await?;
                    Ok(rows)
                })
            })
            .await;
        drop(slot);
        let rows = match rows {
            Ok(rows) => rows,
            // Nothing sent yet from the oldest kept: start again from the new oldest.
            Err(Error::CursorExpired { oldest_sequence }) if from_oldest && *last == start => {
                *last = oldest_sequence - 1;
                start = *last;
                continue;
            }
            Err(error) => {
                let _ = tx.send(Err(Status::from(error))).await;
                return false;
            }
        };
        let done = (rows.len() as i64) < REPLAY_CHUNK;
        for row in &rows {
            if !send(tx, row, wanted, false).await {
                return false;
            }
            *last = row.sequence;
        }
        if done {
            return true;
        }
    }
}

/// The body of one watch stream. It replays until caught up, then
/// registers for live changes and replays once more (what committed in
/// between), so a consumer far behind is never cut off for what arrived
/// while it replayed; then it follows live changes, skipping any it has
/// already sent.
async fn watch(
    db: Db,
    feed: Feed,
    wanted: Selection,
    start_after: i64,
    slot: crate::feed::WatcherSlot,
    from_oldest: bool,
    tx: mpsc::Sender<std::result::Result<api::Change, Status>>,
) {
    let mut last = start_after;
    if !replay(&db, &feed, &wanted, &mut last, from_oldest, &tx).await {
        return;
    }
    let mut subscription = match feed.subscribe(&wanted.tenant, slot).await {
        Ok(subscription) => subscription,
        Err(error) => {
            let _ = tx.send(Err(Status::from(error))).await;
            return;
        }
    };
    if !replay(&db, &feed, &wanted, &mut last, from_oldest, &tx).await {
        return;
    }
    // The stream lives no longer than the token that opened it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expiry = tokio::time::sleep(std::time::Duration::from_secs(wanted.expires_at.saturating_sub(now)));
    tokio::pin!(expiry);
    loop {
        let row: Option<Arc<ChangeRow>> = tokio::select! {
            row = subscription.changes.recv() => row,
            () = tx.closed() => return,
            () = &mut expiry => {
                let expired = Error::Unauthenticated {
                    reason: Reason::TokenExpired,
                    message: format!(
                        "The token of this watch has expired: watch again with a new token and start_after = {last}."
                    ),
                };
                let _ = tx.send(Err(Status::from(expired))).await;
                return;
            }
        };
        let Some(row) = row else { break };
        if row.sequence <= last {
            continue;
        }
        last = row.sequence;
        if !wanted.types.is_empty() && !wanted.types.contains(&row.resource_type) {
            continue;
        }
        if !send(&tx, &row, &wanted, true).await {
            return;
        }
    }
    let ended = Error::WatchEnded { resume_after: last, behind: subscription.was_cut() };
    let _ = tx.send(Err(Status::from(ended))).await;
}
