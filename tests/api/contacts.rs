//! ContactService: Create, Get, Delete, Undelete and BatchGet as a caller sees them.

use agenda::api::{
    BatchGetContactsRequest, Contact, CreateContactRequest, DeleteContactRequest, EmailAddress, GetContactRequest,
    PhoneNumber, RichText, UndeleteContactRequest,
};
use prost_types::{FieldMask, Struct, Value, value::Kind};
use tonic::Code;

use crate::helpers::{Backend, Contacts, assert_error, count_rows, spawn_app, token_as, violation_fields};

on_both_backends!(
    create_returns_the_stored_contact,
    invalid_contacts_are_refused_field_by_field_and_change_nothing,
    get_honours_the_read_mask,
    get_of_a_missing_or_malformed_id_is_not_found,
    tenants_never_see_each_other,
    a_request_id_makes_create_idempotent,
    concurrent_retries_create_one_contact,
    delete_is_soft_and_checks_the_etag,
    external_ids_are_unique_among_undeleted_contacts,
    undelete_restores_and_refuses_a_live_contact,
    batch_get_returns_all_in_order_or_not_found,
);

fn contact(name: &str) -> Contact {
    Contact { display_name: name.to_string(), ..Default::default() }
}

fn create(contact: Contact) -> CreateContactRequest {
    CreateContactRequest { contact: Some(contact), request_id: String::new() }
}

fn get(id: &str) -> GetContactRequest {
    GetContactRequest { id: id.to_string(), read_mask: None }
}

async fn create_ok(client: &mut Contacts, contact: Contact) -> Contact {
    client.create_contact(create(contact)).await.expect("create").into_inner()
}

fn string(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_string())) }
}

