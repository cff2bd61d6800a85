//! One write path for every resource. A resource declares what is its own
//! (the [`Resource`] trait: its messages, how its fields parse and convert,
//! its queries, the rules that need the database); everything else is
//! written here once: Create, Get, List, Update (masks, etags, upsert, no-op
//! updates), Delete, Undelete and their batches, item prefixes in errors,
//! request-id replays, the response budget, and the journal: every committed
//! mutation appends one Change per resource it changed, in its own
//! transaction, with the diff computed once ([`super::journal`]).
//!
//! Each single call is the batch of one, so both behave the same. A batch is
//! one transaction: all items or none, and the error names the item.

use std::{collections::HashMap, marker::PhantomData, time::Duration};

use prost::Message;
use prost_types::FieldMask;

use super::{Budget, CHUNK_ROWS, ReadMask, UpdateMask, journal, list_page};
use crate::{
    api,
    auth::Principal,
    domain::{Check, Meta, Stored, new_id, parse_id, parse_request_id, rich_text::RichText},
    error::{Error, Reason, Result},
    feed::Feed,
    query::{ListParams, ResourceSpec, list, spec::Sql},
    store::{
        self, Conn, Db, TxFuture,
        change::ChangeRow,
        now_micros,
        request_id::{Claim, RequestKey},
        sql_types::JsonText,
    },
};

/// Most ids of a BatchGet.
pub const MAX_BATCH_GET: usize = 1000;
/// Most items of a batch write.
pub const MAX_BATCH_WRITE: usize = 500;

/// What a resource declares to run on the shared write path.
pub trait Resource: Sized + Send + Sync + 'static {
    /// The resource message of the contract.
    type Proto: Message + Default + Clone + Send + Sync + 'static;
    /// Its validated writable fields.
    type Fields: Clone + PartialEq + Send + Sync + 'static;

    /// The name in errors, e.g. `contact`.
    const NAME: &'static str;
    /// The message's full name, e.g. `agenda.v1.Contact`.
    const MESSAGE: &'static str;
    /// The field holding the resource in requests, e.g. `contact`.
    const FIELD: &'static str;
    /// The Create RPC's name, which keys its request ids.
    const CREATE: &'static str;
    /// The resource type in the change feed.
    const RESOURCE_TYPE: api::ResourceType;
    /// What may be filtered and ordered by.
    const SPEC: &'static ResourceSpec;

    /// Validates the writable fields of a message sent by a caller;
    /// violations go to `check` (under its prefix). Output-only fields are ignored.
    fn parse(check: &mut Check, proto: &Self::Proto) -> Self::Fields;
    /// The stored resource as the API returns it.
    fn to_proto(stored: &Stored<Self::Fields>) -> Self::Proto;
    /// The id a caller sent in a message.
    fn id_of(proto: &Self::Proto) -> &str;
    /// The etag a caller sent in a message.
    fn etag_of(proto: &Self::Proto) -> &str;

    /// The resources of `tenant` among `ids` (missing ones left out); with
    /// `lock`, locked until the transaction ends (in id order).
    fn find_many<'a>(
        conn: &'a mut Conn<'_>,
        tenant: &'a str,
        ids: &'a [String],
        lock: bool,
    ) -> TxFuture<'a, Vec<Stored<Self::Fields>>>;
    /// Inserts new resources; a taken id is `ABORTED` (a concurrent create won).
    fn insert_many<'a>(conn: &'a mut Conn<'_>, rows: &'a [Stored<Self::Fields>]) -> TxFuture<'a, ()>;
    /// Writes resources whose new state was decided under lock.
    fn write_many<'a>(conn: &'a mut Conn<'_>, rows: &'a [Stored<Self::Fields>]) -> TxFuture<'a, ()>;
    /// The rows of a list query.
    fn list<'a>(conn: &'a mut Conn<'_>, sql: &'a Sql) -> TxFuture<'a, Vec<Stored<Self::Fields>>>;
    /// Removes up to `limit` resources past their purge time; returns what went.
    fn purge_expired<'a>(conn: &'a mut Conn<'_>, now: i64, limit: i64) -> TxFuture<'a, Vec<Purged>>;

    /// Rules over the items of one write alone (index in the request, new
    /// state), checked before the database is asked.
    fn check_items(_written: &[(usize, Stored<Self::Fields>)], _batch: bool) -> Result<()> {
        Ok(())
    }

    /// Rules that need the database, checked inside the writing transaction
    /// after the items are decided and before they are written.
    fn check_written<'a>(
        _conn: &'a mut Conn<'_>,
        _tenant: &'a str,
        _written: &'a [(usize, Stored<Self::Fields>)],
        _batch: bool,
    ) -> TxFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// A purged resource, for its `PURGED` change.
