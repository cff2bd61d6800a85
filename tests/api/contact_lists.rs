//! ListContacts: keyset pages, every filter operator and error, order_by,
//! show_deleted, read masks and tenants.

use std::collections::HashSet;

use agenda::api::{
    BatchCreateContactsRequest, Contact, CreateContactRequest, DeleteContactRequest, EmailAddress, ListContactsRequest,
};
use prost_types::{FieldMask, Struct, Value, value::Kind};
use tonic::Code;

use crate::helpers::{Backend, Contacts, assert_error, spawn_app};

on_both_backends!(
    pages_walk_every_contact_exactly_once_in_any_order,
    page_sizes_default_and_are_capped,
    page_tokens_belong_to_their_query,
    every_filter_operator_selects_what_it_says,
    filter_faults_name_their_position,
    order_by_faults_are_refused,
    deleted_contacts_show_only_when_asked,
    lists_never_cross_tenants,
);

fn number(n: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(n)) }
}

fn text(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

fn list(filter: &str, order_by: &str, page_size: i32, page_token: &str) -> ListContactsRequest {
    ListContactsRequest {
        page_size,
        page_token: page_token.into(),
        filter: filter.into(),
        order_by: order_by.into(),
        show_deleted: false,
        read_mask: None,
    }
}

/// Creates `count` contacts in batches of at most 500; names repeat so the
/// id must break ties.
async fn seed_many(client: &mut Contacts, count: usize) -> Vec<Contact> {
    let mut all = Vec::with_capacity(count);
    let items: Vec<CreateContactRequest> = (0..count)
        .map(|i| CreateContactRequest {
            contact: Some(Contact {
                display_name: format!("Person {:03}", i % 300),
                organization: ["ACME", "Initech", "Globex", ""][i % 4].into(),
                external_id: if i % 3 == 0 { format!("crm-{i}") } else { String::new() },
                custom_fields: Some(Struct { fields: [("rank".into(), text(&format!("{:02}", i % 50)))].into() }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .collect();
    for chunk in items.chunks(500) {
        let created = client
            .batch_create_contacts(BatchCreateContactsRequest { requests: chunk.to_vec() })
            .await
            .expect("batch create")
            .into_inner();
        all.extend(created.contacts);
    }
    all
}

async fn walk(client: &mut Contacts, filter: &str, order_by: &str, page_size: i32) -> Vec<Contact> {
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client.list_contacts(list(filter, order_by, page_size, &token)).await.expect("list").into_inner();
        assert!(page.contacts.len() <= page_size as usize);
        seen.extend(page.contacts);
        if page.next_page_token.is_empty() {
            return seen;
        }
        token = page.next_page_token;
    }
}

fn key(c: &Contact) -> (String, String) {
    (c.display_name.clone(), c.id.clone())
}

async fn pages_walk_every_contact_exactly_once_in_any_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed_many(&mut client, 1200).await;
    let ids: HashSet<String> = created.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), 1200);

    for (order_by, page_size) in [
        ("", 100),
        ("display_name desc", 173),
        ("create_time desc", 250),
        ("organization, display_name desc", 97),
        ("custom_fields.rank, create_time", 301),
        ("external_id desc", 500),
    ] {
        let seen = walk(&mut client, "", order_by, page_size).await;
        let seen_ids: Vec<String> = seen.iter().map(|c| c.id.clone()).collect();
        let unique: HashSet<String> = seen_ids.iter().cloned().collect();
        assert_eq!(seen_ids.len(), 1200, "{order_by}: every contact once");
        assert_eq!(unique, ids, "{order_by}");
        // Each order really holds, pairwise.
        for pair in seen.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let ordered = match order_by {
                "" => key(a) < key(b),
                "display_name desc" => key(a) > key(b),
                "create_time desc" => {
                    let t = |c: &Contact| c.create_time.map(|t| (t.seconds, t.nanos));
                    (t(a), &a.id) > (t(b), &b.id)
                }
                "organization, display_name desc" => {
                    a.organization < b.organization || (a.organization == b.organization && key(a) > key(b))
                }
                "external_id desc" => (&a.external_id, &a.id) > (&b.external_id, &b.id),
                "custom_fields.rank, create_time" => {
                    let rank = |c: &Contact| match c.custom_fields.as_ref().and_then(|f| f.fields.get("rank")) {
                        Some(Value { kind: Some(Kind::StringValue(s)) }) => s.clone(),
                        other => panic!("no rank in {other:?}"),
                    };
                    let t = |c: &Contact| c.create_time.map(|t| (t.seconds, t.nanos));
                    (rank(a), t(a), &a.id) < (rank(b), t(b), &b.id)
                }
                other => panic!("no order check for {other:?}"),
            };
            assert!(ordered, "{order_by}: {a:?} before {b:?}");
        }
    }
    // A filtered walk.
    let acme = walk(&mut client, "organization = \"ACME\"", "display_name", 64).await;
    assert_eq!(acme.len(), 300);
    assert!(acme.iter().all(|c| c.organization == "ACME"));
}

async fn page_sizes_default_and_are_capped(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    seed_many(&mut client, 1100).await;
    let page = client.list_contacts(list("", "", 0, "")).await.expect("list").into_inner();
    assert_eq!(page.contacts.len(), 50);
    assert!(!page.next_page_token.is_empty());
    let page = client.list_contacts(list("", "", 5000, "")).await.expect("list").into_inner();
    assert_eq!(page.contacts.len(), 1000, "larger pages are lowered to 1000");
    let page = client.list_contacts(list("", "", 1000, &page.next_page_token)).await.expect("list").into_inner();
    assert_eq!(page.contacts.len(), 100);
    assert!(page.next_page_token.is_empty(), "the last page has no token");
    let status = client.list_contacts(list("", "", -1, "")).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
}

async fn page_tokens_belong_to_their_query(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    seed_many(&mut client, 30).await;
    let page = client.list_contacts(list("organization = \"ACME\"", "", 2, "")).await.expect("list").into_inner();
    let token = page.next_page_token;
    for (filter, order_by) in [("organization = \"Initech\"", ""), ("organization = \"ACME\"", "create_time")] {
        let status = client.list_contacts(list(filter, order_by, 2, &token)).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
    }
    let mut deleted = list("organization = \"ACME\"", "", 2, &token);
    deleted.show_deleted = true;
    let status = client.list_contacts(deleted).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
    for garbage in ["garbage", "e30", "eyJxIjoiJyBPUiAxPTEgLS0iLCJhIjoieCJ9", &format!("{token}x"), "%%%"] {
        let status = client.list_contacts(list("organization = \"ACME\"", "", 2, garbage)).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
    }
    // Another tenant's token is refused, also where that tenant has rows the
    // token's position would otherwise select.
    let mut other = app.contacts("t2");
    seed_many(&mut other, 30).await;
    let status = other.list_contacts(list("organization = \"ACME\"", "", 2, &token)).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
}

async fn every_filter_operator_selects_what_it_says(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let make = |name: &str, org: &str, email: &str, ext: &str, fields: Vec<(&str, Value)>| CreateContactRequest {
        contact: Some(Contact {
            display_name: name.into(),
            organization: org.into(),
            emails: if email.is_empty() {
                vec![]
            } else {
                vec![EmailAddress { address: email.into(), label: String::new(), primary: false }]
            },
            external_id: ext.into(),
            custom_fields: Some(Struct { fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let created = client
        .batch_create_contacts(BatchCreateContactsRequest {
            requests: vec![
                make(
                    "Ada Lovelace",
                    "ACME",
                    "ada@acme.com",
                    "a-1",
                    vec![
                        ("source", text("web")),
                        ("score", number(7.0)),
                        ("vip", Value { kind: Some(Kind::BoolValue(true)) }),
                    ],
                ),
                make(
                    "Grace Hopper",
                    "Navy",
                    "grace@navy.mil",
                    "",
                    vec![("source", text("fair")), ("score", number(3.5))],
                ),
                make("Alan Turing", "ACME", "", "a-3", vec![("source", text("Web 100%")), ("score", text("7"))]),
                make("Edsger 'O' Dijkstra", "", "ed@uu.nl", "", vec![]),
            ],
        })
        .await
        .expect("seed")
        .into_inner()
        .contacts;
    let t1 = created[0].create_time.expect("time");
    let cutoff = chrono::DateTime::from_timestamp(t1.seconds, t1.nanos as u32).expect("time").to_rfc3339();

    let cases: Vec<(String, Vec<&str>)> = vec![
        ("display_name = \"Ada Lovelace\"".into(), vec!["Ada Lovelace"]),
        ("display_name != \"Ada Lovelace\"".into(), vec!["Alan Turing", "Edsger 'O' Dijkstra", "Grace Hopper"]),
        ("display_name < \"B\"".into(), vec!["Ada Lovelace", "Alan Turing"]),
        ("display_name <= \"Ada Lovelace\"".into(), vec!["Ada Lovelace"]),
        ("display_name > \"F\"".into(), vec!["Grace Hopper"]),
        ("display_name >= \"Grace Hopper\"".into(), vec!["Grace Hopper"]),
        ("display_name:\"LOVE\"".into(), vec!["Ada Lovelace"]),
        ("display_name:\"'O'\"".into(), vec!["Edsger 'O' Dijkstra"]),
        ("organization = \"ACME\" AND display_name:\"a\"".into(), vec!["Ada Lovelace", "Alan Turing"]),
        ("organization = \"Navy\" OR external_id = \"a-3\"".into(), vec!["Alan Turing", "Grace Hopper"]),
        ("NOT organization = \"ACME\"".into(), vec!["Edsger 'O' Dijkstra", "Grace Hopper"]),
        ("-organization = \"ACME\"".into(), vec!["Edsger 'O' Dijkstra", "Grace Hopper"]),
        (
            "(organization = \"ACME\" OR organization = \"Navy\") AND NOT display_name:\"turing\"".into(),
            vec!["Ada Lovelace", "Grace Hopper"],
        ),
        ("external_id = \"\"".into(), vec!["Edsger 'O' Dijkstra", "Grace Hopper"]),
        ("emails.address = \"ada@acme.com\"".into(), vec!["Ada Lovelace"]),
        ("emails.address != \"ada@acme.com\"".into(), vec!["Alan Turing", "Edsger 'O' Dijkstra", "Grace Hopper"]),
        ("emails.address:\"NAVY\"".into(), vec!["Grace Hopper"]),
        ("custom_fields.source = \"web\"".into(), vec!["Ada Lovelace"]),
        ("custom_fields.source:\"web\"".into(), vec!["Ada Lovelace", "Alan Turing"]),
        ("custom_fields.source:\"100%\"".into(), vec!["Alan Turing"]),
        ("custom_fields.source:\"%\"".into(), vec!["Alan Turing"]),
        ("custom_fields.source != \"web\"".into(), vec!["Alan Turing", "Grace Hopper"]),
        ("custom_fields.score > 5".into(), vec!["Ada Lovelace"]),
        ("custom_fields.score <= 3.5".into(), vec!["Grace Hopper"]),
        ("custom_fields.score = \"7\"".into(), vec!["Alan Turing"]),
        ("custom_fields.vip = true".into(), vec!["Ada Lovelace"]),
        ("custom_fields.missing = \"x\"".into(), vec![]),
        (
            format!("create_time >= \"{cutoff}\""),
            vec!["Ada Lovelace", "Alan Turing", "Edsger 'O' Dijkstra", "Grace Hopper"],
        ),
        (format!("create_time < \"{cutoff}\""), vec![]),
        (
            "update_time > \"2000-01-01T00:00:00+02:00\"".into(),
            vec!["Ada Lovelace", "Alan Turing", "Edsger 'O' Dijkstra", "Grace Hopper"],
        ),
        ("display_name = \"x'); DROP TABLE contacts; --\"".into(), vec![]),
    ];
    for (filter, expected) in cases {
        let page = client.list_contacts(list(&filter, "", 100, "")).await.unwrap_or_else(|s| panic!("{filter}: {s:?}"));
        let mut names: Vec<String> = page.into_inner().contacts.into_iter().map(|c| c.display_name).collect();
        names.sort();
        assert_eq!(names, expected, "{filter}");
    }
}

async fn filter_faults_name_their_position(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let cases: Vec<(String, usize)> = vec![
        ("display_name = \"a\" AND password = \"x\"".into(), 23),
        ("job_title = \"x\"".into(), 0),
        ("create_time > \"yesterday\"".into(), 14),
        ("create_time:\"2026\"".into(), 12),
        ("display_name = 3".into(), 15),
        ("emails.address > \"a\"".into(), 17),
        ("display_name = \"open".into(), 15),
        ("display_name".into(), 12),
        ("(display_name = \"a\"".into(), 0),
        ("display_name = \"a\" display_name = \"b\"".into(), 19),
        ("custom_fields.bad!key = 1".into(), 17),
        (format!("{}display_name = \"a\"{}", "(".repeat(40), ")".repeat(40)), 32),
        (format!("display_name = \"{}\"", "a".repeat(2000)), 2000),
    ];
    for (filter, position) in cases {
        let status = client.list_contacts(list(&filter, "", 10, "")).await.unwrap_err();
        let info = assert_error(&status, Code::InvalidArgument, "FILTER_INVALID");
        assert_eq!(info.metadata.get("field").map(String::as_str), Some("filter"));
        assert_eq!(info.metadata.get("position"), Some(&position.to_string()), "{filter}: {}", status.message());
    }
}

async fn order_by_faults_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    for (order_by, position) in [
        ("password", 0),
        ("display_name, emails.address", 14),
        ("display_name sideways", 0),
        ("display_name, display_name desc", 14),
        ("id", 0),
        ("display_name,", 13),
    ] {
        let status = client.list_contacts(list("", order_by, 10, "")).await.unwrap_err();
        let info = assert_error(&status, Code::InvalidArgument, "ORDER_BY_INVALID");
        assert_eq!(info.metadata.get("position"), Some(&position.to_string()), "{order_by}");
    }
}

async fn deleted_contacts_show_only_when_asked(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let created = seed_many(&mut client, 5).await;
    client
        .delete_contact(DeleteContactRequest { id: created[2].id.clone(), etag: String::new() })
        .await
        .expect("delete");
    let page = client.list_contacts(list("", "", 10, "")).await.expect("list").into_inner();
    assert_eq!(page.contacts.len(), 4);
    assert!(page.contacts.iter().all(|c| c.id != created[2].id));
    let mut all = list("", "", 10, "");
    all.show_deleted = true;
    all.read_mask = Some(FieldMask { paths: vec!["delete_time".into()] });
    let page = client.list_contacts(all).await.expect("list").into_inner();
    assert_eq!(page.contacts.len(), 5);
    let deleted: Vec<_> = page.contacts.iter().filter(|c| c.delete_time.is_some()).collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].id, created[2].id);
    assert!(page.contacts.iter().all(|c| c.display_name.is_empty()), "the read mask applies to lists");
}

async fn lists_never_cross_tenants(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut alice = app.contacts("t1");
    let mut bob = app.contacts("t2");
    seed_many(&mut alice, 20).await;
    seed_many(&mut bob, 3).await;
    let page = bob.list_contacts(list("", "", 100, "")).await.expect("list").into_inner();
    assert_eq!(page.contacts.len(), 3);
    let page =
        bob.list_contacts(list("display_name:\"Person\" OR organization != \"\"", "", 100, "")).await.expect("list");
    assert_eq!(page.into_inner().contacts.len(), 3);
}
