//! `agenda.v1.ContactService`: converts requests, runs the shared machinery
//! (masks, etags, request ids, lists, batches) and converts answers back.
//! Each single write is the batch of one, so both behave the same.

use std::{collections::HashMap, time::Duration};

use tonic::{Request, Response, Status};

use super::{Budget, ReadMask, UpdateMask, list_page, request_hash, timestamp};
use crate::{
    api::{self, contact_service_server::ContactService},
    auth::Principal,
    domain::{
        Check, Meta,
        contact::{Contact, ContactFields},
        custom_fields, new_id, parse_id, parse_request_id,
        rich_text::RichText,
    },
    error::{Error, Reason, Result},
    query::{ListParams, list},
    store::{
        self, Conn, Db,
        contact::RESOURCE,
        now_micros,
        request_id::{Claim, RequestKey},
    },
};

/// The resource message; its field behaviours come from the proto.
const MESSAGE: &str = "agenda.v1.Contact";
/// Most ids of a BatchGet.
const MAX_BATCH_GET: usize = 1000;
/// Most items of a batch write.
const MAX_BATCH_WRITE: usize = 500;

/// The contact service.
#[derive(Clone)]
pub struct ContactApi {
    db: Db,
    retention_micros: i64,
    max_response_bytes: usize,
}

/// Where a batch item's errors point: `requests[3].` in a batch, nothing for a single call.
fn item_prefix(batch: bool, list: &str, index: usize) -> String {
    if batch { format!("{list}[{index}].") } else { String::new() }
}