#[derive(Debug, Clone)]
pub struct Purged {
    /// Its tenant.
    pub tenant: String,
    /// Its id.
    pub id: String,
    /// Its last revision.
    pub revision: i64,
}

/// A Create item: the resource sent and the request's own request id and hash.
pub struct CreateItem<P> {
    /// The resource to create.
    pub resource: Option<P>,
    /// The caller's request_id ("" for none).
    pub request_id: String,
    /// A hash of the request without its request_id.
    pub request_hash: String,
}

/// An Update item.
pub struct UpdateItem<P> {
    /// The resource with its id and new values.
    pub resource: Option<P>,
    /// The fields to change.
    pub update_mask: Option<FieldMask>,
    /// Create it when missing.
    pub allow_missing: bool,
    /// A comment on the change.
    pub comment: Option<api::RichText>,
}

/// Where a batch item's errors point: `requests[3].` in a batch, nothing for a single call.
pub fn item_prefix(batch: bool, list: &str, index: usize) -> String {
    if batch { format!("{list}[{index}].") } else { String::new() }
}

/// A batch must hold 1 to `max` items.
pub fn check_batch_size(count: usize, max: usize, field: &str) -> Result<()> {
    if count == 0 {
        return Err(Error::invalid(field, Reason::FieldRequired, format!("{field} must hold at least one item.")));
    }
    if count > max {
        return Err(Error::invalid(
            field,
            Reason::TooMany,
            format!("{field} has {count} items; at most {max} are allowed."),
        ));
    }
    Ok(())
}

/// One mutation decided inside a transaction: the resource before (none for
/// a create) and after, and what kind of change it is.
struct Mutation<F> {
    index: usize,
    before: Option<Stored<F>>,
    after: Stored<F>,
    kind: api::ChangeKind,
    request_id: Option<String>,
}

/// The shared operations of one resource type.
pub struct Pipeline<R: Resource> {
    db: Db,
    feed: Feed,
    retention_micros: i64,
    max_response_bytes: usize,
    resource: PhantomData<fn() -> R>,
}

impl<R: Resource> Clone for Pipeline<R> {
    fn clone(&self) -> Self {
        Pipeline {
            db: self.db.clone(),
            feed: self.feed.clone(),
            retention_micros: self.retention_micros,
            max_response_bytes: self.max_response_bytes,
            resource: PhantomData,
        }
    }
}

impl<R: Resource> Pipeline<R> {
    /// The pipeline on `db`, journaling to `feed`; soft-deleted resources are
    /// kept for `retention`, reads answer within `max_response_bytes`.
    pub fn new(db: Db, feed: Feed, retention: Duration, max_response_bytes: usize) -> Self {
        Pipeline {
            db,
            feed,
            retention_micros: i64::try_from(retention.as_micros()).unwrap_or(i64::MAX),
            max_response_bytes,
            resource: PhantomData,
        }
    }

    fn not_found(id: &str, field: Option<String>) -> Error {
        Error::NotFound { resource: R::NAME, id: id.to_string(), field }
    }

