//! Contact queries, written once for both backends.

use diesel::{ExpressionMethods, Insertable, OptionalExtension, QueryDsl, Queryable, Selectable, SelectableHelper};
use diesel_async::RunQueryDsl;

use super::{Conn, is_unique_violation, schema::contacts, sql_types::JsonText};
use crate::{
    dispatch,
    domain::{
        contact::{Contact, ContactFields},
        rich_text::RichText,
    },
    error::{Error, Result},
};

/// The resource name used in errors.
pub const RESOURCE: &str = "contact";

/// A row of `contacts`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = contacts, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
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

impl ContactRow {
    fn from_domain(contact: &Contact) -> Result<ContactRow> {
        let f = &contact.fields;
        let json =
            |v: serde_json::Result<String>| v.map_err(|e| Error::Internal(format!("encoding contact JSON: {e}")));
        Ok(ContactRow {
            tenant_id: contact.tenant.clone(),
            id: contact.id.clone(),
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
            custom_fields: JsonText(f.custom_fields.clone()),
            revision: contact.revision,
            create_time: contact.create_time,
            update_time: contact.update_time,
            delete_time: contact.delete_time,
            purge_time: contact.purge_time,
            created_by: contact.created_by.clone(),
            updated_by: contact.updated_by.clone(),
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
                custom_fields: self.custom_fields.0,
            },
            tenant: self.tenant_id,
            id: self.id,
            revision: self.revision,
            create_time: self.create_time,
            update_time: self.update_time,
            delete_time: self.delete_time,
            purge_time: self.purge_time,
            created_by: self.created_by,
            updated_by: self.updated_by,
        })
    }
}

fn duplicate_external_id(contact: &Contact) -> Error {
    Error::Duplicate {
        resource: RESOURCE,
        field: "external_id",
        message: format!(
            "Another contact already has the external_id {:?}: external ids are unique among the tenant's contacts.",
            contact.fields.external_id.as_deref().unwrap_or_default()
        ),
    }
}

/// Inserts a new contact.
pub async fn insert(conn: &mut Conn<'_>, contact: &Contact) -> Result<Contact> {
    let row = ContactRow::from_domain(contact)?;
    let inserted: std::result::Result<ContactRow, diesel::result::Error> = dispatch!(conn, |c| {
        diesel::insert_into(contacts::table).values(&row).returning(ContactRow::as_returning()).get_result(c).await
    });
    match inserted {
        Ok(row) => row.into_domain(),
        Err(e) if is_unique_violation(&e) => Err(duplicate_external_id(contact)),
        Err(e) => Err(e.into()),
    }
}

/// The contact `id` of `tenant`, deleted or not; `None` if it does not exist.
/// On PostgreSQL `lock` takes a row lock until the transaction ends (SQLite
/// has a single writer, so it needs none).
pub async fn find(conn: &mut Conn<'_>, tenant: &str, id: &str, lock: bool) -> Result<Option<Contact>> {
    let query = contacts::table.filter(contacts::tenant_id.eq(tenant)).filter(contacts::id.eq(id));
    let row: Option<ContactRow> = match conn {
        Conn::Pg(c) if lock => query.select(ContactRow::as_select()).for_update().first(&mut **c).await.optional()?,
        _ => dispatch!(conn, |c| query.select(ContactRow::as_select()).first(c).await.optional()?),
    };
    row.map(ContactRow::into_domain).transpose()
}

/// The contact `id` of `tenant`, or `NOT_FOUND`.
pub async fn get(conn: &mut Conn<'_>, tenant: &str, id: &str, lock: bool) -> Result<Contact> {
    find(conn, tenant, id, lock).await?.ok_or_else(|| Error::NotFound { resource: RESOURCE, id: id.to_string() })
}

/// Writes a changed contact over its previous revision (`revision - 1`).
pub async fn replace(conn: &mut Conn<'_>, contact: &Contact) -> Result<Contact> {
    let row = ContactRow::from_domain(contact)?;
    let previous = contact.revision - 1;
    let updated: std::result::Result<Option<ContactRow>, diesel::result::Error> = dispatch!(conn, |c| {
        diesel::update(
            contacts::table
                .filter(contacts::tenant_id.eq(&row.tenant_id))
                .filter(contacts::id.eq(&row.id))
                .filter(contacts::revision.eq(previous)),
        )
        .set((
            contacts::display_name.eq(&row.display_name),
            contacts::given_name.eq(&row.given_name),
            contacts::family_name.eq(&row.family_name),
            contacts::organization.eq(&row.organization),
            contacts::job_title.eq(&row.job_title),
            contacts::emails.eq(&row.emails),
            contacts::phones.eq(&row.phones),
            contacts::external_id.eq(&row.external_id),
            contacts::notes_format.eq(row.notes_format),
            contacts::notes_raw.eq(&row.notes_raw),
            contacts::notes_html.eq(&row.notes_html),
            contacts::custom_fields.eq(&row.custom_fields),
            contacts::revision.eq(row.revision),
            contacts::update_time.eq(row.update_time),
            contacts::delete_time.eq(row.delete_time),
            contacts::purge_time.eq(row.purge_time),
            contacts::updated_by.eq(&row.updated_by),
        ))
        .returning(ContactRow::as_returning())
        .get_result(c)
        .await
        .optional()
    });
    match updated {
        Ok(Some(row)) => row.into_domain(),
        Ok(None) => Err(Error::EtagMismatch { resource: RESOURCE, id: contact.id.clone() }),
        Err(e) if is_unique_violation(&e) => Err(duplicate_external_id(contact)),
        Err(e) => Err(e.into()),
    }
}

/// The contacts of `tenant` among `ids`, in one query; missing ones are left out.
pub async fn find_many(conn: &mut Conn<'_>, tenant: &str, ids: &[String]) -> Result<Vec<Contact>> {
    let rows: Vec<ContactRow> = dispatch!(conn, |c| {
        contacts::table
            .filter(contacts::tenant_id.eq(tenant))
            .filter(contacts::id.eq_any(ids))
            .select(ContactRow::as_select())
            .load(c)
            .await?
    });
    rows.into_iter().map(ContactRow::into_domain).collect()
}
