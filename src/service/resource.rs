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

use std::{collections::HashMap, marker::PhantomData, sync::Arc, time::Duration};

use prost::Message;
use prost_types::FieldMask;

use super::{Budget, CHUNK_ROWS, ReadMask, UpdateMask, journal, list_page};
use crate::{
    api,
    auth::Principal,
    domain::{Check, Meta, Stored, new_id, parse_id, parse_request_id, rich_text::RichText},
    error::{Error, Reason, Result},
    feed::Feed,
    query::{ListParams, ResourceSpec, list},
    store::{
        self, Conn, Db, TxFuture,
        change::ChangeRow,
        now_micros,
        request_id::{Claim, RequestKey},
        sql_types::JsonText,
        table::Table,
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
    /// Its table's queries.
    type Table: Table<Self::Fields>;
    /// What conversions for one caller need from the database (the names
    /// the resource shows in the caller's language), loaded once per call.
    type Context: Send + Sync + 'static;

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
    /// The stored resource as the API returns it, the same for every caller
    /// (so the change feed keeps it).
    fn to_proto(stored: &Stored<Self::Fields>) -> Self::Proto;
    /// [`Resource::to_proto`] of a resource no longer needed (a read), which
    /// a resource may convert without copying.
    fn into_proto(stored: Stored<Self::Fields>) -> Self::Proto {
        Self::to_proto(&stored)
    }
    /// The id a caller sent in a message.
    fn id_of(proto: &Self::Proto) -> &str;
    /// The etag a caller sent in a message.
    fn etag_of(proto: &Self::Proto) -> &str;

    /// The id a caller names a resource by, in its one spelling; `None` for
    /// an id no resource can have. Ids are UUIDs unless a resource says otherwise.
    fn parse_key(raw: &str) -> Option<String> {
        parse_id(raw)
    }
    /// The id of a resource being created: a new UUIDv7 unless the resource
    /// takes its id from its fields.
    fn new_key(_fields: &Self::Fields) -> String {
        new_id()
    }

    /// Loads the context of conversions for `caller`.
    fn context<'a>(conn: &'a mut Conn<'_>, caller: &'a Principal) -> TxFuture<'a, Self::Context>;
    /// Fills what a caller sees beyond [`Resource::to_proto`] (its language's names).
    fn present(_proto: &mut Self::Proto, _context: &Self::Context) {}

    /// The fields an update decides: `parsed` from the merged message, over
    /// the stored `before`. A resource whose message does not carry every
    /// stored field keeps the others here.
    fn carry(_before: &Self::Fields, parsed: Self::Fields) -> Self::Fields {
        parsed
    }

    /// Rules over the mutations of one write alone, checked before the
    /// database is asked.
    fn check_items(_mutations: &[Mutation<Self::Fields>], _batch: bool) -> Result<()> {
        Ok(())
    }

    /// Rules that need the database, checked inside the writing transaction
    /// after the mutations are decided and before they are written.
    fn check_written<'a>(
        _conn: &'a mut Conn<'_>,
        _caller: &'a Principal,
        _mutations: &'a [Mutation<Self::Fields>],
        _batch: bool,
    ) -> TxFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Keeps what the resource journals beyond the change feed (the
    /// activities' revisions), in the writing transaction: one entry per
    /// change, with the comment the call passed.
    fn journal<'a>(
        _conn: &'a mut Conn<'_>,
        _changes: &'a [ChangeRow],
        _comments: &'a [Option<RichText>],
    ) -> TxFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Inserts those of the resources whose id is not taken; returns them.
