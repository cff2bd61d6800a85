//! `agenda.v1.ContactService`.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use super::{apply_read_mask, request_hash, timestamp};
use crate::{
    api::{self, contact_service_server::ContactService},
    auth::Principal,
    domain::{
        Check,
        contact::{Contact, ContactFields},
        custom_fields, etag, new_id, parse_id, parse_request_id,
    },
    error::{Error, Reason, Result},
    store::{
        self, Db, now_micros,
        request_id::{Claim, RequestKey},
    },
};

const MESSAGE: &str = "agenda.v1.Contact";
/// Most ids of a BatchGet.
const MAX_BATCH_GET: usize = 1000;

/// The contact service.
#[derive(Clone)]
pub struct ContactApi {
    db: Db,
    retention: Arc<Duration>,
}

impl ContactApi {
    /// A service on `db` that keeps soft-deleted contacts for `retention`.
    pub fn new(db: Db, retention: Duration) -> Self {
        ContactApi { db, retention: Arc::new(retention) }
    }

    async fn create(&self, caller: Principal, mut request: api::CreateContactRequest) -> Result<Contact> {
        let contact = request
            .contact
            .as_ref()
            .ok_or_else(|| Error::invalid("contact", Reason::FieldRequired, "contact is required."))?;
        let mut check = Check::new("contact.");
        let fields = ContactFields::parse(&mut check, contact);
        let mut check_id = Check::new("");
        let request_id = parse_request_id(&mut check_id, "request_id", &request.request_id);
        let fields = check.finish(fields)?;
        check_id.finish(())?;

        request.request_id.clear();
        let hash = request_hash("CreateContact", &request);
        let now = now_micros();
        let contact = Contact {
            tenant: caller.tenant.clone(),
            id: new_id(),
            fields,
            revision: 1,
            create_time: now,
            update_time: now,
            delete_time: None,
            purge_time: None,
            created_by: caller.subject.clone(),
            updated_by: caller.subject,
        };
        self.db
            .write(move |c| {
                Box::pin(async move {
                    if let Some(request_id) = &request_id {
                        let key = RequestKey {
                            tenant: &contact.tenant,
                            request_id,
                            operation: "CreateContact",
                            request_hash: &hash,
                        };
                        if let Claim::Replay(existing) = store::request_id::claim(c, &key, &contact.id, now).await? {
                            return store::contact::get(c, &contact.tenant, &existing, false).await;
                        }
                    }
                    store::contact::insert(c, &contact).await
                })
            })
            .await
    }

    async fn get(&self, caller: &Principal, id: &str) -> Result<Contact> {
        let id = parse_id(id).ok_or_else(|| not_found(id))?;
        let mut pooled = self.db.read().await?;
        store::contact::get(&mut pooled.conn(), &caller.tenant, &id, false).await
    }

    async fn delete(&self, caller: Principal, id: &str, expected_etag: String) -> Result<Contact> {
        let id = parse_id(id).ok_or_else(|| not_found(id))?;
        let retention = i64::try_from(self.retention.as_micros()).unwrap_or(i64::MAX);
        self.db
            .write(move |c| {
                Box::pin(async move {
                    let current = store::contact::get(c, &caller.tenant, &id, true).await?;
                    check_etag(&current, &expected_etag)?;
                    if current.delete_time.is_some() {
                        return Ok(current);
                    }
                    let now = now_micros();
                    let deleted = Contact {
                        revision: current.revision + 1,
                        update_time: now,
                        delete_time: Some(now),
                        purge_time: Some(now.saturating_add(retention)),
                        updated_by: caller.subject,
                        ..current
                    };
                    store::contact::replace(c, &deleted).await
                })
            })
            .await
    }

    async fn undelete(&self, caller: Principal, id: &str) -> Result<Contact> {
        let id = parse_id(id).ok_or_else(|| not_found(id))?;
        self.db
            .write(move |c| {
                Box::pin(async move {
                    let current = store::contact::get(c, &caller.tenant, &id, true).await?;
                    if current.delete_time.is_none() {
                        return Err(Error::FailedPrecondition {
                            reason: Reason::NotDeleted,
                            subject: format!("contact/{id}"),
                            message: format!("The contact {id:?} is not deleted, so it cannot be undeleted."),
                        });
                    }
                    let restored = Contact {
                        revision: current.revision + 1,
                        update_time: now_micros(),
                        delete_time: None,
                        purge_time: None,
                        updated_by: caller.subject,
                        ..current
                    };
                    store::contact::replace(c, &restored).await
                })
            })
            .await
    }

