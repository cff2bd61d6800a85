//! Contact queries, written once for both backends.

use diesel::{
    ExpressionMethods, Insertable, QueryDsl, Queryable, QueryableByName, Selectable, SelectableHelper, upsert::excluded,
};
use diesel_async::RunQueryDsl;

use super::{Conn, schema::contacts, sql_types::JsonText, unique_violation};
use crate::load_sql;
use crate::{
    dispatch,
    domain::{
        Meta,
        contact::{Contact, ContactFields},
        rich_text::RichText,
    },
    error::{Error, Result},
    query::{FieldKind, FieldSpec, ResourceSpec, spec::Sql},
    service::resource::Purged,
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
            kind: FieldKind::RepeatedKey { key: "address" },
            orderable: false,
        },
        FieldSpec { name: "create_time", column: "create_time", kind: FieldKind::Timestamp, orderable: true },
        FieldSpec { name: "update_time", column: "update_time", kind: FieldKind::Timestamp, orderable: true },
        FieldSpec { name: "custom_fields", column: "custom_fields", kind: FieldKind::Custom, orderable: true },
    ],
    default_order: "display_name",
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

impl ContactRow {
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
            custom_fields: JsonText(f.custom_fields.clone()),
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
                custom_fields: canonical_json(&self.custom_fields.0).map_err(|e| json("custom_fields", e))?,
            },
            meta: Meta {
                tenant: self.tenant_id,
                id: self.id,
                revision: self.revision,
                create_time: self.create_time,
                update_time: self.update_time,
                delete_time: self.delete_time,
                purge_time: self.purge_time,
                created_by: self.created_by,
                updated_by: self.updated_by,
            },
        })
    }
}

/// JSON in the one spelling the domain compares (PostgreSQL's jsonb prints
/// its own spacing and key order).
fn canonical_json(text: &str) -> serde_json::Result<String> {
    serde_json::from_str::<serde_json::Value>(text).map(|v| v.to_string())
}

fn rows(contacts: &[Contact]) -> Result<Vec<ContactRow>> {
    contacts.iter().map(ContactRow::from_domain).collect()
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
        Some(_) => Error::EtagMismatch {
            resource: RESOURCE,
            id: contacts.first().map(|c| c.meta.id.clone()).unwrap_or_default(),
        },
        None => error.into(),
    }
}

/// Inserts new contacts: one multi-row statement on PostgreSQL; on SQLite
/// (in-process, no network) one hop to its thread, a statement per row.
pub async fn insert_many(conn: &mut Conn<'_>, contacts: &[Contact]) -> Result<()> {
    if contacts.is_empty() {
        return Ok(());
    }
    let rows = rows(contacts)?;
    let inserted = match conn {
        Conn::Pg(c) => diesel::insert_into(contacts::table).values(&rows).execute(&mut **c).await.map(|_| ()),
        Conn::Sqlite(c) => {
            c.spawn_blocking(move |c| {
                for row in &rows {
                    diesel::RunQueryDsl::execute(diesel::insert_into(contacts::table).values(row), c)?;
                }
                Ok(())
            })
            .await
        }
    };
    inserted.map_err(|e| write_error(e, contacts))
}

