//! Hostile input at the edges: oversized and numerous metadata, the deepest
//! and longest filters allowed and one past them, the largest batches with
//! the largest fields, custom fields nested past any limit. Each is answered
//! with a clear INVALID_ARGUMENT or RESOURCE_EXHAUSTED (or served, when it
//! is within the limits), and the server keeps serving. (Masks with
//! thousands of paths are in machinery.rs.)

use agenda::api::{BatchCreateContactsRequest, Contact, CreateContactRequest, ListContactsRequest, RichText};
use prost_types::{ListValue, Struct, Value, value::Kind};
use tonic::{Code, Request, metadata::MetadataValue};

use crate::helpers::{Backend, Contacts, TestApp, assert_error, spawn_app};

on_both_backends!(
    oversized_and_numerous_metadata_are_refused_and_the_server_serves_on,
    the_deepest_and_longest_filters_allowed_answer_and_one_more_is_invalid,
    the_largest_batches_with_the_largest_fields_are_served_or_refused_whole,
    custom_fields_nested_past_the_limit_are_invalid,
);

fn create(contact: Contact) -> CreateContactRequest {
    CreateContactRequest { contact: Some(contact), request_id: String::new() }
}

fn named(name: &str) -> Contact {
    Contact { display_name: name.into(), ..Default::default() }
}