pub type InsertMissing<F> = for<'a, 'b> fn(&'a mut Conn<'b>, &'a [Stored<F>]) -> TxFuture<'a, Vec<Stored<F>>>;

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

/// What a [`Pipeline::modify`] decided: the resource's new state and any
/// resources created with it.
pub struct Modified<F> {
    /// The new state.
    pub after: Stored<F>,
    /// Resources created in the same transaction.
    pub created: Vec<Stored<F>>,
}

impl<F> Modified<F> {
    /// Just a new state.
    pub fn to(after: Stored<F>) -> Self {
        Modified { after, created: Vec::new() }
    }
}

/// A Create request: the resource it carries and its request_id.
pub trait CreateRequest: Message + Send + 'static {
    /// The resource message.
    type Proto;
    /// The resource sent, taken out of the request.
    fn take_resource(&mut self) -> Option<Self::Proto>;
    /// The request_id field.
    fn request_id_mut(&mut self) -> &mut String;
}

/// An Update request.
pub trait UpdateRequest: Send + 'static {
    /// The resource message.
    type Proto;
    /// The request as an update item.
    fn into_item(self) -> UpdateItem<Self::Proto>;
}

/// Implements [`CreateRequest`] (and [`UpdateRequest`], when an update
/// message is named) for the standard request messages of a resource whose
/// requests hold it in `$field`.
#[macro_export]
macro_rules! standard_requests {
    ($proto:ty, $field:ident, $create:ty) => {
        impl $crate::service::resource::CreateRequest for $create {
            type Proto = $proto;
            fn take_resource(&mut self) -> Option<$proto> {
                self.$field.take()
            }
            fn request_id_mut(&mut self) -> &mut String {
                &mut self.request_id
            }
        }
    };
    ($proto:ty, $field:ident, $create:ty, $update:ty) => {
        $crate::standard_requests!($proto, $field, $create);

        impl $crate::service::resource::UpdateRequest for $update {
            type Proto = $proto;
            fn into_item(self) -> $crate::service::resource::UpdateItem<$proto> {
                $crate::service::resource::UpdateItem {
                    resource: self.$field,
                    update_mask: self.update_mask,
                    allow_missing: self.allow_missing,
                    comment: self.comment,
                }
            }
        }
    };
}

/// The update of a resource whose Update takes no allow_missing and no
/// comment (activity types, task categories).
pub struct PlainUpdate<P> {
    /// The resource with its id and new values.
    pub resource: Option<P>,
    /// The fields to change.
    pub update_mask: Option<FieldMask>,
}

impl<P: Send + 'static> UpdateRequest for PlainUpdate<P> {
    type Proto = P;
    fn into_item(self) -> UpdateItem<P> {
        UpdateItem { resource: self.resource, update_mask: self.update_mask, allow_missing: false, comment: None }
    }
}

