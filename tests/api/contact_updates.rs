//! UpdateContact: masks, etags, no-op updates, upserts and races.

use agenda::api::{Contact, CreateContactRequest, GetContactRequest, RichText, UpdateContactRequest};
use prost_types::{FieldMask, Struct, Value, value::Kind};
use tonic::Code;

use crate::helpers::{Backend, Contacts, assert_error, count_rows, spawn_app, token_as};

on_both_backends!(
    a_mask_changes_only_the_fields_it_names,
    without_a_mask_the_fields_set_are_changed,
    star_replaces_every_writable_field,
    nested_paths_change_one_key_or_part,
    bad_masks_are_refused,
    a_stale_etag_is_aborted,
    an_update_that_changes_nothing_makes_no_revision,
    allow_missing_creates_under_the_given_id,
    an_update_that_breaks_a_rule_changes_nothing,
    concurrent_updates_with_one_etag_let_exactly_one_win,
);

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

fn text(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

fn update(contact: Contact, paths: Option<&[&str]>) -> UpdateContactRequest {
    UpdateContactRequest {
        contact: Some(contact),
        update_mask: paths.and_then(mask),
        allow_missing: false,
        comment: None,
    }
}

async fn seed(client: &mut Contacts) -> Contact {
    let contact = Contact {
        display_name: "Ada".into(),
        organization: "ACME".into(),
        job_title: "Engineer".into(),
        notes: Some(RichText { format: 2, raw: "*first*".into(), html: String::new() }),
        custom_fields: Some(Struct { fields: [("a".into(), text("1")), ("b".into(), text("2"))].into() }),
        ..Default::default()
    };
    client
        .create_contact(CreateContactRequest { contact: Some(contact), request_id: String::new() })
        .await
        .expect("create")
        .into_inner()
}

async fn get(client: &mut Contacts, id: &str) -> Contact {
    client.get_contact(GetContactRequest { id: id.into(), read_mask: None }).await.expect("get").into_inner()
}

async fn a_mask_changes_only_the_fields_it_names(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed(&mut client).await;
    let patch = Contact {
        id: created.id.clone(),
        display_name: "Ignored".into(),
        organization: "Initech".into(),
        ..Default::default()
    };
    let mut other = app.contacts_with(Some(&token_as("t1", "user-2", "contacts.write")));
    let updated = other.update_contact(update(patch, Some(&["organization"]))).await.expect("update").into_inner();
    assert_eq!(updated.organization, "Initech");
    assert_eq!(updated.display_name, "Ada");
    assert_eq!(updated.job_title, "Engineer");
    assert_eq!(updated.revision, 2);
    assert_ne!(updated.etag, created.etag);
    assert_eq!(updated.updated_by, "user-2");
    assert_eq!(updated.created_by, "user-1");
    assert_eq!(updated.create_time, created.create_time);
    assert_eq!(get(&mut client, &created.id).await, updated);
}

async fn without_a_mask_the_fields_set_are_changed(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed(&mut client).await;
    // A caller sending back what it read, with output-only fields, changes only what differs.
    let patch = Contact { job_title: "CTO".into(), given_name: "Augusta".into(), ..created.clone() };
    let updated = client.update_contact(update(patch, None)).await.expect("update").into_inner();
    assert_eq!((updated.job_title.as_str(), updated.given_name.as_str()), ("CTO", "Augusta"));
    assert_eq!(updated.organization, "ACME");
    assert_eq!(updated.revision, 2);
    // Unset fields are left alone without a mask.
    let patch = Contact { id: created.id.clone(), family_name: "Byron".into(), ..Default::default() };
    let updated = client.update_contact(update(patch, None)).await.expect("update").into_inner();
    assert_eq!((updated.family_name.as_str(), updated.job_title.as_str()), ("Byron", "CTO"));
}

async fn star_replaces_every_writable_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed(&mut client).await;
    let patch = Contact { id: created.id.clone(), display_name: "Grace".into(), ..Default::default() };
    let updated = client.update_contact(update(patch, Some(&["*"]))).await.expect("update").into_inner();
    assert_eq!(updated.display_name, "Grace");
    assert_eq!(updated.organization, "");
    assert_eq!(updated.notes, None);
    assert_eq!(updated.custom_fields, None);
    assert_eq!(updated.created_by, "user-1", "output-only fields are kept");
}

async fn nested_paths_change_one_key_or_part(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed(&mut client).await;
    let patch = Contact {
        id: created.id.clone(),
        custom_fields: Some(Struct { fields: [("a".into(), text("9")), ("c".into(), text("3"))].into() }),
        notes: Some(RichText { format: 2, raw: "**second**".into(), html: "<script>ignored</script>".into() }),
        ..Default::default()
    };
    let updated = client
        .update_contact(update(patch, Some(&["custom_fields.a", "custom_fields.b", "notes.raw"])))
        .await
        .expect("update")
        .into_inner();
    let fields = updated.custom_fields.expect("custom fields").fields;
    assert_eq!(fields.get("a"), Some(&text("9")));
    assert_eq!(fields.get("b"), None, "a named key unset in the request is removed");
    assert_eq!(fields.get("c"), None, "keys not named are not added");
    let notes = updated.notes.expect("notes");
    assert_eq!(notes.raw, "**second**");
    assert_eq!(notes.html, "<p><strong>second</strong></p>\n", "html is rendered by the server");
}