    /// Runs `decide` in one transaction, writes what it decided, appends one
    /// Change per mutation, and wakes the tenant's watchers once committed.
    async fn commit<T, D>(&self, tenant: String, batch: bool, decide: D) -> Result<T>
    where
        T: Send + 'static,
        D: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, (Vec<Mutation<R::Fields>>, T)> + Send + 'static,
    {
        let feed = self.feed.clone();
        let woken = self
            .db
            .write_and_then(
                move |c| {
                    Box::pin(async move {
                        let (mutations, answer) = decide(c).await?;
                        let written: Vec<(usize, Stored<R::Fields>)> =
                            mutations.iter().map(|m| (m.index, m.after.clone())).collect();
                        let created: Vec<Stored<R::Fields>> =
                            mutations.iter().filter(|m| m.before.is_none()).map(|m| m.after.clone()).collect();
                        let updated: Vec<Stored<R::Fields>> =
                            mutations.iter().filter(|m| m.before.is_some()).map(|m| m.after.clone()).collect();
                        R::check_items(&written, batch)?;
                        R::check_written(c, &tenant, &written, batch).await?;
                        // A resource that did not exist is inserted, never upserted: of
                        // concurrent creates of one id exactly one wins, the others fail
                        // on its key (ABORTED) instead of overwriting it. Rows are
                        // written in id order, so concurrent batches cannot deadlock.
                        let mut created = created;
                        let mut updated = updated;
                        created.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
                        updated.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
                        R::insert_many(c, &created).await?;
                        R::write_many(c, &updated).await?;
                        let changes = mutations.iter().map(|m| journal_entry::<R>(m)).collect::<Result<Vec<_>>>()?;
                        let woken = store::change::append(c, changes).await?;
                        Ok((woken, answer))
                    })
                },
                // Watchers are woken by the committing task, also when the call is gone.
                move |(woken, _): &(Vec<String>, T)| feed.committed(woken),
            )
            .await?;
        Ok(woken.1)
    }

