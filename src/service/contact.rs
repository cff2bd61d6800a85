//! `agenda.v1.ContactService`: what is a contact's own (its conversions, its
//! queries, the external_id rule) declared as a [`Resource`]; every RPC runs
//! on the shared write path of [`super::resource`].

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::{
    resource::{Mutation, Pipeline, Resource, item_prefix},
    rich_text, timestamp,
};
use crate::{
    api::{self, contact_service_server::ContactService},
    auth::Principal,
    domain::{
        Check, Stored,
        contact::{Contact, ContactFields},
    },
    error::{Error, Result},
    query::ResourceSpec,
    store::{self, Conn, TxFuture},
};

/// The contact as a resource of the shared machinery.
pub struct ContactResource;

impl Resource for ContactResource {
    type Proto = api::Contact;
    type Fields = ContactFields;
    type Table = store::contact::ContactTable;
    type Context = ();

    const NAME: &'static str = store::contact::RESOURCE;
    const MESSAGE: &'static str = "agenda.v1.Contact";
    const FIELD: &'static str = "contact";
    const CREATE: &'static str = "CreateContact";
    const RESOURCE_TYPE: api::ResourceType = api::ResourceType::Contact;
    const SPEC: &'static ResourceSpec = &store::contact::SPEC;

    fn parse(check: &mut Check, proto: &api::Contact) -> ContactFields {
        ContactFields::parse(check, proto)
    }

    fn to_proto(stored: &Contact) -> api::Contact {
        to_proto(stored.clone())
    }

    fn into_proto(stored: Contact) -> api::Contact {
        to_proto(stored)
    }

    fn id_of(proto: &api::Contact) -> &str {
        &proto.id
    }

    fn etag_of(proto: &api::Contact) -> &str {
        &proto.etag
    }

    fn context<'a>(_conn: &'a mut Conn<'_>, _caller: &'a Principal) -> TxFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// No two contacts of one write may share an external_id; the error names
    /// the later item and the earlier one, by their index in the request.
    fn check_items(written: &[Mutation<ContactFields>], batch: bool) -> Result<()> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for Mutation { index: i, after: contact, .. } in written {
            if let Some(external_id) = live_external_id(contact)
                && let Some(first) = seen.insert(external_id, *i)
            {
                return Err(Error::Duplicate {
                    resource: Self::NAME,
                    field: format!("{}contact.external_id", item_prefix(batch, "requests", *i)),
                    message: format!("requests[{i}] and requests[{first}] have the same external_id {external_id:?}."),
                });
            }
        }
        Ok(())
    }

    /// The external ids the written contacts take must not be held by other
    /// live contacts; the error names the item.
    fn check_written<'a>(
        conn: &'a mut Conn<'_>,
        caller: &'a Principal,
        written: &'a [Mutation<ContactFields>],
        batch: bool,
    ) -> TxFuture<'a, ()> {
        let tenant = caller.tenant.as_str();
        Box::pin(async move {
            let wanted: Vec<String> =
                written.iter().filter_map(|m| live_external_id(&m.after).map(str::to_string)).collect();
            let own: Vec<String> = written.iter().map(|m| m.after.meta.id.clone()).collect();
            let taken = store::contact::external_ids_taken(conn, tenant, &wanted, &own).await?;
            if let Some((external_id, _)) = taken.first() {
                let index = written
                    .iter()
                    .find(|m| m.after.fields.external_id.as_deref() == Some(external_id))
                    .map_or(0, |m| m.index);
                return Err(Error::Duplicate {
                    resource: Self::NAME,
                    field: format!("{}contact.external_id", item_prefix(batch, "requests", index)),
                    message: format!(
                        "Another contact already has the external_id {external_id:?}: external ids are unique among the tenant's contacts."
                    ),
                });
            }
            Ok(())
        })
    }
}

/// The external_id a contact holds while it is not deleted.
fn live_external_id(contact: &Contact) -> Option<&str> {
    contact.fields.external_id.as_deref().filter(|_| contact.meta.delete_time.is_none())
}