async fn create_returns_the_stored_contact(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let before = chrono::Utc::now().timestamp();
    let sent = Contact {
        id: "ignored".into(),
        revision: 99,
        created_by: "ignored".into(),
        display_name: "  Ada Lovelace ".into(),
        given_name: "Ada".into(),
        family_name: "Lovelace".into(),
        organization: "Analytical Engines".into(),
        job_title: "Programmer".into(),
        emails: vec![EmailAddress { address: "ada@example.com".into(), label: "work".into(), primary: true }],
        phones: vec![PhoneNumber { number: "+44 20 7946 0958".into(), label: "office".into() }],
        external_id: "crm-1".into(),
        notes: Some(RichText { format: 0, raw: "**Met** at <script>x()</script>".into(), html: "ignored".into() }),
        custom_fields: Some(Struct { fields: [("source".to_string(), string("web"))].into_iter().collect() }),
        ..Default::default()
    };
    let created = create_ok(&mut client, sent.clone()).await;
    let id = uuid::Uuid::parse_str(&created.id).expect("a UUID id");
    assert_eq!(id.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(created.display_name, "Ada Lovelace");
    assert_eq!(created.given_name, "Ada");
    assert_eq!(created.emails, sent.emails);
    assert_eq!(created.phones, sent.phones);
    assert_eq!(created.external_id, "crm-1");
    assert_eq!(created.custom_fields, sent.custom_fields);
    let notes = created.notes.clone().expect("notes");
    assert_eq!(notes.format, 2, "unspecified format is Markdown");
    assert!(notes.html.contains("<strong>Met</strong>") && !notes.html.contains("script"), "{}", notes.html);
    assert_eq!(created.revision, 1);
    assert!(!created.etag.is_empty());
    assert_eq!(created.created_by, "user-1");
    assert_eq!(created.updated_by, "user-1");
    let create_time = created.create_time.expect("create_time");
    assert!(create_time.seconds >= before && create_time.seconds <= before + 60);
    assert_eq!(created.update_time, created.create_time);
    assert!(created.delete_time.is_none() && created.purge_time.is_none());

    let fetched = client.get_contact(get(&created.id)).await.expect("get").into_inner();
    assert_eq!(fetched, created);
}

async fn invalid_contacts_are_refused_field_by_field_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let email = |address: &str| EmailAddress { address: address.into(), label: String::new(), primary: false };
    let phone = PhoneNumber { number: "+1 555 0100".into(), label: String::new() };
    let cases: Vec<(Contact, &str, &str)> = vec![
        (contact(""), "FIELD_REQUIRED", "contact.display_name"),
        (contact("   "), "FIELD_REQUIRED", "contact.display_name"),
        (contact(&"x".repeat(256)), "FIELD_INVALID", "contact.display_name"),
        (Contact { job_title: "y".repeat(300), ..contact("A") }, "FIELD_INVALID", "contact.job_title"),
        (Contact { emails: vec![email("nope")], ..contact("A") }, "FIELD_INVALID", "contact.emails[0].address"),
        (Contact { emails: vec![email("a@example.com"); 17], ..contact("A") }, "FIELD_INVALID", "contact.emails"),
        (Contact { phones: vec![phone.clone(); 17], ..contact("A") }, "FIELD_INVALID", "contact.phones"),
        (
            Contact { phones: vec![PhoneNumber { number: "DROP TABLE".into(), label: String::new() }], ..contact("A") },
            "FIELD_INVALID",
            "contact.phones[0].number",
        ),
        (
            Contact {
                notes: Some(RichText { format: 2, raw: "x".repeat(64 * 1024 + 1), html: String::new() }),
                ..contact("A")
            },
            "FIELD_INVALID",
            "contact.notes.raw",
        ),
        (
            Contact { notes: Some(RichText { format: 7, raw: "x".into(), html: String::new() }), ..contact("A") },
            "FIELD_INVALID",
            "contact.notes.format",
        ),
        (
            Contact {
                custom_fields: Some(Struct { fields: (0..65).map(|i| (format!("k{i}"), string("v"))).collect() }),
                ..contact("A")
            },
            "FIELD_INVALID",
            "contact.custom_fields",
        ),
        (
            Contact {
                custom_fields: Some(Struct { fields: [("k".to_string(), string(&"v".repeat(17 * 1024)))].into() }),
                ..contact("A")
            },
            "FIELD_INVALID",
            "contact.custom_fields",
        ),
    ];
    for (sent, reason, field) in cases {
        let status = client.create_contact(create(sent)).await.unwrap_err();
        let info = assert_error(&status, Code::InvalidArgument, reason);
        assert_eq!(info.metadata.get("field").map(String::as_str), Some(field), "{status:?}");
        assert_eq!(violation_fields(&status).first().map(String::as_str), Some(field));
    }
    let status =
        client.create_contact(CreateContactRequest { contact: None, request_id: String::new() }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_REQUIRED");
    let status = client
        .create_contact(CreateContactRequest { contact: Some(contact("A")), request_id: "not-a-uuid".into() })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("request_id"));

    // Several problems are all reported.
    let status =
        client.create_contact(create(Contact { emails: vec![email("bad")], ..contact("") })).await.unwrap_err();
    assert_eq!(violation_fields(&status), vec!["contact.display_name", "contact.emails[0].address"]);

    assert_eq!(count_rows(&app, "contacts").await, 0, "no invalid request may write anything");
    assert_eq!(count_rows(&app, "request_ids").await, 0);
}

async fn get_honours_the_read_mask(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = create_ok(
        &mut client,
        Contact {
            organization: "ACME".into(),
            notes: Some(RichText { format: 1, raw: "plain".into(), html: String::new() }),
            ..contact("Ada")
        },
    )
    .await;
    let masked = client
        .get_contact(GetContactRequest {
            id: created.id.clone(),
            read_mask: Some(FieldMask { paths: vec!["display_name".into(), "notes.raw".into()] }),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(masked.id, created.id);
    assert_eq!(masked.display_name, "Ada");
    assert_eq!(masked.organization, "");
    assert_eq!(masked.etag, "");
    assert_eq!(masked.notes.expect("notes").raw, "plain");

    let status = client
        .get_contact(GetContactRequest {
            id: created.id.clone(),
            read_mask: Some(FieldMask { paths: vec!["display_name".into(), "password".into()] }),
        })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "FIELD_UNKNOWN");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("read_mask"));
}

