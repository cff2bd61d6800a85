//! Batch writes: all or nothing, errors naming the failing item, limits,
//! idempotency; and the purge of expired soft-deleted contacts.

use std::time::Duration;

use agenda::api::{
    BatchCreateContactsRequest, BatchDeleteContactsRequest, BatchGetContactsRequest, BatchUpdateContactsRequest,
    Contact, CreateContactRequest, DeleteContactRequest, GetContactRequest, UpdateContactRequest,
};
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{Backend, Contacts, assert_error, count_rows, spawn_app, spawn_app_with, violation_fields};

on_both_backends!(
    batch_create_is_all_or_nothing,
    batch_create_limits,
    batch_create_refuses_duplicate_external_ids_by_index,
    batch_create_with_request_ids_is_idempotent,
    batch_update_reassigns_many_or_none,
    batch_delete_is_all_or_nothing,
    expired_soft_deleted_contacts_are_purged,
);

fn item(name: &str) -> CreateContactRequest {
    CreateContactRequest {
        contact: Some(Contact { display_name: name.into(), ..Default::default() }),
        request_id: String::new(),
    }
}

async fn create_batch(client: &mut Contacts, names: &[&str]) -> Vec<Contact> {
    client
        .batch_create_contacts(BatchCreateContactsRequest { requests: names.iter().map(|n| item(n)).collect() })
        .await
        .expect("batch create")
        .into_inner()
        .contacts
}

async fn batch_create_is_all_or_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let requests = vec![item("A"), item("B"), item("C"), item("  "), item("E")];
    let status = client.batch_create_contacts(BatchCreateContactsRequest { requests }).await.unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "FIELD_REQUIRED");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("requests[3].contact.display_name"));
    assert_eq!(violation_fields(&status), vec!["requests[3].contact.display_name"]);
    assert_eq!(count_rows(&app, "contacts").await, 0);

    let created = create_batch(&mut client, &["A", "B", "C"]).await;
    let names: Vec<_> = created.iter().map(|c| c.display_name.as_str()).collect();
    assert_eq!(names, ["A", "B", "C"], "in request order");
    let fetched = client
        .batch_get_contacts(BatchGetContactsRequest {
            ids: created.iter().map(|c| c.id.clone()).collect(),
            read_mask: None,
        })
        .await
        .expect("batch get")
        .into_inner()
        .contacts;
    assert_eq!(fetched, created, "what a batch returns is what is stored");
}

async fn batch_create_limits(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let status = client.batch_create_contacts(BatchCreateContactsRequest { requests: vec![] }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_REQUIRED");
    let status =
        client.batch_create_contacts(BatchCreateContactsRequest { requests: vec![item("A"); 501] }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "TOO_MANY");
    let created = client
        .batch_create_contacts(BatchCreateContactsRequest { requests: vec![item("A"); 500] })
        .await
        .expect("500 is allowed")
        .into_inner();
    assert_eq!(created.contacts.len(), 500);
}

async fn batch_create_refuses_duplicate_external_ids_by_index(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let with_ext = |name: &str, ext: &str| CreateContactRequest {
        contact: Some(Contact { display_name: name.into(), external_id: ext.into(), ..Default::default() }),
        request_id: String::new(),
    };
    let status = client
        .batch_create_contacts(BatchCreateContactsRequest {
            requests: vec![with_ext("A", "x-1"), with_ext("B", "x-2"), with_ext("C", "x-1")],
        })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::AlreadyExists, "DUPLICATE");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("requests[2].contact.external_id"));

    client.create_contact(with_ext("Old", "x-9")).await.expect("create");
    let status = client
        .batch_create_contacts(BatchCreateContactsRequest {
            requests: vec![with_ext("A", "x-1"), with_ext("B", "x-9"), with_ext("C", "x-3")],
        })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::AlreadyExists, "DUPLICATE");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("requests[1].contact.external_id"));
    assert_eq!(count_rows(&app, "contacts").await, 1);
}

async fn batch_create_with_request_ids_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let requests: Vec<CreateContactRequest> = ["A", "B", "C"]
        .iter()
        .map(|n| CreateContactRequest { request_id: uuid::Uuid::new_v4().to_string(), ..item(n) })
        .collect();
    let first = client
        .batch_create_contacts(BatchCreateContactsRequest { requests: requests.clone() })
        .await
        .expect("batch")
        .into_inner();
    let again = client
        .batch_create_contacts(BatchCreateContactsRequest { requests: requests.clone() })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, again);
    // A single create with one of the request ids returns that contact.
    let single = client.create_contact(requests[1].clone()).await.expect("create").into_inner();
    assert_eq!(single.id, first.contacts[1].id);
    assert_eq!(count_rows(&app, "contacts").await, 3);
    // One request id twice in a batch is refused.
    let twice =
        vec![requests[0].clone(), CreateContactRequest { request_id: requests[0].request_id.clone(), ..item("Z") }];
    let status = client.batch_create_contacts(BatchCreateContactsRequest { requests: twice }).await.unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("requests[1].request_id"));
}