async fn bad_masks_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed(&mut client).await;
    for (path, reason) in [
        ("etag", "FIELD_OUTPUT_ONLY"),
        ("create_time", "FIELD_OUTPUT_ONLY"),
        ("notes.html", "FIELD_OUTPUT_ONLY"),
        ("revision", "FIELD_OUTPUT_ONLY"),
        ("updated_by", "FIELD_OUTPUT_ONLY"),
        ("id", "FIELD_IMMUTABLE"),
        ("nickname", "FIELD_UNKNOWN"),
        ("emails.address", "FIELD_UNKNOWN"),
        ("display_name.first", "FIELD_UNKNOWN"),
    ] {
        let patch = Contact { id: created.id.clone(), display_name: "X".into(), ..Default::default() };
        let status = client.update_contact(update(patch, Some(&["display_name", path]))).await.unwrap_err();
        let info = assert_error(&status, Code::InvalidArgument, reason);
        assert_eq!(info.metadata.get("field").map(String::as_str), Some("update_mask"), "{path}");
    }
    assert_eq!(get(&mut client, &created.id).await, created, "nothing changed");
}

async fn a_stale_etag_is_aborted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed(&mut client).await;
    let first =
        Contact { id: created.id.clone(), etag: created.etag.clone(), job_title: "A".into(), ..Default::default() };
    let updated = client.update_contact(update(first.clone(), None)).await.expect("update").into_inner();
    let status = client.update_contact(update(Contact { job_title: "B".into(), ..first }, None)).await.unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let second =
        Contact { id: created.id.clone(), etag: updated.etag.clone(), job_title: "B".into(), ..Default::default() };
    assert_eq!(client.update_contact(update(second, None)).await.expect("update").into_inner().job_title, "B");
}

async fn an_update_that_changes_nothing_makes_no_revision(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed(&mut client).await;
    let same = Contact { id: created.id.clone(), organization: "  ACME ".into(), ..Default::default() };
    let unchanged = client.update_contact(update(same, Some(&["organization"]))).await.expect("update").into_inner();
    assert_eq!(unchanged, created, "same revision, etag and update_time");
    let unchanged = client.update_contact(update(created.clone(), Some(&["*"]))).await.expect("update").into_inner();
    assert_eq!(unchanged, created);
}

async fn allow_missing_creates_under_the_given_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let id = uuid::Uuid::new_v4().to_string();
    let contact = Contact { id: id.clone(), display_name: "Upserted".into(), ..Default::default() };
    let status = client.update_contact(update(contact.clone(), None)).await.unwrap_err();
    let info = assert_error(&status, Code::NotFound, "NOT_FOUND");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("contact.id"));

    let upsert = UpdateContactRequest { allow_missing: true, ..update(contact.clone(), None) };
    let created = client.update_contact(upsert.clone()).await.expect("upsert").into_inner();
    assert_eq!((created.id.as_str(), created.revision), (id.as_str(), 1));
    assert_eq!(created.display_name, "Upserted");
    // The same upsert again finds it and changes nothing.
    assert_eq!(client.update_contact(upsert).await.expect("upsert").into_inner(), created);

    let bad = UpdateContactRequest { allow_missing: true, ..update(Contact { id: "my-id".into(), ..contact }, None) };
    let status = client.update_contact(bad).await.unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("contact.id"));
    // Another tenant's upsert of the same id does not touch this one.
    let mut other = app.contacts("t2");
    let theirs = other
        .update_contact(UpdateContactRequest {
            allow_missing: true,
            ..update(Contact { id: id.clone(), display_name: "Theirs".into(), ..Default::default() }, None)
        })
        .await
        .expect("upsert in t2")
        .into_inner();
    assert_eq!(theirs.display_name, "Theirs");
    assert_eq!(get(&mut client, &id).await.display_name, "Upserted");
}

async fn an_update_that_breaks_a_rule_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed(&mut client).await;
    let cleared = Contact { id: created.id.clone(), ..Default::default() };
    let status = client.update_contact(update(cleared, Some(&["display_name"]))).await.unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "FIELD_REQUIRED");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("contact.display_name"));
    let long = Contact { id: created.id.clone(), job_title: "x".repeat(300), ..Default::default() };
    let status = client.update_contact(update(long, None)).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
    let other = client
        .create_contact(CreateContactRequest {
            contact: Some(Contact { display_name: "B".into(), external_id: "crm-1".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .expect("create")
        .into_inner();
    let taken = Contact { id: created.id.clone(), external_id: other.external_id.clone(), ..Default::default() };
    let status = client.update_contact(update(taken, None)).await.unwrap_err();
    assert_error(&status, Code::AlreadyExists, "DUPLICATE");
    assert_eq!(get(&mut client, &created.id).await, created);
    assert_eq!(count_rows(&app, "contacts").await, 2);
}

async fn concurrent_updates_with_one_etag_let_exactly_one_win(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed(&mut client).await;
    let calls = (0..8).map(|i| {
        let mut client = app.contacts("t1");
        let patch = Contact {
            id: created.id.clone(),
            etag: created.etag.clone(),
            job_title: format!("title {i}"),
            ..Default::default()
        };
        tokio::spawn(async move { client.update_contact(update(patch, None)).await })
    });
    let results = futures::future::join_all(calls).await;
    let mut winners = Vec::new();
    for result in results {
        match result.expect("task") {
            Ok(updated) => winners.push(updated.into_inner()),
            Err(status) => {
                assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one update wins");
    let stored = get(&mut client, &created.id).await;
    assert_eq!(stored.revision, 2);
    assert_eq!(stored.job_title, winners[0].job_title);
}