    /// Creates resources, all or none; `batch` makes errors name `requests[i]`.
    pub async fn create(
        &self,
        caller: &Principal,
        items: Vec<CreateItem<R::Proto>>,
        batch: bool,
    ) -> Result<Vec<R::Proto>> {
        let now = now_micros();
        let mut new: Vec<Stored<R::Fields>> = Vec::with_capacity(items.len());
        let mut keys: Vec<(usize, RequestKey)> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let prefix = item_prefix(batch, "requests", i);
            let field = format!("{prefix}{}", R::FIELD);
            let sent = item
                .resource
                .as_ref()
                .ok_or_else(|| Error::invalid(&field, Reason::FieldRequired, format!("{field} is required.")))?;
            let mut check = Check::new(format!("{field}."));
            let fields = R::parse(&mut check, sent);
            let mut check_id = Check::new(prefix.clone());
            let request_id = parse_request_id(&mut check_id, "request_id", &item.request_id);
            let fields = check.finish(fields)?;
            check_id.finish(())?;
            let stored = Stored { meta: Meta::new(&caller.tenant, new_id(), &caller.subject, now), fields };
            if let Some(request_id) = request_id {
                if let Some((first, _)) = keys.iter().find(|(_, k)| k.request_id == request_id) {
                    return Err(Error::invalid(
                        format!("{prefix}request_id"),
                        Reason::FieldInvalid,
                        format!(
                            "{prefix}request_id repeats the request_id of requests[{first}]; each item needs its own."
                        ),
                    ));
                }
                keys.push((
                    i,
                    RequestKey { request_id, request_hash: item.request_hash, resource_id: stored.meta.id.clone() },
                ));
            }
            new.push(stored);
        }
        let indexed: Vec<(usize, Stored<R::Fields>)> = new.into_iter().enumerate().collect();
        let tenant = caller.tenant.clone();
        self.commit(tenant.clone(), batch, move |c| {
            Box::pin(async move {
                let request_keys: Vec<RequestKey> = keys.iter().map(|(_, k)| k.clone()).collect();
                let claims = store::request_id::claim_many(c, &tenant, R::CREATE, &request_keys, now).await?;
                let mut replayed: HashMap<usize, String> = HashMap::new();
                let mut request_ids: HashMap<usize, String> = HashMap::new();
                for ((i, key), claim) in keys.iter().zip(claims) {
                    match claim {
                        Claim::Replay(id) => {
                            replayed.insert(*i, id);
                        }
                        Claim::New => {
                            request_ids.insert(*i, key.request_id.clone());
                        }
                    }
                }
                let mut ids: Vec<String> = replayed.values().cloned().collect();
                ids.sort();
                let earlier = R::find_many(c, &tenant, &ids, false).await?;
                let mut mutations = Vec::new();
                let mut answer = Vec::with_capacity(indexed.len());
                for (i, stored) in indexed {
                    match replayed.get(&i) {
                        Some(id) => {
                            let first =
                                earlier.iter().find(|e| e.meta.id == *id).ok_or_else(|| Self::not_found(id, None))?;
                            answer.push(R::to_proto(first));
                        }
                        None => {
                            answer.push(R::to_proto(&stored));
                            mutations.push(Mutation {
                                index: i,
                                before: None,
                                after: stored,
                                kind: api::ChangeKind::Created,
                                request_id: request_ids.remove(&i),
                            });
                        }
                    }
                }
                Ok((mutations, answer))
            })
        })
        .await
    }

    /// Updates (or, with allow_missing, creates) resources, all or none.
    pub async fn update(
        &self,
        caller: &Principal,
        items: Vec<UpdateItem<R::Proto>>,
        batch: bool,
    ) -> Result<Vec<R::Proto>> {
        struct Item<P> {
            prefix: String,
            id: String,
            sent: P,
            mask: UpdateMask,
            allow_missing: bool,
        }
        let mut parsed: Vec<Item<R::Proto>> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let prefix = item_prefix(batch, "requests", i);
            let field = format!("{prefix}{}", R::FIELD);
            let sent = item
                .resource
                .ok_or_else(|| Error::invalid(&field, Reason::FieldRequired, format!("{field} is required.")))?;
            let raw_id = R::id_of(&sent);
            let id = match parse_id(raw_id) {
                Some(id) => id,
                None if item.allow_missing || raw_id.trim().is_empty() => {
                    return Err(Error::invalid(
                        format!("{field}.id"),
                        Reason::FieldInvalid,
                        format!("{field}.id must be the UUID of the {} to update.", R::NAME),
                    ));
                }
                None => return Err(Self::not_found(raw_id, Some(format!("{field}.id")))),
            };
            if let Some(comment) = &item.comment {
                let mut check = Check::new(prefix.clone());
                RichText::parse(&mut check, "comment", comment.format, &comment.raw);
                check.finish(())?;
            }
            let mask = UpdateMask::parse(R::MESSAGE, item.update_mask.as_ref()).map_err(|e| e.prefixed(&prefix))?;
            if let Some(first) = parsed.iter().position(|other| other.id == id) {
                return Err(Error::invalid(
                    format!("{field}.id"),
                    Reason::FieldInvalid,
                    format!("{field}.id repeats requests[{first}]; update each {} once per batch.", R::NAME),
                ));
            }
            parsed.push(Item { prefix, id, sent, mask, allow_missing: item.allow_missing });
        }
        let caller = caller.clone();
        self.commit(caller.tenant.clone(), batch, move |c| {
            Box::pin(async move {
                let now = now_micros();
                let mut ids: Vec<String> = parsed.iter().map(|item| item.id.clone()).collect();
                ids.sort();
                let current: HashMap<String, Stored<R::Fields>> = R::find_many(c, &caller.tenant, &ids, true)
                    .await?
                    .into_iter()
                    .map(|stored| (stored.meta.id.clone(), stored))
                    .collect();
                let mut answer = Vec::with_capacity(parsed.len());
                let mut mutations = Vec::new();
                for (index, item) in parsed.iter().enumerate() {
                    let field = format!("{}{}", item.prefix, R::FIELD);
                    let existing = current.get(&item.id);
                    let (base, meta) = match existing {
                        Some(existing) => {
                            existing.meta.check_etag(R::NAME, R::etag_of(&item.sent))?;
                            (R::to_proto(existing), existing.meta.next(&caller.subject, now))
                        }
                        None if item.allow_missing => {
                            (R::Proto::default(), Meta::new(&caller.tenant, item.id.clone(), &caller.subject, now))
                        }
                        None => return Err(Self::not_found(&item.id, Some(format!("{field}.id")))),
                    };
                    let merged =
                        item.mask.merge(&base, &item.sent, existing.is_none()).map_err(|e| e.prefixed(&item.prefix))?;
                    let mut check = Check::new(format!("{field}."));
                    let fields = R::parse(&mut check, &merged);
                    let fields = check.finish(fields)?;
                    match existing {
                        Some(existing) if existing.fields == fields => answer.push(R::to_proto(existing)),
                        _ => {
                            let after = Stored { meta, fields };
                            answer.push(R::to_proto(&after));
                            mutations.push(Mutation {
                                index,
                                kind: if existing.is_some() {
                                    api::ChangeKind::Updated
                                } else {
                                    api::ChangeKind::Created
                                },
                                before: existing.cloned(),
                                after,
                                request_id: None,
                            });
                        }
                    }
                }
                Ok((mutations, answer))
            })
        })
        .await
    }

    /// Soft-deletes resources, all or none; each with an optional etag.
    pub async fn delete(&self, caller: &Principal, items: Vec<(String, String)>, batch: bool) -> Result<Vec<R::Proto>> {
        let field = move |i: usize| batch.then(|| format!("ids[{i}]"));
        let mut ids = Vec::with_capacity(items.len());
        for (i, (raw, _)) in items.iter().enumerate() {
            let id = parse_id(raw).ok_or_else(|| Self::not_found(raw, field(i)))?;
            if let Some(first) = ids.iter().position(|other| *other == id) {
                return Err(Error::invalid(
                    format!("ids[{i}]"),
                    Reason::FieldInvalid,
                    format!("ids[{i}] repeats ids[{first}]; name each {} once.", R::NAME),
                ));
            }
            ids.push(id);
        }
        let (caller, retention) = (caller.clone(), self.retention_micros);
        self.commit(caller.tenant.clone(), batch, move |c| {
            Box::pin(async move {
                let now = now_micros();
                let mut sorted = ids.clone();
                sorted.sort();
                let current = R::find_many(c, &caller.tenant, &sorted, true).await?;
                let mut answer = Vec::with_capacity(ids.len());
                let mut mutations = Vec::new();
                for (i, (id, (raw, etag))) in ids.iter().zip(&items).enumerate() {
                    let existing =
                        current.iter().find(|c| c.meta.id == *id).ok_or_else(|| Self::not_found(raw, field(i)))?;
                    existing.meta.check_etag(R::NAME, etag)?;
                    match existing.meta.deleted(&caller.subject, now, retention) {
                        Some(meta) => {
                            let after = Stored { meta, fields: existing.fields.clone() };
                            answer.push(R::to_proto(&after));
                            mutations.push(Mutation {
                                index: i,
                                before: Some(existing.clone()),
                                after,
                                kind: api::ChangeKind::Deleted,
                                request_id: None,
                            });
                        }
                        None => answer.push(R::to_proto(existing)),
                    }
                }
                Ok((mutations, answer))
            })
        })
        .await
    }

    /// Restores a soft-deleted resource.
    pub async fn undelete(&self, caller: &Principal, raw: &str) -> Result<R::Proto> {
        let id = parse_id(raw).ok_or_else(|| Self::not_found(raw, None))?;
        let (caller, raw) = (caller.clone(), raw.to_string());
        self.commit(caller.tenant.clone(), false, move |c| {
            Box::pin(async move {
                let current = R::find_many(c, &caller.tenant, std::slice::from_ref(&id), true).await?;
                let existing = current.into_iter().next().ok_or_else(|| Self::not_found(&raw, None))?;
                let meta = existing.meta.undeleted(R::NAME, &caller.subject, now_micros())?;
                let after = Stored { meta, fields: existing.fields.clone() };
                let answer = R::to_proto(&after);
                let mutation = Mutation {
                    index: 0,
                    before: Some(existing),
                    after,
                    kind: api::ChangeKind::Undeleted,
                    request_id: None,
                };
                Ok((vec![mutation], answer))
            })
        })
        .await
    }

    /// Resources by id, in the order asked, masked and held to the response
    /// budget; `NOT_FOUND` names the first missing one. An id asked for
    /// again is answered again at its position, but read and converted once,
    /// and every position counts against the budget.
    pub async fn get(&self, caller: &Principal, ids: &[String], mask: ReadMask, batch: bool) -> Result<Vec<R::Proto>> {
        let field = move |i: usize| batch.then(|| format!("ids[{i}]"));
        let parsed = ids
            .iter()
            .enumerate()
            .map(|(i, raw)| parse_id(raw).ok_or_else(|| Self::not_found(raw, field(i))))
            .collect::<Result<Vec<_>>>()?;
        let tenant = caller.tenant.clone();
        let limit = self.max_response_bytes;
        let raw_ids = ids.to_vec();
        self.db
            .read(move |c| {
                Box::pin(async move {
                    let mut budget = Budget::new(limit);
                    let mut answer = Vec::with_capacity(parsed.len());
                    // Converted resources; each is in the answer, so the budget bounds them.
                    let mut converted: HashMap<String, R::Proto> = HashMap::new();
                    for (chunk_index, chunk) in parsed.chunks(CHUNK_ROWS).enumerate() {
                        let mut wanted: Vec<String> =
                            chunk.iter().filter(|id| !converted.contains_key(*id)).cloned().collect();
                        wanted.sort();
                        wanted.dedup();
                        for stored in R::find_many(c, &tenant, &wanted, false).await? {
                            converted.insert(stored.meta.id.clone(), mask.apply(R::to_proto(&stored))?);
                        }
                        for (offset, id) in chunk.iter().enumerate() {
                            let i = chunk_index * CHUNK_ROWS + offset;
                            let message = converted.get(id).ok_or_else(|| Self::not_found(&raw_ids[i], field(i)))?;
                            if !budget.take(message) {
                                return Err(Error::ResponseTooLarge { limit });
                            }
                            answer.push(message.clone());
                        }
                    }
                    Ok(answer)
                })
            })
            .await
    }

    /// One page of resources, masked and held to the response budget.
    pub async fn list(
        &self,
        caller: &Principal,
        params: &ListParams,
        mask: ReadMask,
    ) -> Result<(Vec<R::Proto>, String)> {
        let plan = list::plan(R::SPEC, &caller.tenant, params, self.db.is_pg())?;
        fn id_of<F>(stored: &Stored<F>) -> &str {
            stored.meta.id.as_str()
        }
        list_page(&self.db, plan, self.max_response_bytes, R::list, id_of, move |stored| {
            mask.apply(R::to_proto(&stored))
        })
        .await
    }

    /// Purges soft-deleted resources past their purge time, a bounded batch
    /// per transaction, each with its `PURGED` change; returns how many went.
    pub async fn purge_expired(&self) -> Result<usize> {
        const BATCH: i64 = 1000;
        let mut total = 0;
        loop {
            let feed = self.feed.clone();
            let count = self
                .db
                .write_and_then(
                    |c| {
                        Box::pin(async move {
                            let now = now_micros();
                            let purged = R::purge_expired(c, now, BATCH).await?;
                            let count = purged.len();
                            let changes = purged
                                .into_iter()
                                .map(|p| ChangeRow {
                                    tenant_id: p.tenant,
                                    sequence: 0,
                                    resource_type: R::RESOURCE_TYPE as i32,
                                    resource_id: p.id,
                                    kind: api::ChangeKind::Purged as i32,
                                    revision: p.revision,
                                    actor: String::new(),
                                    request_id: None,
                                    time: now,
                                    diff: JsonText("[]".to_string()),
                                    resource: None,
                                })
                                .collect();
                            Ok((store::change::append(c, changes).await?, count))
                        })
                    },
                    move |(woken, _): &(Vec<String>, usize)| feed.committed(woken),
                )
                .await?
                .1;
            total += count;
            if (count as i64) < BATCH {
                return Ok(total);
            }
        }
    }
}

/// The Change a mutation appends: its diff and the resource after it.
fn journal_entry<R: Resource>(mutation: &Mutation<R::Fields>) -> Result<ChangeRow> {
    let after = R::to_proto(&mutation.after);
    let before = mutation.before.as_ref().map(R::to_proto);
    Ok(ChangeRow {
        tenant_id: mutation.after.meta.tenant.clone(),
        sequence: 0,
        resource_type: R::RESOURCE_TYPE as i32,
        resource_id: mutation.after.meta.id.clone(),
        kind: mutation.kind as i32,
        revision: mutation.after.meta.revision,
        actor: mutation.after.meta.updated_by.clone(),
        request_id: mutation.request_id.clone(),
        time: mutation.after.meta.update_time,
        diff: JsonText(journal::diff(R::MESSAGE, before.as_ref(), &after)?),
        resource: Some(after.encode_to_vec()),
    })
}