async fn get_of_a_missing_or_malformed_id_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    for id in ["01930000-0000-7000-8000-000000000000", "42", "", "' OR 1=1 --"] {
        let status = client.get_contact(get(id)).await.unwrap_err();
        let info = assert_error(&status, Code::NotFound, "NOT_FOUND");
        assert_eq!(info.metadata.get("resource").map(String::as_str), Some("contact"));
        assert_eq!(info.metadata.get("id").map(String::as_str), Some(id));
    }
}

async fn tenants_never_see_each_other(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut alice = app.contacts("tenant-a");
    let mut bob = app.contacts("tenant-b");
    let created = create_ok(&mut alice, Contact { external_id: "x-1".into(), ..contact("Secret") }).await;

    let status = bob.get_contact(get(&created.id)).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
    let status =
        bob.delete_contact(DeleteContactRequest { id: created.id.clone(), etag: String::new() }).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
    let status = bob
        .batch_get_contacts(BatchGetContactsRequest { ids: vec![created.id.clone()], read_mask: None })
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
    // The same external_id and request_id are free in another tenant.
    let request_id = uuid::Uuid::new_v4().to_string();
    let mine = bob
        .create_contact(CreateContactRequest {
            contact: Some(Contact { external_id: "x-1".into(), ..contact("Mine") }),
            request_id: request_id.clone(),
        })
        .await
        .expect("create in tenant b")
        .into_inner();
    let theirs = alice
        .create_contact(CreateContactRequest {
            contact: Some(Contact { external_id: "x-2".into(), ..contact("Mine") }),
            request_id,
        })
        .await
        .expect("create in tenant a")
        .into_inner();
    assert_ne!(mine.id, theirs.id);
    // Alice's contact is untouched.
    assert_eq!(alice.get_contact(get(&created.id)).await.expect("get").into_inner(), created);
}

async fn a_request_id_makes_create_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let request_id = uuid::Uuid::new_v4().to_string();
    let request = CreateContactRequest { contact: Some(contact("Ada")), request_id: request_id.clone() };
    let first = client.create_contact(request.clone()).await.expect("first").into_inner();
    let again = client.create_contact(request.clone()).await.expect("retry").into_inner();
    assert_eq!(again, first);
    // Upper-case spelling of the same UUID is the same request id.
    let upper = CreateContactRequest { request_id: request_id.to_uppercase(), ..request.clone() };
    assert_eq!(client.create_contact(upper).await.expect("retry").into_inner().id, first.id);
    assert_eq!(count_rows(&app, "contacts").await, 1);

    let different = CreateContactRequest { contact: Some(contact("Grace")), request_id };
    let status = client.create_contact(different).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    assert_eq!(count_rows(&app, "contacts").await, 1);

    // Another caller of the same tenant retrying the same request gets the same contact.
    let mut colleague = app.contacts_with(Some(&token_as("t1", "user-2", "contacts.write")));
    assert_eq!(colleague.create_contact(request).await.expect("retry").into_inner().id, first.id);
}

async fn concurrent_retries_create_one_contact(backend: Backend) {
    let app = spawn_app(backend).await;
    let request = CreateContactRequest { contact: Some(contact("Ada")), request_id: uuid::Uuid::new_v4().to_string() };
    let calls = (0..16).map(|_| {
        let mut client = app.contacts("t1");
        let request = request.clone();
        tokio::spawn(async move { client.create_contact(request).await.map(|r| r.into_inner().id) })
    });
    let ids: Vec<String> =
        futures::future::join_all(calls).await.into_iter().map(|r| r.expect("task").expect("create")).collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    assert_eq!(count_rows(&app, "contacts").await, 1);
}