/// A stored contact as the API returns it.
pub fn to_proto(contact: Contact) -> api::Contact {
    let Stored { meta: m, fields: f } = contact;
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
        notes: rich_text(&f.notes),
        custom_fields: f.custom_fields.to_struct(),
        revision: m.revision,
        create_time: Some(timestamp(m.create_time)),
        update_time: Some(timestamp(m.update_time)),
        delete_time: m.delete_time.map(timestamp),
        purge_time: m.purge_time.map(timestamp),
        created_by: m.created_by,
        updated_by: m.updated_by,
    }
}

/// The contact service.
#[derive(Clone)]
pub struct ContactApi {
    contacts: Pipeline<ContactResource>,
}

impl ContactApi {
    /// The service over the shared pipeline.
    pub fn new(contacts: Pipeline<ContactResource>) -> Self {
        ContactApi { contacts }
    }
}

crate::standard_requests!(api::Contact, contact, api::CreateContactRequest, api::UpdateContactRequest);

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl ContactService for ContactApi {
    async fn create_contact(&self, request: Request<api::CreateContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.contacts.create_one(&caller, request.into_inner()).await?))
    }

    async fn get_contact(&self, request: Request<api::GetContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        Ok(Response::new(self.contacts.get_one(&caller, request.id, request.read_mask.as_ref()).await?))
    }

    async fn list_contacts(&self, request: Request<api::ListContactsRequest>) -> Reply<api::ListContactsResponse> {
        let caller = Principal::of(&request)?;
        let mut request = request.into_inner();
        let params = crate::list_params!(request);
        let (contacts, next_page_token) = self.contacts.list_one(&caller, &params, request.read_mask.as_ref()).await?;
        Ok(Response::new(api::ListContactsResponse { contacts, next_page_token }))
    }

    async fn update_contact(&self, request: Request<api::UpdateContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.contacts.update_one(&caller, request.into_inner()).await?))
    }

    async fn delete_contact(&self, request: Request<api::DeleteContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        Ok(Response::new(self.contacts.delete_one(&caller, request.id, request.etag).await?))
    }

    async fn undelete_contact(&self, request: Request<api::UndeleteContactRequest>) -> Reply<api::Contact> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.contacts.undelete(&caller, &request.into_inner().id).await?))
    }

    async fn batch_get_contacts(
        &self,
        request: Request<api::BatchGetContactsRequest>,
    ) -> Reply<api::BatchGetContactsResponse> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        let contacts = self.contacts.get_batch(&caller, &request.ids, request.read_mask.as_ref()).await?;
        Ok(Response::new(api::BatchGetContactsResponse { contacts }))
    }

    async fn batch_create_contacts(
        &self,
        request: Request<api::BatchCreateContactsRequest>,
    ) -> Reply<api::BatchCreateContactsResponse> {
        let caller = Principal::of(&request)?;
        let contacts = self.contacts.create_batch(&caller, request.into_inner().requests).await?;
        Ok(Response::new(api::BatchCreateContactsResponse { contacts }))
    }

    async fn batch_update_contacts(
        &self,
        request: Request<api::BatchUpdateContactsRequest>,
    ) -> Reply<api::BatchUpdateContactsResponse> {
        let caller = Principal::of(&request)?;
        let contacts = self.contacts.update_batch(&caller, request.into_inner().requests).await?;
        Ok(Response::new(api::BatchUpdateContactsResponse { contacts }))
    }

    async fn batch_delete_contacts(
        &self,
        request: Request<api::BatchDeleteContactsRequest>,
    ) -> Reply<api::BatchDeleteContactsResponse> {
        let caller = Principal::of(&request)?;
        let contacts = self.contacts.delete_batch(&caller, request.into_inner().ids).await?;
        Ok(Response::new(api::BatchDeleteContactsResponse { contacts }))
    }
}
