//! Contact queries, written once for both backends.

use diesel::{ExpressionMethods, Insertable, QueryDsl, Queryable, QueryableByName, Selectable};
use diesel_async::RunQueryDsl;

use super::{
    Conn,
    schema::contacts,
    sql_types::JsonText,
    table::{Row, id_taken},
    unique_violation,
};
use crate::{
    dispatch,
    domain::{
        contact::{Contact, ContactFields},
        custom_fields::CustomFields,
        rich_text::RichText,
    },
    error::{Error, Result},
    query::{FieldKind, FieldSpec, ResourceSpec},
};

/// The resource name used in errors.
pub const RESOURCE: &str = "contact";

/// What callers may filter and order contacts by (docs/contacts.md).
pub const SPEC: ResourceSpec = ResourceSpec {
    table: "contacts",
    fields: &[
        FieldSpec {
            name: "display_name",
            column: "display_name",
            kind: FieldKind::Text { nullable: false },
            orderable: true,
        },
        FieldSpec {
            name: "organization",
            column: "organization",
            kind: FieldKind::Text { nullable: false },
            orderable: true,
        },
        FieldSpec {
            name: "external_id",
            column: "external_id",
            kind: FieldKind::Text { nullable: true },
            orderable: true,
        },
        FieldSpec {
            name: "emails.address",
            column: "emails",
            kind: FieldKind::RepeatedKey { key: "address", lookup: None },
            orderable: false,
        },
        FieldSpec { name: "create_time", column: "create_time", kind: FieldKind::Timestamp, orderable: true },
        FieldSpec { name: "update_time", column: "update_time", kind: FieldKind::Timestamp, orderable: true },
        FieldSpec { name: "custom_fields", column: "custom_fields", kind: FieldKind::Custom, orderable: true },
    ],
    default_order: "display_name",
    scope: None,
};

/// A row of `contacts`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = contacts, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
#[diesel(treat_none_as_default_value = false)]
pub struct ContactRow {
    tenant_id: String,
    id: String,
    display_name: String,
    given_name: String,
    family_name: String,
    organization: String,
    job_title: String,
    emails: JsonText,
    phones: JsonText,
    external_id: Option<String>,
    notes_format: i32,
    notes_raw: String,
    notes_html: String,
    custom_fields: JsonText,
    revision: i64,
    create_time: i64,
    update_time: i64,
    delete_time: Option<i64>,
    purge_time: Option<i64>,
    created_by: String,
    updated_by: String,
}

impl Row for ContactRow {
    type Fields = ContactFields;

    fn from_domain(contact: &Contact) -> Result<ContactRow> {
        let (m, f) = (&contact.meta, &contact.fields);
        let json =
            |v: serde_json::Result<String>| v.map_err(|e| Error::Internal(format!("encoding contact JSON: {e}")));
        Ok(ContactRow {
            tenant_id: m.tenant.clone(),
            id: m.id.clone(),
            display_name: f.display_name.clone(),
            given_name: f.given_name.clone(),
            family_name: f.family_name.clone(),
            organization: f.organization.clone(),
            job_title: f.job_title.clone(),
            emails: JsonText(json(serde_json::to_string(&f.emails))?),
            phones: JsonText(json(serde_json::to_string(&f.phones))?),
            external_id: f.external_id.clone(),
            notes_format: f.notes.format as i32,
            notes_raw: f.notes.raw.clone(),
            notes_html: f.notes.html.clone(),
            custom_fields: JsonText(f.custom_fields.as_str().to_string()),
            revision: m.revision,
            create_time: m.create_time,
            update_time: m.update_time,
            delete_time: m.delete_time,
            purge_time: m.purge_time,
            created_by: m.created_by.clone(),
            updated_by: m.updated_by.clone(),
        })
    }

    fn into_domain(self) -> Result<Contact> {
        let json = |what: &str, e: serde_json::Error| Error::Internal(format!("decoding stored contact {what}: {e}"));
        Ok(Contact {
            fields: ContactFields {
                display_name: self.display_name,
                given_name: self.given_name,
                family_name: self.family_name,
                organization: self.organization,
                job_title: self.job_title,
                emails: serde_json::from_str(&self.emails.0).map_err(|e| json("emails", e))?,
                phones: serde_json::from_str(&self.phones.0).map_err(|e| json("phones", e))?,
                external_id: self.external_id,
                notes: RichText::stored(self.notes_format, self.notes_raw, self.notes_html),
                custom_fields: CustomFields::stored(self.custom_fields.0),
            },
            meta: crate::meta_of_row!(self),
        })
    }
}

/// Maps a unique violation to what the caller did: a taken external_id is
/// `DUPLICATE`; a taken id is `ABORTED ETAG_MISMATCH`. The id case is two
/// upserts of one new caller-chosen id racing: neither found a row to lock,
/// both insert, and PostgreSQL makes the second wait for the first and then
/// refuses it on the primary key, so the loser reads the contact and retries
/// on top of it. Anything else is classified as every database error is.
fn write_error(error: diesel::result::Error, contacts: &[Contact]) -> Error {
    match unique_violation(&error) {
        Some(message) if message.contains("external_id") => Error::Duplicate {
            resource: RESOURCE,
            field: "contact.external_id".to_string(),
            message:
                "Another contact already has this external_id: external ids are unique among the tenant's contacts."
                    .to_string(),
        },
        _ => id_taken(RESOURCE, error, contacts),
    }
}

crate::resource_table! {
    queries: ContactTable,
    table: contacts,
    row: ContactRow,
    fields: ContactFields,
    write_error: write_error,
    update: [
        display_name, given_name, family_name, organization, job_title, emails, phones, external_id,
        notes_format, notes_raw, notes_html, custom_fields, revision, update_time, delete_time, purge_time,
        updated_by,
    ],
}

/// Which of `external_ids` live (undeleted) contacts of `tenant` other than
/// `except` already hold: (external_id, holder id).
pub async fn external_ids_taken(
    conn: &mut Conn<'_>,
    tenant: &str,
    external_ids: &[String],
    except: &[String],
) -> Result<Vec<(String, String)>> {
    if external_ids.is_empty() {
        return Ok(Vec::new());
    }
    let taken: Vec<(Option<String>, String)> = dispatch!(conn, |c| {
        contacts::table
            .filter(contacts::tenant_id.eq(tenant))
            .filter(contacts::delete_time.is_null())
            .filter(contacts::external_id.eq_any(external_ids))
            .filter(contacts::id.ne_all(except))
            .select((contacts::external_id, contacts::id))
            .load(c)
            .await?
    });
    Ok(taken.into_iter().filter_map(|(e, id)| e.map(|e| (e, id))).collect())
}