async fn delete_is_soft_and_checks_the_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = create_ok(&mut client, contact("Ada")).await;

    let status = client
        .delete_contact(DeleteContactRequest { id: created.id.clone(), etag: "\"stale\"".into() })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(info.metadata.get("id"), Some(&created.id));

    let mut other_user = app.contacts_with(Some(&token_as("t1", "user-2", "contacts.write")));
    let deleted = other_user
        .delete_contact(DeleteContactRequest { id: created.id.clone(), etag: created.etag.clone() })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.revision, 2);
    assert_ne!(deleted.etag, created.etag);
    assert_eq!(deleted.updated_by, "user-2");
    assert_eq!(deleted.created_by, "user-1");
    let delete_time = deleted.delete_time.expect("delete_time");
    let purge_time = deleted.purge_time.expect("purge_time");
    assert_eq!(purge_time.seconds - delete_time.seconds, 30 * 24 * 3600, "default retention is 30 days");

    // Still readable, with delete_time set.
    let fetched = client.get_contact(get(&created.id)).await.expect("get").into_inner();
    assert_eq!(fetched, deleted);
    // Deleting again changes nothing.
    let again = client
        .delete_contact(DeleteContactRequest { id: created.id.clone(), etag: String::new() })
        .await
        .expect("again");
    assert_eq!(again.into_inner(), deleted);
    let status = client
        .delete_contact(DeleteContactRequest { id: uuid::Uuid::now_v7().to_string(), etag: String::new() })
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
}

async fn external_ids_are_unique_among_undeleted_contacts(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let first = create_ok(&mut client, Contact { external_id: "crm-7".into(), ..contact("Ada") }).await;
    let status =
        client.create_contact(create(Contact { external_id: "crm-7".into(), ..contact("Other") })).await.unwrap_err();
    let info = assert_error(&status, Code::AlreadyExists, "DUPLICATE");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("contact.external_id"));
    // Contacts without an external id never collide.
    create_ok(&mut client, contact("No id 1")).await;
    create_ok(&mut client, contact("No id 2")).await;

    client.delete_contact(DeleteContactRequest { id: first.id.clone(), etag: String::new() }).await.expect("delete");
    let second = create_ok(&mut client, Contact { external_id: "crm-7".into(), ..contact("Ada again") }).await;
    assert_eq!(second.external_id, "crm-7");
    // Undeleting the first would now duplicate the external id.
    let status = client.undelete_contact(UndeleteContactRequest { id: first.id.clone() }).await.unwrap_err();
    assert_error(&status, Code::AlreadyExists, "DUPLICATE");
}

async fn undelete_restores_and_refuses_a_live_contact(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = create_ok(&mut client, contact("Ada")).await;
    let status = client.undelete_contact(UndeleteContactRequest { id: created.id.clone() }).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "NOT_DELETED");

    client.delete_contact(DeleteContactRequest { id: created.id.clone(), etag: String::new() }).await.expect("delete");
    let restored = client
        .undelete_contact(UndeleteContactRequest { id: created.id.clone() })
        .await
        .expect("undelete")
        .into_inner();
    assert_eq!(restored.revision, 3);
    assert!(restored.delete_time.is_none() && restored.purge_time.is_none());
    assert_eq!(restored.display_name, "Ada");
}

async fn batch_get_returns_all_in_order_or_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let mut ids = Vec::new();
    for name in ["A", "B", "C"] {
        ids.push(create_ok(&mut client, contact(name)).await.id);
    }
    let asked = vec![ids[2].clone(), ids[0].clone(), ids[1].clone(), ids[0].clone()];
    let got = client
        .batch_get_contacts(BatchGetContactsRequest {
            ids: asked.clone(),
            read_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
        })
        .await
        .expect("batch get")
        .into_inner();
    let names: Vec<_> = got.contacts.iter().map(|c| (c.id.clone(), c.display_name.clone())).collect();
    assert_eq!(
        names,
        vec![
            (ids[2].clone(), "C".to_string()),
            (ids[0].clone(), "A".to_string()),
            (ids[1].clone(), "B".to_string()),
            (ids[0].clone(), "A".to_string())
        ]
    );
    let missing = uuid::Uuid::now_v7().to_string();
    let status = client
        .batch_get_contacts(BatchGetContactsRequest { ids: vec![ids[0].clone(), missing.clone()], read_mask: None })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::NotFound, "NOT_FOUND");
    assert_eq!(info.metadata.get("id"), Some(&missing));
    let status = client.batch_get_contacts(BatchGetContactsRequest { ids: vec![], read_mask: None }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_REQUIRED");
    let status = client
        .batch_get_contacts(BatchGetContactsRequest { ids: vec![ids[0].clone(); 1001], read_mask: None })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "TOO_MANY");
}