/// The server still answers an ordinary call (on a new connection if the
/// last one was closed: the channel reconnects).
async fn still_serving(app: &TestApp) {
    let mut contacts = app.contacts("hostile");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match contacts.create_contact(create(named("still here"))).await {
            Ok(_) => return,
            Err(status) => assert!(tokio::time::Instant::now() < deadline, "the server does not serve on: {status:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn call_with_metadata(app: &TestApp, entries: &[(String, String)]) -> tonic::Status {
    let mut request = Request::new(create(named("headers")));
    for (key, value) in entries {
        let key: tonic::metadata::MetadataKey<_> = key.parse().expect("key");
        let value: MetadataValue<_> = value.parse().expect("ascii");
        request.metadata_mut().insert(key, value);
    }
    app.contacts("hostile").create_contact(request).await.expect_err("too much metadata")
}

async fn oversized_and_numerous_metadata_are_refused_and_the_server_serves_on(backend: Backend) {
    let app = spawn_app(backend).await;
    // A header list over the server's HTTP/2 limit (16 KiB) is refused at
    // the protocol level: the connection is ended with ENHANCE_YOUR_CALM,
    // which the client reports as RESOURCE_EXHAUSTED (or, when it was still
    // sending, as the broken connection), and nothing of the call runs.
    for entries in [
        vec![("x-big".to_string(), "x".repeat(1 << 20))],
        vec![("x-big".to_string(), "x".repeat(64 << 10))],
        (0..10_000).map(|i| (format!("x-h{i}"), "v".to_string())).collect(),
    ] {
        let status = call_with_metadata(&app, &entries).await;
        let broken = status.code() == Code::Unknown && status.message() == "transport error";
        assert!(status.code() == Code::ResourceExhausted || broken, "{status:?}");
        still_serving(&app).await;
    }
    // Under the limit, metadata is the caller's business.
    let mut request = Request::new(create(named("fine")));
    request.metadata_mut().insert("x-fine", "x".repeat(8 << 10).parse().expect("ascii"));
    app.contacts("hostile").create_contact(request).await.expect("8 KiB of metadata");
    let page = app
        .contacts("hostile")
        .list_contacts(ListContactsRequest { filter: "display_name = \"headers\"".into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(page.contacts.is_empty(), "a refused call was served");
}

/// A filter of `depth` nested parentheses around one comparison.
fn nested(depth: usize) -> String {
    format!("{}display_name = \"x\"{}", "(".repeat(depth), ")".repeat(depth))
}

/// `count` comparisons joined by OR.
fn wide(count: usize) -> String {
    (0..count).map(|i| format!("organization = \"o{i}\"")).collect::<Vec<_>>().join(" OR ")
}

async fn list(contacts: &mut Contacts, filter: String) -> Result<usize, tonic::Status> {
    contacts
        .list_contacts(ListContactsRequest { filter, page_size: 10, ..Default::default() })
        .await
        .map(|page| page.into_inner().contacts.len())
}

async fn the_deepest_and_longest_filters_allowed_answer_and_one_more_is_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut contacts = app.contacts("hostile");
    contacts.create_contact(create(named("x"))).await.expect("create");
    // The parser allows 32 levels of nesting, each parenthesis one.
    assert_eq!(list(&mut contacts, nested(31)).await.expect("31 levels answer"), 1);
    let status = list(&mut contacts, nested(40)).await.expect_err("40 levels");
    assert_error(&status, Code::InvalidArgument, "FILTER_INVALID");
    // 2,000 characters are allowed: as many comparisons as fit.
    let mut longest = wide(1);
    for count in 2.. {
        let next = wide(count);
        if next.chars().count() > 2000 {
            break;
        }
        longest = next;
    }
    assert_eq!(list(&mut contacts, longest.clone()).await.expect("the longest filter answers"), 0);
    let status = list(&mut contacts, format!("{longest} OR organization = \"one more\"")).await.expect_err("too long");
    assert_error(&status, Code::InvalidArgument, "FILTER_INVALID");
    // Far too long is refused before it is read.
    let status = list(&mut contacts, "(".repeat(1 << 20)).await.expect_err("a megabyte of parentheses");
    assert_error(&status, Code::InvalidArgument, "FILTER_INVALID");
    still_serving(&app).await;
}

fn with_notes(name: &str, bytes: usize) -> Contact {
    Contact {
        display_name: name.into(),
        notes: Some(RichText { format: 0, raw: "*a* ".repeat(bytes / 4), html: String::new() }),
        ..Default::default()
    }
}

async fn the_largest_batches_with_the_largest_fields_are_served_or_refused_whole(backend: Backend) {
    let app = spawn_app(backend).await;
    // What was written comes back rendered, larger than what was sent.
    let mut contacts = app.contacts("hostile").max_decoding_message_size(64 << 20);
    // 500 contacts (the most a batch holds) with 64 KiB notes each: far over
    // the 4 MiB a request may be.
    let requests = (0..500).map(|i| create(with_notes(&format!("big {i}"), 64 * 1024))).collect();
    let status =
        contacts.batch_create_contacts(BatchCreateContactsRequest { requests }).await.expect_err("a 32 MiB batch");
    assert_error(&status, Code::ResourceExhausted, "MESSAGE_TOO_LARGE");
    // 501 small ones: one too many.
    let requests = (0..501).map(|i| create(named(&format!("small {i}")))).collect();
    let status = contacts.batch_create_contacts(BatchCreateContactsRequest { requests }).await.expect_err("501 items");
    assert_error(&status, Code::InvalidArgument, "TOO_MANY");
    // What fits in a request is served whole: 48 contacts with 64 KiB notes.
    let requests = (0..48).map(|i| create(with_notes(&format!("fits {i}"), 64 * 1024 - 8))).collect();
    let created = contacts
        .batch_create_contacts(BatchCreateContactsRequest { requests })
        .await
        .expect("a batch within the limits")
        .into_inner()
        .contacts;
    assert_eq!(created.len(), 48);
    // A field one byte over its limit fails the whole batch.
    let mut requests: Vec<CreateContactRequest> = (0..3).map(|i| create(named(&format!("ok {i}")))).collect();
    requests.push(create(Contact {
        display_name: "too long".into(),
        notes: Some(RichText { format: 0, raw: "a".repeat(64 * 1024 + 1), html: String::new() }),
        ..Default::default()
    }));
    let status = contacts.batch_create_contacts(BatchCreateContactsRequest { requests }).await.expect_err("too big");
    assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
    let page = contacts
        .list_contacts(ListContactsRequest { filter: "display_name:\"ok \"".into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(page.contacts.is_empty(), "part of a refused batch was written");
    still_serving(&app).await;
}

/// A Struct nesting `depth` levels of single-key structs.
fn deep(depth: usize) -> Struct {
    let mut value = Value { kind: Some(Kind::StringValue("bottom".into())) };
    for _ in 0..depth {
        value = Value { kind: Some(Kind::StructValue(Struct { fields: [("k".to_string(), value)].into() })) };
    }
    match value.kind {
        Some(Kind::StructValue(s)) => s,
        _ => Struct::default(),
    }
}

async fn custom_fields_nested_past_the_limit_are_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut contacts = app.contacts("hostile");
    let contact =
        |fields: Struct| Contact { display_name: "nested".into(), custom_fields: Some(fields), ..Default::default() };
    // Within the 16 levels custom fields may nest.
    contacts.create_contact(create(contact(deep(8)))).await.expect("8 levels");
    let status = contacts.create_contact(create(contact(deep(17)))).await.expect_err("17 levels");
    assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
    // Lists nest as deep.
    let mut value = Value { kind: Some(Kind::NumberValue(1.0)) };
    for _ in 0..20 {
        value = Value { kind: Some(Kind::ListValue(ListValue { values: vec![value] })) };
    }
    let fields = Struct { fields: [("list".to_string(), value)].into() };
    let status = contacts.create_contact(create(contact(fields))).await.expect_err("20 nested lists");
    assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
    // Past protobuf's own recursion limit the request does not decode: the
    // caller's error, not the server's.
    let status = contacts.create_contact(create(contact(deep(500)))).await.expect_err("500 levels");
    assert_error(&status, Code::InvalidArgument, "MALFORMED_REQUEST");
    still_serving(&app).await;
}