async fn batch_update_reassigns_many_or_none(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = create_batch(&mut client, &["A", "B", "C", "D"]).await;
    let reassign = |c: &Contact, org: &str| UpdateContactRequest {
        contact: Some(Contact {
            id: c.id.clone(),
            etag: c.etag.clone(),
            organization: org.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths: vec!["organization".into()] }),
        allow_missing: false,
        comment: None,
    };
    let updated = client
        .batch_update_contacts(BatchUpdateContactsRequest {
            requests: created.iter().map(|c| reassign(c, "Initech")).collect(),
        })
        .await
        .expect("batch update")
        .into_inner()
        .contacts;
    assert!(updated.iter().all(|c| c.organization == "Initech" && c.revision == 2));
    assert_eq!(updated.iter().map(|c| &c.id).collect::<Vec<_>>(), created.iter().map(|c| &c.id).collect::<Vec<_>>());

    // Item 2 carries a stale etag: nothing changes.
    let mut requests: Vec<UpdateContactRequest> = updated.iter().map(|c| reassign(c, "Globex")).collect();
    requests[2] = reassign(&created[2], "Globex");
    let status = client.batch_update_contacts(BatchUpdateContactsRequest { requests }).await.unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    // Item 1 names a contact that does not exist.
    let mut requests: Vec<UpdateContactRequest> = updated.iter().map(|c| reassign(c, "Globex")).collect();
    let ghost = Contact { id: uuid::Uuid::now_v7().to_string(), ..Default::default() };
    requests[1] = reassign(&ghost, "Globex");
    let status = client.batch_update_contacts(BatchUpdateContactsRequest { requests }).await.unwrap_err();
    let info = assert_error(&status, Code::NotFound, "NOT_FOUND");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("requests[1].contact.id"));
    // Item 3 breaks a rule.
    let mut requests: Vec<UpdateContactRequest> = updated.iter().map(|c| reassign(c, "Globex")).collect();
    requests[3].update_mask = Some(FieldMask { paths: vec!["display_name".into()] });
    let status = client.batch_update_contacts(BatchUpdateContactsRequest { requests }).await.unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "FIELD_REQUIRED");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("requests[3].contact.display_name"));
    let status = client
        .batch_update_contacts(BatchUpdateContactsRequest {
            requests: vec![reassign(&updated[0], "X"), reassign(&updated[0], "Y")],
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");

    for contact in &updated {
        let stored =
            client.get_contact(GetContactRequest { id: contact.id.clone(), read_mask: None }).await.expect("get");
        assert_eq!(&stored.into_inner(), contact, "failed batches changed nothing");
    }
}

async fn batch_delete_is_all_or_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = create_batch(&mut client, &["A", "B", "C"]).await;
    let mut ids: Vec<String> = created.iter().map(|c| c.id.clone()).collect();
    ids.insert(1, uuid::Uuid::now_v7().to_string());
    let status = client.batch_delete_contacts(BatchDeleteContactsRequest { ids: ids.clone() }).await.unwrap_err();
    let info = assert_error(&status, Code::NotFound, "NOT_FOUND");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("ids[1]"));
    let listed = client
        .batch_get_contacts(BatchGetContactsRequest {
            ids: created.iter().map(|c| c.id.clone()).collect(),
            read_mask: None,
        })
        .await
        .expect("get")
        .into_inner()
        .contacts;
    assert!(listed.iter().all(|c| c.delete_time.is_none()));

    ids.remove(1);
    let deleted = client.batch_delete_contacts(BatchDeleteContactsRequest { ids }).await.expect("delete").into_inner();
    assert!(deleted.contacts.iter().all(|c| c.delete_time.is_some() && c.revision == 2));
    let status = client.batch_delete_contacts(BatchDeleteContactsRequest { ids: vec![] }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_REQUIRED");
    let status = client
        .batch_delete_contacts(BatchDeleteContactsRequest { ids: vec![uuid::Uuid::now_v7().to_string(); 501] })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "TOO_MANY");
}

async fn expired_soft_deleted_contacts_are_purged(backend: Backend) {
    let app = spawn_app_with(backend, |o| {
        o.retention = Some(Duration::from_millis(200));
        o.purge_interval = Some(Duration::from_millis(50));
    })
    .await;
    let mut client = app.contacts("t1");
    let created = create_batch(&mut client, &["Gone", "Kept"]).await;
    client
        .delete_contact(DeleteContactRequest { id: created[0].id.clone(), etag: String::new() })
        .await
        .expect("delete");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.get_contact(GetContactRequest { id: created[0].id.clone(), read_mask: None }).await {
            Err(status) if status.code() == Code::NotFound => break,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the contact was not purged"),
            Err(other) => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count_rows(&app, "contacts").await, 1, "live contacts are never purged");
    client.get_contact(GetContactRequest { id: created[1].id.clone(), read_mask: None }).await.expect("kept");
}