/// The one answer of a single call.
pub fn single<T>(mut answer: Vec<T>) -> Result<T> {
    answer.pop().ok_or_else(|| Error::Internal("a single call answered nothing".into()))
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
pub struct Mutation<F> {
    /// The item's index in the request.
    pub index: usize,
    /// The resource before; `None` for a create.
    pub before: Option<Stored<F>>,
    /// The resource after.
    pub after: Stored<F>,
    /// What kind of change it is.
    pub kind: api::ChangeKind,
    /// The call's request id, for creates that had one.
    pub request_id: Option<String>,
    /// The comment passed with the change.
    pub comment: Option<RichText>,
}

impl<F> Mutation<F> {
    fn new(index: usize, before: Option<Stored<F>>, after: Stored<F>, kind: api::ChangeKind) -> Self {
        Mutation { index, before, after, kind, request_id: None, comment: None }
    }
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
    /// Change per mutation (and the resource's own journal), presents the
    /// answer to the caller, and wakes the tenant's watchers once committed.
    async fn commit<D>(&self, caller: &Principal, batch: bool, decide: D) -> Result<Vec<R::Proto>>
    where
        D: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, (Vec<Mutation<R::Fields>>, Vec<R::Proto>)>
            + Send
            + 'static,
    {
        let feed = self.feed.clone();
        let caller = caller.clone();
        let woken = self
            .db
            .write_and_then(
                move |c| {
                    Box::pin(async move {
                        let (mutations, mut answer) = decide(c).await?;
                        R::check_items(&mutations, batch)?;
                        R::check_written(c, &caller, &mutations, batch).await?;
                        // A resource that did not exist is inserted, never upserted: of
                        // concurrent creates of one id exactly one wins, the others fail
                        // on its key (ABORTED) instead of overwriting it. Rows are
                        // written in id order, so concurrent batches cannot deadlock.
                        let mut created: Vec<Stored<R::Fields>> =
                            mutations.iter().filter(|m| m.before.is_none()).map(|m| m.after.clone()).collect();
                        let mut updated: Vec<Stored<R::Fields>> =
                            mutations.iter().filter(|m| m.before.is_some()).map(|m| m.after.clone()).collect();
                        created.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
                        updated.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
                        let changes = Arc::new(mutations.iter().map(journal_entry::<R>).collect::<Result<Vec<_>>>()?);
                        let comments: Vec<Option<RichText>> = mutations.into_iter().map(|m| m.comment).collect();
                        let woken = store::change::tenants(&changes);
                        // The writes and the read of the answer's context need nothing
                        // from each other: on PostgreSQL they go out together.
                        let (journaled, appended) = (changes.clone(), changes);
                        let writes: Vec<store::Step> = vec![
                            Box::new(move |c| Box::pin(async move { R::Table::insert_many(c, &created).await })),
                            Box::new(move |c| Box::pin(async move { R::Table::write_many(c, &updated).await })),
                            Box::new(move |c| Box::pin(async move { R::journal(c, &journaled, &comments).await })),
                            Box::new(move |c| {
                                Box::pin(async move { store::change::append(c, &appended).await.map(|_| ()) })
                            }),
                        ];
                        let reader = caller.clone();
                        let ((), context) = c
                            .both(
                                move |c| Box::pin(async move { c.all(writes).await }),
                                move |c| Box::pin(async move { R::context(c, &reader).await }),
                            )
                            .await?;
                        for proto in &mut answer {
                            R::present(proto, &context);
                        }
                        Ok((woken, answer))
                    })
                },
                // Watchers are woken by the committing task, also when the call is gone.
                move |(woken, _): &(Vec<String>, Vec<R::Proto>)| feed.committed(woken),
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
            let key = R::new_key(&fields);
            let stored = Stored { meta: Meta::new(&caller.tenant, key, &caller.subject, now), fields };
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
        self.commit(caller, batch, move |c| {
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
                let earlier = R::Table::find_many(c, &tenant, &ids, false).await?;
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
                            let mut mutation = Mutation::new(i, None, stored, api::ChangeKind::Created);
                            mutation.request_id = request_ids.remove(&i);
                            mutations.push(mutation);
                        }
                    }
                }
                Ok((mutations, answer))
            })
        })
        .await
    }

    fn create_item<Q: CreateRequest<Proto = R::Proto>>(mut request: Q) -> CreateItem<R::Proto> {
        let request_id = std::mem::take(request.request_id_mut());
        let request_hash = super::request_hash(R::CREATE, &request);
        CreateItem { resource: request.take_resource(), request_id, request_hash }
    }

    /// Create.
    pub async fn create_one<Q: CreateRequest<Proto = R::Proto>>(
        &self,
        caller: &Principal,
        request: Q,
    ) -> Result<R::Proto> {
        single(self.create(caller, vec![Self::create_item(request)], false).await?)
    }

    /// BatchCreate.
    pub async fn create_batch<Q: CreateRequest<Proto = R::Proto>>(
        &self,
        caller: &Principal,
        requests: Vec<Q>,
    ) -> Result<Vec<R::Proto>> {
        check_batch_size(requests.len(), MAX_BATCH_WRITE, "requests")?;
        self.create(caller, requests.into_iter().map(Self::create_item).collect(), true).await
    }

    /// Update.
    pub async fn update_one<Q: UpdateRequest<Proto = R::Proto>>(
        &self,
        caller: &Principal,
        request: Q,
    ) -> Result<R::Proto> {
        single(self.update(caller, vec![request.into_item()], false).await?)
    }

    /// BatchUpdate.
    pub async fn update_batch<Q: UpdateRequest<Proto = R::Proto>>(
        &self,
        caller: &Principal,
        requests: Vec<Q>,
    ) -> Result<Vec<R::Proto>> {
        check_batch_size(requests.len(), MAX_BATCH_WRITE, "requests")?;
        self.update(caller, requests.into_iter().map(UpdateRequest::into_item).collect(), true).await
    }

    /// Delete, with an optional etag.
    pub async fn delete_one(&self, caller: &Principal, id: String, etag: String) -> Result<R::Proto> {
        single(self.delete(caller, vec![(id, etag)], false).await?)
    }

    /// BatchDelete.
    pub async fn delete_batch(&self, caller: &Principal, ids: Vec<String>) -> Result<Vec<R::Proto>> {
        check_batch_size(ids.len(), MAX_BATCH_WRITE, "ids")?;
        self.delete(caller, ids.into_iter().map(|id| (id, String::new())).collect(), true).await
    }

    /// Get.
    pub async fn get_one(&self, caller: &Principal, id: String, read_mask: Option<&FieldMask>) -> Result<R::Proto> {
        let mask = ReadMask::parse(R::MESSAGE, read_mask)?;
        single(self.get(caller, &[id], mask, false).await?)
    }

    /// BatchGet.
    pub async fn get_batch(
        &self,
        caller: &Principal,
        ids: &[String],
        read_mask: Option<&FieldMask>,
    ) -> Result<Vec<R::Proto>> {
        check_batch_size(ids.len(), MAX_BATCH_GET, "ids")?;
        let mask = ReadMask::parse(R::MESSAGE, read_mask)?;
        self.get(caller, ids, mask, true).await
    }

    /// List: one page and the next page's token.
    pub async fn list_one(
        &self,
        caller: &Principal,
        params: &ListParams,
        read_mask: Option<&FieldMask>,
    ) -> Result<(Vec<R::Proto>, String)> {
        let mask = ReadMask::parse(R::MESSAGE, read_mask)?;
        self.list(caller, params, mask).await
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
            comment: Option<RichText>,
        }
        let mut parsed: Vec<Item<R::Proto>> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let prefix = item_prefix(batch, "requests", i);
            let field = format!("{prefix}{}", R::FIELD);
            let sent = item
                .resource
                .ok_or_else(|| Error::invalid(&field, Reason::FieldRequired, format!("{field} is required.")))?;
            let raw_id = R::id_of(&sent);
            let id = match R::parse_key(raw_id) {
                Some(id) => id,
                None if item.allow_missing || raw_id.trim().is_empty() => {
                    return Err(Error::invalid(
                        format!("{field}.id"),
                        Reason::FieldInvalid,
                        format!("{field}.id must be the id of the {} to update.", R::NAME),
                    ));
                }
                None => return Err(Self::not_found(raw_id, Some(format!("{field}.id")))),
            };
            let comment = match &item.comment {
                Some(comment) => {
                    let mut check = Check::new(prefix.clone());
                    let parsed = RichText::parse(&mut check, "comment", comment.format, &comment.raw);
                    check.finish(Some(parsed).filter(|c| !c.raw.is_empty()))?
                }
                None => None,
            };
            let mask = UpdateMask::parse(R::MESSAGE, item.update_mask.as_ref()).map_err(|e| e.prefixed(&prefix))?;
            if let Some(first) = parsed.iter().position(|other| other.id == id) {
                return Err(Error::invalid(
                    format!("{field}.id"),
                    Reason::FieldInvalid,
                    format!("{field}.id repeats requests[{first}]; update each {} once per batch.", R::NAME),
                ));
            }
            parsed.push(Item { prefix, id, sent, mask, allow_missing: item.allow_missing, comment });
        }
        let (owner, caller) = (caller, caller.clone());
        self.commit(owner, batch, move |c| {
            Box::pin(async move {
                let now = now_micros();
                let mut ids: Vec<String> = parsed.iter().map(|item| item.id.clone()).collect();
                ids.sort();
                let current: HashMap<String, Stored<R::Fields>> = R::Table::find_many(c, &caller.tenant, &ids, true)
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
                    let fields = match existing {
                        Some(existing) => R::carry(&existing.fields, fields),
                        None => fields,
                    };
                    match existing {
                        Some(existing) if existing.fields == fields => answer.push(R::to_proto(existing)),
                        _ => {
                            let after = Stored { meta, fields };
                            answer.push(R::to_proto(&after));
                            let kind =
                                if existing.is_some() { api::ChangeKind::Updated } else { api::ChangeKind::Created };
                            let mut mutation = Mutation::new(index, existing.cloned(), after, kind);
                            mutation.comment = item.comment.clone();
                            mutations.push(mutation);
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
            let id = R::parse_key(raw).ok_or_else(|| Self::not_found(raw, field(i)))?;
            if let Some(first) = ids.iter().position(|other| *other == id) {
                return Err(Error::invalid(
                    format!("ids[{i}]"),
                    Reason::FieldInvalid,
                    format!("ids[{i}] repeats ids[{first}]; name each {} once.", R::NAME),
                ));
            }
            ids.push(id);
        }
        let (owner, caller, retention) = (caller, caller.clone(), self.retention_micros);
        self.commit(owner, batch, move |c| {
            Box::pin(async move {
                let now = now_micros();
                let mut sorted = ids.clone();
                sorted.sort();
                let current = R::Table::find_many(c, &caller.tenant, &sorted, true).await?;
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
                            mutations.push(Mutation::new(i, Some(existing.clone()), after, api::ChangeKind::Deleted));
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
        let actor = caller.subject.clone();
        self.modify(caller, raw, api::ChangeKind::Undeleted, move |existing| {
            let meta = existing.meta.undeleted(R::NAME, &actor, now_micros())?;
            Ok(Some(Modified::to(Stored { meta, fields: existing.fields.clone() })))
        })
        .await
    }

    /// Changes one resource under lock as `change` decides: `None` changes
    /// nothing (no revision, no Change), else its new state, journaled as
    /// `kind` unless it equals the old one, and any resources the change
    /// creates with it (a recurring task's next occurrence). What the
    /// single-purpose RPCs (undelete, participants, completing a task) are
    /// written with.
    pub async fn modify<F>(&self, caller: &Principal, raw: &str, kind: api::ChangeKind, change: F) -> Result<R::Proto>
    where
        F: FnOnce(&Stored<R::Fields>) -> Result<Option<Modified<R::Fields>>> + Send + 'static,
    {
        let id = R::parse_key(raw).ok_or_else(|| Self::not_found(raw, None))?;
        let (tenant, raw) = (caller.tenant.clone(), raw.to_string());
        let answer = self
            .commit(caller, false, move |c| {
                Box::pin(async move {
                    let current = R::Table::find_many(c, &tenant, std::slice::from_ref(&id), true).await?;
                    let existing = current.into_iter().next().ok_or_else(|| Self::not_found(&raw, None))?;
                    match change(&existing)? {
                        Some(Modified { after, created }) if after != existing => {
                            let answer = vec![R::to_proto(&after)];
                            let mut mutations = vec![Mutation::new(0, Some(existing), after, kind)];
                            mutations.extend(
                                created.into_iter().map(|new| Mutation::new(0, None, new, api::ChangeKind::Created)),
                            );
                            Ok((mutations, answer))
                        }
                        _ => Ok((Vec::new(), vec![R::to_proto(&existing)])),
                    }
                })
            })
            .await?;
        answer.into_iter().next().ok_or_else(|| Error::Internal("a single change answered nothing".into()))
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
            .map(|(i, raw)| R::parse_key(raw).ok_or_else(|| Self::not_found(raw, field(i))))
            .collect::<Result<Vec<_>>>()?;
        let (caller, tenant) = (caller.clone(), caller.tenant.clone());
        let limit = self.max_response_bytes;
        let raw_ids = ids.to_vec();
        self.db
            .read(move |c| {
                Box::pin(async move {
                    let context = R::context(c, &caller).await?;
                    let mut budget = Budget::new(limit);
                    let mut answer = Vec::with_capacity(parsed.len());
                    // Converted resources; each is in the answer, so the budget bounds them.
                    let mut converted: HashMap<String, R::Proto> = HashMap::new();
                    for (chunk_index, chunk) in parsed.chunks(CHUNK_ROWS).enumerate() {
                        let mut wanted: Vec<String> =
                            chunk.iter().filter(|id| !converted.contains_key(*id)).cloned().collect();
                        wanted.sort();
                        wanted.dedup();
                        for stored in R::Table::find_many(c, &tenant, &wanted, false).await? {
                            let id = stored.meta.id.clone();
                            let mut proto = R::into_proto(stored);
                            R::present(&mut proto, &context);
                            converted.insert(id, mask.apply(proto)?);
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
        let context = context_loader::<R>(caller.clone());
        list_page(&self.db, plan, self.max_response_bytes, R::Table::list, id_of, context, move |stored, context| {
            let mut proto = R::into_proto(stored);
            R::present(&mut proto, context);
            mask.apply(proto)
        })
        .await
    }

    /// Creates, as the server itself (actor ""), those of `fields` whose id
    /// is not taken yet: `insert` skips taken ids, so calls racing on any
    /// replica create each once. Each created one gets its Change. Returns
    /// how many were created.
    pub async fn create_missing(
        &self,
        tenant: &str,
        fields: Vec<R::Fields>,
        insert: InsertMissing<R::Fields>,
    ) -> Result<usize> {
        let now = now_micros();
        let rows: Vec<Stored<R::Fields>> = fields
            .into_iter()
            .map(|fields| Stored { meta: Meta::new(tenant, R::new_key(&fields), "", now), fields })
            .collect();
        let feed = self.feed.clone();
        let created = self
            .db
            .write_and_then(
                move |c| {
                    Box::pin(async move {
                        let inserted = insert(c, &rows).await?;
                        let changes = inserted
                            .into_iter()
                            .map(|after| journal_entry::<R>(&Mutation::new(0, None, after, api::ChangeKind::Created)))
                            .collect::<Result<Vec<_>>>()?;
                        let count = changes.len();
                        Ok((store::change::append(c, &changes).await?, count))
                    })
                },
                move |(woken, _): &(Vec<String>, usize)| feed.committed(woken),
            )
            .await?;
        Ok(created.1)
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
                            let purged = R::Table::purge_expired(c, now, BATCH).await?;
                            let count = purged.len();
                            let changes: Vec<ChangeRow> = purged
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
                            Ok((store::change::append(c, &changes).await?, count))
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

/// A resource type whose soft-deleted resources are purged.
pub trait Purge: Send + Sync {
    /// Purges what is past its purge time; returns how many went.
    fn purge(&self) -> futures::future::BoxFuture<'_, Result<usize>>;
}

impl<R: Resource> Purge for Pipeline<R> {
    fn purge(&self) -> futures::future::BoxFuture<'_, Result<usize>> {
        Box::pin(self.purge_expired())
    }
}

/// Loads a resource's conversion context for `caller` in a transaction.
fn context_loader<R: Resource>(
    caller: Principal,
) -> impl for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, R::Context> + Send + 'static {
    move |c| Box::pin(async move { R::context(c, &caller).await })
}

/// The Change a mutation appends: its diff and the resource after it.
pub(crate) fn journal_entry<R: Resource>(mutation: &Mutation<R::Fields>) -> Result<ChangeRow> {
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