fn check_batch_size(count: usize, max: usize, field: &str) -> Result<()> {
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

impl ContactApi {
    /// A service on `db` that keeps soft-deleted contacts for `retention`
    /// and answers reads within `max_response_bytes`.
    pub fn new(db: Db, retention: Duration, max_response_bytes: usize) -> Self {
        ContactApi {
            db,
            retention_micros: i64::try_from(retention.as_micros()).unwrap_or(i64::MAX),
            max_response_bytes,
        }
    }

    /// Creates contacts, all or none; `batch` makes errors name `requests[i]`.
    async fn create_many(
        &self,
        caller: Principal,
        requests: Vec<api::CreateContactRequest>,
        batch: bool,
    ) -> Result<Vec<Contact>> {
        let now = now_micros();
        let mut contacts = Vec::with_capacity(requests.len());
        let mut keys: Vec<(usize, RequestKey)> = Vec::new();
        for (i, mut request) in requests.into_iter().enumerate() {
            let prefix = item_prefix(batch, "requests", i);
            let sent = request.contact.as_ref().ok_or_else(|| {
                Error::invalid(
                    format!("{prefix}contact"),
                    Reason::FieldRequired,
                    format!("{prefix}contact is required."),
                )
            })?;
            let mut check = Check::new(format!("{prefix}contact."));
            let fields = ContactFields::parse(&mut check, sent);
            let mut check_id = Check::new(prefix.clone());
            let request_id = parse_request_id(&mut check_id, "request_id", &request.request_id);
            let fields = check.finish(fields)?;
            check_id.finish(())?;
            let contact = Contact { meta: Meta::new(&caller.tenant, new_id(), &caller.subject, now), fields };
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
                request.request_id.clear();
                let request_hash = request_hash("CreateContact", &request);
                keys.push((i, RequestKey { request_id, request_hash, resource_id: contact.meta.id.clone() }));
            }
            contacts.push(contact);
        }
        let indexed: Vec<(usize, Contact)> = contacts.iter().cloned().enumerate().collect();
        check_external_ids_unique(&indexed, batch)?;
        let tenant = caller.tenant;
        self.db
            .write(move |c| {
                Box::pin(async move {
                    let request_keys: Vec<RequestKey> = keys.iter().map(|(_, k)| k.clone()).collect();
                    let claims = store::request_id::claim_many(c, &tenant, "CreateContact", &request_keys, now).await?;
                    let mut replayed: HashMap<usize, String> = HashMap::new();
                    for ((i, _), claim) in keys.iter().zip(claims) {
                        if let Claim::Replay(id) = claim {
                            replayed.insert(*i, id);
                        }
                    }
                    let new: Vec<(usize, Contact)> =
                        indexed.into_iter().filter(|(i, _)| !replayed.contains_key(i)).collect();
                    check_external_ids_free(c, &tenant, &new, batch).await?;
                    let new: Vec<Contact> = new.into_iter().map(|(_, contact)| contact).collect();
                    store::contact::insert_many(c, &new).await?;
                    let replay_ids: Vec<String> = replayed.values().cloned().collect();
                    let earlier = store::contact::find_many(c, &tenant, &replay_ids, false).await?;
                    contacts
                        .into_iter()
                        .enumerate()
                        .map(|(i, contact)| match replayed.get(&i) {
                            None => Ok(contact),
                            Some(id) => earlier
                                .iter()
                                .find(|e| e.meta.id == *id)
                                .cloned()
                                .ok_or_else(|| Error::not_found(RESOURCE, id.clone())),
                        })
                        .collect()
                })
            })
            .await
    }

    /// Updates (or, with allow_missing, creates) contacts, all or none.
    async fn update_many(
        &self,
        caller: Principal,
        requests: Vec<api::UpdateContactRequest>,
        batch: bool,
    ) -> Result<Vec<Contact>> {
        let mut items = Vec::with_capacity(requests.len());
        for (i, request) in requests.into_iter().enumerate() {
            let prefix = item_prefix(batch, "requests", i);
            let sent = request.contact.ok_or_else(|| {
                Error::invalid(
                    format!("{prefix}contact"),
                    Reason::FieldRequired,
                    format!("{prefix}contact is required."),
                )
            })?;
            let id = match parse_id(&sent.id) {
                Some(id) => id,
                None if request.allow_missing || sent.id.trim().is_empty() => {
                    return Err(Error::invalid(
                        format!("{prefix}contact.id"),
                        Reason::FieldInvalid,
                        format!("{prefix}contact.id must be the UUID of the contact to update."),
                    ));
                }
                None => {
                    return Err(Error::NotFound {
                        resource: RESOURCE,
                        id: sent.id.clone(),
                        field: Some("contact.id".into()),
                    }
                    .prefixed(&prefix));
                }
            };
            if let Some(comment) = &request.comment {
                let mut check = Check::new(prefix.clone());
                RichText::parse(&mut check, "comment", comment.format, &comment.raw);
                check.finish(())?;
            }
            let mask = UpdateMask::parse(MESSAGE, request.update_mask.as_ref()).map_err(|e| e.prefixed(&prefix))?;
            if let Some(first) =
                items.iter().position(|(_, other, ..): &(String, String, api::Contact, UpdateMask, bool)| *other == id)
            {
                return Err(Error::invalid(
                    format!("{prefix}contact.id"),
                    Reason::FieldInvalid,
                    format!("{prefix}contact.id repeats requests[{first}]; update each contact once per batch."),
                ));
            }
            items.push((prefix, id, sent, mask, request.allow_missing));
        }
        self.db
            .write(move |c| {
                Box::pin(async move {
                    let now = now_micros();
                    let ids: Vec<String> = items.iter().map(|(_, id, ..)| id.clone()).collect();
                    let current: HashMap<String, Contact> = store::contact::find_many(c, &caller.tenant, &ids, true)
                        .await?
                        .into_iter()
                        .map(|contact| (contact.meta.id.clone(), contact))
                        .collect();
                    let mut results = Vec::with_capacity(items.len());
                    let mut changed: Vec<(usize, Contact)> = Vec::new();
                    for (index, (prefix, id, sent, mask, allow_missing)) in items.iter().enumerate() {
                        let (base, meta) = match current.get(id) {
                            Some(existing) => {
                                existing.meta.check_etag(RESOURCE, &sent.etag)?;
                                (to_proto(existing.clone()), existing.meta.next(&caller.subject, now))
                            }
                            None if *allow_missing => {
                                (api::Contact::default(), Meta::new(&caller.tenant, id.clone(), &caller.subject, now))
                            }
                            None => {
                                return Err(Error::NotFound {
                                    resource: RESOURCE,
                                    id: id.clone(),
                                    field: Some("contact.id".into()),
                                }
                                .prefixed(prefix));
                            }
                        };
                        let creating = !current.contains_key(id);
                        let merged = mask.merge(&base, sent, creating).map_err(|e| e.prefixed(prefix))?;
                        let mut check = Check::new(format!("{prefix}contact."));
                        let fields = ContactFields::parse(&mut check, &merged);
                        let fields = check.finish(fields)?;
                        match current.get(id) {
                            Some(existing) if existing.fields == fields => results.push(existing.clone()),
                            _ => {
                                let contact = Contact { meta, fields };
                                changed.push((index, contact.clone()));
                                results.push(contact);
                            }
                        }
                    }
                    check_external_ids_unique(&changed, batch)?;
                    check_external_ids_free(c, &caller.tenant, &changed, batch).await?;
                    // A contact that did not exist is inserted, never upserted: of
                    // concurrent upserts of one new id exactly one creates it, and
                    // the others fail on its key (ABORTED) instead of overwriting it.
                    let (created, updated): (Vec<Contact>, Vec<Contact>) = changed
                        .into_iter()
                        .map(|(_, contact)| contact)
                        .partition(|contact| !current.contains_key(&contact.meta.id));
                    store::contact::insert_many(c, &created).await?;
                    store::contact::write_many(c, &updated).await?;
                    Ok(results)
                })
            })
            .await
    }

    /// Soft-deletes contacts, all or none; each with an optional etag.
    async fn delete_many(&self, caller: Principal, items: Vec<(String, String)>, batch: bool) -> Result<Vec<Contact>> {
        let mut ids = Vec::with_capacity(items.len());
        for (i, (raw, _)) in items.iter().enumerate() {
            let field = if batch { Some(format!("ids[{i}]")) } else { None };
            let id = parse_id(raw).ok_or_else(|| Error::NotFound {
                resource: RESOURCE,
                id: raw.clone(),
                field: field.clone(),
            })?;
            if let Some(first) = ids.iter().position(|other| *other == id) {
                return Err(Error::invalid(
                    format!("ids[{i}]"),
                    Reason::FieldInvalid,
                    format!("ids[{i}] repeats ids[{first}]; name each contact once."),
                ));
            }
            ids.push(id);
        }
        let retention = self.retention_micros;
        self.db
            .write(move |c| {
                Box::pin(async move {
                    let now = now_micros();
                    let current = store::contact::find_many(c, &caller.tenant, &ids, true).await?;
                    let mut results = Vec::with_capacity(ids.len());
                    let mut changed = Vec::new();
                    for (i, (id, (raw, etag))) in ids.iter().zip(&items).enumerate() {
                        let existing = current.iter().find(|c| c.meta.id == *id).ok_or_else(|| Error::NotFound {
                            resource: RESOURCE,
                            id: raw.clone(),
                            field: batch.then(|| format!("ids[{i}]")),
                        })?;
                        existing.meta.check_etag(RESOURCE, etag)?;
                        match existing.meta.deleted(&caller.subject, now, retention) {
                            Some(meta) => {
                                let contact = Contact { meta, fields: existing.fields.clone() };
                                changed.push(contact.clone());
                                results.push(contact);
                            }
                            None => results.push(existing.clone()),
                        }
                    }
                    store::contact::write_many(c, &changed).await?;
                    Ok(results)
                })
            })
            .await
    }

    async fn undelete(&self, caller: Principal, raw: &str) -> Result<Contact> {
        let id = parse_id(raw).ok_or_else(|| Error::not_found(RESOURCE, raw))?;
        let raw = raw.to_string();
        self.db
            .write(move |c| {
                Box::pin(async move {
                    let current = store::contact::find_many(c, &caller.tenant, std::slice::from_ref(&id), true).await?;
                    let existing = current.into_iter().next().ok_or_else(|| Error::not_found(RESOURCE, raw))?;
                    let meta = existing.meta.undeleted(RESOURCE, &caller.subject, now_micros())?;
                    let restored = Contact { meta, fields: existing.fields };
                    store::contact::write_many(c, std::slice::from_ref(&restored)).await?;
                    Ok(restored)
                })
            })
            .await
    }

    /// Contacts by id, in the order asked, masked and held to the response
    /// budget; `NOT_FOUND` names the first missing one. An id asked for
    /// again is answered again at its position, but read and converted once,
    /// and every position counts against the budget.
    async fn get_many(
        &self,
        caller: &Principal,
        ids: &[String],
        mask: ReadMask,
        batch: bool,
    ) -> Result<Vec<api::Contact>> {
        let field = move |i: usize| batch.then(|| format!("ids[{i}]"));
        let parsed = ids
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                parse_id(raw).ok_or_else(|| Error::NotFound { resource: RESOURCE, id: raw.clone(), field: field(i) })
            })
            .collect::<Result<Vec<_>>>()?;
        let tenant = caller.tenant.clone();
        let limit = self.max_response_bytes;
        let raw_ids = ids.to_vec();
        self.db
            .read(move |c| {
                Box::pin(async move {
                    let mut budget = Budget::new(limit);
                    let mut answer = Vec::with_capacity(parsed.len());
                    // Converted contacts; each is in the answer, so the budget bounds them.
                    let mut converted: HashMap<String, api::Contact> = HashMap::new();
                    for (chunk_index, chunk) in parsed.chunks(super::CHUNK_ROWS).enumerate() {
                        let mut wanted: Vec<String> =
                            chunk.iter().filter(|id| !converted.contains_key(*id)).cloned().collect();
                        wanted.sort();
                        wanted.dedup();
                        for contact in store::contact::find_many(c, &tenant, &wanted, false).await? {
                            converted.insert(contact.meta.id.clone(), mask.apply(to_proto(contact))?);
                        }
                        for (offset, id) in chunk.iter().enumerate() {
                            let i = chunk_index * super::CHUNK_ROWS + offset;
                            let message = converted.get(id).ok_or_else(|| Error::NotFound {
                                resource: RESOURCE,
                                id: raw_ids[i].clone(),
                                field: field(i),
                            })?;
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

    /// One page of contacts, masked and held to the response budget.
    async fn list(
        &self,
        caller: &Principal,
        params: &ListParams,
        mask: ReadMask,
    ) -> Result<(Vec<api::Contact>, String)> {
        let plan = list::plan(&store::contact::SPEC, &caller.tenant, params, self.db.is_pg())?;
        fn load<'a>(c: &'a mut Conn<'_>, sql: &'a crate::query::spec::Sql) -> store::TxFuture<'a, Vec<Contact>> {
            Box::pin(store::contact::list(c, sql))
        }
        list_page(
            &self.db,
            plan,
            self.max_response_bytes,
            load,
            |c: &Contact| c.meta.id.as_str(),
            move |c| mask.apply(to_proto(c)),
        )
        .await
    }
}

/// No two contacts of one write may share an external_id; the error names
/// the later item and the earlier one, by their index in the request.
fn check_external_ids_unique(contacts: &[(usize, Contact)], batch: bool) -> Result<()> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, contact) in contacts {
        if let Some(external_id) = contact.fields.external_id.as_deref().filter(|_| contact.meta.delete_time.is_none())
            && let Some(first) = seen.insert(external_id, *i)
        {
            return Err(Error::Duplicate {
                resource: RESOURCE,
                field: format!("{}contact.external_id", item_prefix(batch, "requests", *i)),
                message: format!("requests[{i}] and requests[{first}] have the same external_id {external_id:?}."),
            });
        }
    }
    Ok(())
}

/// The external ids the `written` contacts take (with their index in the
/// request) must not be held by other live contacts; the error names the item.
async fn check_external_ids_free(
    c: &mut Conn<'_>,
    tenant: &str,
    written: &[(usize, Contact)],
    batch: bool,
) -> Result<()> {
    let wanted: Vec<String> = written
        .iter()
        .filter(|(_, c)| c.meta.delete_time.is_none())
        .filter_map(|(_, c)| c.fields.external_id.clone())
        .collect();
    let own: Vec<String> = written.iter().map(|(_, c)| c.meta.id.clone()).collect();
    let taken = store::contact::external_ids_taken(c, tenant, &wanted, &own).await?;
    if let Some((external_id, _)) = taken.first() {
        let index =
            written.iter().find(|(_, c)| c.fields.external_id.as_deref() == Some(external_id)).map_or(0, |(i, _)| *i);
        return Err(Error::Duplicate {
            resource: RESOURCE,
            field: format!("{}contact.external_id", item_prefix(batch, "requests", index)),
            message: format!(
                "Another contact already has the external_id {external_id:?}: external ids are unique among the tenant's contacts."
            ),
        });
    }
    Ok(())
}

/// A stored contact as the API returns it.
pub fn to_proto(contact: Contact) -> api::Contact {
    let (m, f) = (contact.meta, contact.fields);
    api::Contact {
        etag: m.etag(),
        id: m.id,
        display_name: f.display_name,
        given_name: f.given_name,
        family_name: f.family_name,
        organization: f.organization,
        job_title: f.job_title,
        emails: f
            .emails
            .into_iter()
            .map(|e| api::EmailAddress { address: e.address, label: e.label, primary: e.primary })
            .collect(),
        phones: f.phones.into_iter().map(|p| api::PhoneNumber { number: p.number, label: p.label }).collect(),
        external_id: f.external_id.unwrap_or_default(),
        notes: (!f.notes.raw.is_empty()).then_some(api::RichText {
            format: f.notes.format as i32,
            raw: f.notes.raw,
            html: f.notes.html,
        }),
        custom_fields: custom_fields::to_struct(&f.custom_fields),
        revision: m.revision,
        create_time: Some(timestamp(m.create_time)),
        update_time: Some(timestamp(m.update_time)),
        delete_time: m.delete_time.map(timestamp),
        purge_time: m.purge_time.map(timestamp),
        created_by: m.created_by,
        updated_by: m.updated_by,
    }
}

fn single(mut contacts: Vec<Contact>) -> Result<api::Contact> {
    contacts.pop().map(to_proto).ok_or_else(|| Error::Internal("a single write returned nothing".into()))
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl ContactService for ContactApi {
    async fn create_contact(&self, request: Request<api::CreateContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(single(self.create_many(caller, vec![request.into_inner()], false).await?)?))
    }

    async fn get_contact(&self, request: Request<api::GetContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        let mask = ReadMask::parse(MESSAGE, request.read_mask.as_ref())?;
        let mut contacts = self.get_many(&caller, std::slice::from_ref(&request.id), mask, false).await?;
        let contact = contacts.pop().ok_or_else(|| Error::Internal("a single read returned nothing".into()))?;
        Ok(Response::new(contact))
    }

    async fn list_contacts(&self, request: Request<api::ListContactsRequest>) -> Reply<api::ListContactsResponse> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        let params = ListParams {
            page_size: request.page_size,
            page_token: request.page_token,
            filter: request.filter,
            order_by: request.order_by,
            show_deleted: request.show_deleted,
        };
        let mask = ReadMask::parse(MESSAGE, request.read_mask.as_ref())?;
        let (contacts, next_page_token) = self.list(&caller, &params, mask).await?;
        Ok(Response::new(api::ListContactsResponse { contacts, next_page_token }))
    }

    async fn update_contact(&self, request: Request<api::UpdateContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(single(self.update_many(caller, vec![request.into_inner()], false).await?)?))
    }

    async fn delete_contact(&self, request: Request<api::DeleteContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        Ok(Response::new(single(self.delete_many(caller, vec![(request.id, request.etag)], false).await?)?))
    }

    async fn undelete_contact(&self, request: Request<api::UndeleteContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(to_proto(self.undelete(caller, &request.into_inner().id).await?)))
    }

    async fn batch_get_contacts(
        &self,
        request: Request<api::BatchGetContactsRequest>,
    ) -> Reply<api::BatchGetContactsResponse> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        check_batch_size(request.ids.len(), MAX_BATCH_GET, "ids")?;
        let mask = ReadMask::parse(MESSAGE, request.read_mask.as_ref())?;
        let contacts = self.get_many(&caller, &request.ids, mask, true).await?;
        Ok(Response::new(api::BatchGetContactsResponse { contacts }))
    }

    async fn batch_create_contacts(
        &self,
        request: Request<api::BatchCreateContactsRequest>,
    ) -> Reply<api::BatchCreateContactsResponse> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        check_batch_size(request.requests.len(), MAX_BATCH_WRITE, "requests")?;
        let contacts = self.create_many(caller, request.requests, true).await?;
        Ok(Response::new(api::BatchCreateContactsResponse { contacts: contacts.into_iter().map(to_proto).collect() }))
    }

    async fn batch_update_contacts(
        &self,
        request: Request<api::BatchUpdateContactsRequest>,
    ) -> Reply<api::BatchUpdateContactsResponse> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        check_batch_size(request.requests.len(), MAX_BATCH_WRITE, "requests")?;
        let contacts = self.update_many(caller, request.requests, true).await?;
        Ok(Response::new(api::BatchUpdateContactsResponse { contacts: contacts.into_iter().map(to_proto).collect() }))
    }

    async fn batch_delete_contacts(
        &self,
        request: Request<api::BatchDeleteContactsRequest>,
    ) -> Reply<api::BatchDeleteContactsResponse> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        check_batch_size(request.ids.len(), MAX_BATCH_WRITE, "ids")?;
        let items = request.ids.into_iter().map(|id| (id, String::new())).collect();
        let contacts = self.delete_many(caller, items, true).await?;
        Ok(Response::new(api::BatchDeleteContactsResponse { contacts: contacts.into_iter().map(to_proto).collect() }))
    }
}