/// Writes contacts whose new state was decided under lock (changed, deleted,
/// restored, or created by upsert): one multi-row upsert on PostgreSQL, one
/// hop with a statement per row on SQLite.
pub async fn write_many(conn: &mut Conn<'_>, contacts: &[Contact]) -> Result<()> {
    if contacts.is_empty() {
        return Ok(());
    }
    let rows = rows(contacts)?;
    macro_rules! upsert {
        ($values:expr) => {
            diesel::insert_into(contacts::table)
                .values($values)
                .on_conflict((contacts::tenant_id, contacts::id))
                .do_update()
                .set((
                    contacts::display_name.eq(excluded(contacts::display_name)),
                    contacts::given_name.eq(excluded(contacts::given_name)),
                    contacts::family_name.eq(excluded(contacts::family_name)),
                    contacts::organization.eq(excluded(contacts::organization)),
                    contacts::job_title.eq(excluded(contacts::job_title)),
                    contacts::emails.eq(excluded(contacts::emails)),
                    contacts::phones.eq(excluded(contacts::phones)),
                    contacts::external_id.eq(excluded(contacts::external_id)),
                    contacts::notes_format.eq(excluded(contacts::notes_format)),
                    contacts::notes_raw.eq(excluded(contacts::notes_raw)),
                    contacts::notes_html.eq(excluded(contacts::notes_html)),
                    contacts::custom_fields.eq(excluded(contacts::custom_fields)),
                    contacts::revision.eq(excluded(contacts::revision)),
                    contacts::update_time.eq(excluded(contacts::update_time)),
                    contacts::delete_time.eq(excluded(contacts::delete_time)),
                    contacts::purge_time.eq(excluded(contacts::purge_time)),
                    contacts::updated_by.eq(excluded(contacts::updated_by)),
                ))
        };
    }
    let written = match conn {
        Conn::Pg(c) => upsert!(&rows).execute(&mut **c).await.map(|_| ()),
        Conn::Sqlite(c) => {
            c.spawn_blocking(move |c| {
                for row in &rows {
                    diesel::RunQueryDsl::execute(upsert!(row), c)?;
                }
                Ok(())
            })
            .await
        }
    };
    written.map_err(|e| write_error(e, contacts))
}

/// The contacts of `tenant` among `ids`, in one query; missing ones are left
/// out. On PostgreSQL `lock` takes row locks (in id order, so concurrent
/// batches cannot deadlock) until the transaction ends; SQLite has a single
/// writer and needs none.
pub async fn find_many(conn: &mut Conn<'_>, tenant: &str, ids: &[String], lock: bool) -> Result<Vec<Contact>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let query =
        contacts::table.filter(contacts::tenant_id.eq(tenant)).filter(contacts::id.eq_any(ids)).order(contacts::id);
    let rows: Vec<ContactRow> = match conn {
        Conn::Pg(c) if lock => query.select(ContactRow::as_select()).for_update().load(&mut **c).await?,
        _ => dispatch!(conn, |c| query.select(ContactRow::as_select()).load(c).await?),
    };
    rows.into_iter().map(ContactRow::into_domain).collect()
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

/// The rows of a list query ([`crate::query::ListPlan::sql`]).
pub async fn list(conn: &mut Conn<'_>, sql: &Sql) -> Result<Vec<Contact>> {
    let rows: Vec<ContactRow> = load_sql!(conn, sql);
    rows.into_iter().map(ContactRow::into_domain).collect()
}

/// Removes up to `limit` contacts whose purge time has passed; returns
/// what went. On PostgreSQL, replicas purging at once skip each other's rows.
pub async fn purge_expired(conn: &mut Conn<'_>, now: i64, limit: i64) -> Result<Vec<Purged>> {
    #[derive(diesel::QueryableByName)]
    struct Gone {
        #[diesel(sql_type = diesel::sql_types::Text)]
        tenant_id: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        revision: i64,
    }
    let sql = match conn {
        Conn::Pg(_) => {
            "DELETE FROM contacts WHERE (tenant_id, id) IN (SELECT tenant_id, id FROM contacts \
             WHERE purge_time < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING tenant_id, id, revision"
        }
        Conn::Sqlite(_) => {
            "DELETE FROM contacts WHERE rowid IN (SELECT rowid FROM contacts WHERE purge_time < ?1 LIMIT ?2) \
             RETURNING tenant_id, id, revision"
        }
    };
    let gone: Vec<Gone> = dispatch!(conn, |c| {
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::BigInt, _>(now)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(c)
            .await?
    });
    Ok(gone.into_iter().map(|g| Purged { tenant: g.tenant_id, id: g.id, revision: g.revision }).collect())
}