    async fn batch_get(&self, caller: &Principal, ids: &[String]) -> Result<Vec<Contact>> {
        if ids.is_empty() {
            return Err(Error::invalid("ids", Reason::FieldRequired, "ids must name at least one contact."));
        }
        if ids.len() > MAX_BATCH_GET {
            return Err(Error::invalid(
                "ids",
                Reason::TooMany,
                format!("ids names {} contacts; at most {MAX_BATCH_GET} are allowed.", ids.len()),
            ));
        }
        let parsed = ids.iter().map(|raw| parse_id(raw).ok_or_else(|| not_found(raw))).collect::<Result<Vec<_>>>()?;
        let mut unique = parsed.clone();
        unique.sort();
        unique.dedup();
        let mut pooled = self.db.read().await?;
        let found = store::contact::find_many(&mut pooled.conn(), &caller.tenant, &unique).await?;
        let by_id: std::collections::HashMap<&str, &Contact> = found.iter().map(|c| (c.id.as_str(), c)).collect();
        parsed
            .iter()
            .zip(ids)
            .map(|(id, raw)| by_id.get(id.as_str()).map(|c| (*c).clone()).ok_or_else(|| not_found(raw)))
            .collect()
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound { resource: store::contact::RESOURCE, id: id.to_string() }
}

fn check_etag(current: &Contact, expected: &str) -> Result<()> {
    if !expected.is_empty() && expected != etag(&current.id, current.revision) {
        return Err(Error::EtagMismatch { resource: store::contact::RESOURCE, id: current.id.clone() });
    }
    Ok(())
}

/// A stored contact as the API returns it.
pub fn to_proto(contact: Contact) -> api::Contact {
    let f = contact.fields;
    api::Contact {
        etag: etag(&contact.id, contact.revision),
        id: contact.id,
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
        revision: contact.revision,
        create_time: Some(timestamp(contact.create_time)),
        update_time: Some(timestamp(contact.update_time)),
        delete_time: contact.delete_time.map(timestamp),
        purge_time: contact.purge_time.map(timestamp),
        created_by: contact.created_by,
        updated_by: contact.updated_by,
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl ContactService for ContactApi {
    async fn create_contact(&self, request: Request<api::CreateContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(to_proto(self.create(caller, request.into_inner()).await?)))
    }

    async fn get_contact(&self, request: Request<api::GetContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        let contact = to_proto(self.get(&caller, &request.id).await?);
        Ok(Response::new(apply_read_mask(contact, MESSAGE, request.read_mask.as_ref())?))
    }

    async fn list_contacts(&self, _: Request<api::ListContactsRequest>) -> Reply<api::ListContactsResponse> {
        Err(Error::NotServedYet("ListContacts").into())
    }

    async fn update_contact(&self, _: Request<api::UpdateContactRequest>) -> Reply<api::Contact> {
        Err(Error::NotServedYet("UpdateContact").into())
    }

    async fn delete_contact(&self, request: Request<api::DeleteContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        Ok(Response::new(to_proto(self.delete(caller, &request.id, request.etag).await?)))
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
        let contacts = self.batch_get(&caller, &request.ids).await?;
        let contacts = contacts
            .into_iter()
            .map(|c| apply_read_mask(to_proto(c), MESSAGE, request.read_mask.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::new(api::BatchGetContactsResponse { contacts }))
    }

    async fn batch_create_contacts(
        &self,
        _: Request<api::BatchCreateContactsRequest>,
    ) -> Reply<api::BatchCreateContactsResponse> {
        Err(Error::NotServedYet("BatchCreateContacts").into())
    }

    async fn batch_update_contacts(
        &self,
        _: Request<api::BatchUpdateContactsRequest>,
    ) -> Reply<api::BatchUpdateContactsResponse> {
        Err(Error::NotServedYet("BatchUpdateContacts").into())
    }

    async fn batch_delete_contacts(
        &self,
        _: Request<api::BatchDeleteContactsRequest>,
    ) -> Reply<api::BatchDeleteContactsResponse> {
        Err(Error::NotServedYet("BatchDeleteContacts").into())
    }
}
