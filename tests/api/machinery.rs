//! The shared machinery under the requests that once broke it: work bounded
//! by a request's size and the configured limits (masks, repeated ids,
//! response budgets), upserts that cannot both win, errors classified by who
//! can fix them, deadlines PostgreSQL cannot hold, page tokens that outlive
//! their anchor, and permits held while database work still runs.

use std::{collections::HashSet, convert::Infallible, time::Duration};

use agenda::{
    api::{
        BatchGetContactsRequest, BatchUpdateContactsRequest, Contact, CreateContactRequest, GetContactRequest,
        ListContactsRequest, RichText, UpdateContactRequest,
    },
    config::Database,
    limits::LimitLayer,
    store::Db,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use prost_types::{FieldMask, Struct, Value, value::Kind};
use tonic::{Code, Request};
use tonic_types::StatusExt;
use tower::{Layer, Service, ServiceExt};

use crate::{
    helpers::{Backend, Contacts, assert_error, count_rows, postgres, spawn_app, spawn_app_with},
    ops::lock_waiters,
};

on_both_backends!(
    read_masks_are_bounded_and_checked_once,
    update_masks_are_bounded_before_any_write,
    answers_are_held_to_the_response_budget,
    concurrent_upserts_of_a_new_id_create_it_once,
    text_a_database_cannot_hold_is_the_callers_error,
    deadlines_longer_than_postgresql_accepts_still_write,
    a_page_token_whose_anchor_was_purged_is_refused,
    duplicate_external_ids_in_a_batch_update_name_their_items,
    request_ids_create_time_is_not_null,
    custom_field_keys_share_one_grammar,
    a_dropped_call_holds_its_permit_until_its_database_work_ends,
    a_request_that_does_not_decode_is_the_callers_error,
);

fn contact(name: &str) -> Contact {
    Contact { display_name: name.into(), ..Default::default() }
}

fn text(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

async fn create(client: &mut Contacts, contact: Contact) -> Contact {
    client
        .create_contact(CreateContactRequest { contact: Some(contact), request_id: String::new() })
        .await
        .expect("create")
        .into_inner()
}

fn paths(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

async fn read_masks_are_bounded_and_checked_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let ada = create(&mut client, Contact { organization: "ACME".into(), ..contact("Ada") }).await;
    // 100,000 paths: once the mask was re-checked for every row of 1,000.
    let huge = vec!["id"; 100_000];
    let status = client
        .batch_get_contacts(BatchGetContactsRequest { ids: vec![ada.id.clone(); 1000], read_mask: paths(&huge) })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "TOO_MANY");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("read_mask"));
    // The limit itself is fine, and repeats count once.
    let many = vec!["display_name"; 256];
    let got = client
        .batch_get_contacts(BatchGetContactsRequest { ids: vec![ada.id.clone(); 1000], read_mask: paths(&many) })
        .await
        .expect("batch get")
        .into_inner()
        .contacts;
    assert_eq!(got.len(), 1000);
    assert!(got.iter().all(|c| c.id == ada.id && c.display_name == "Ada" && c.organization.is_empty()));
    let status = client
        .list_contacts(ListContactsRequest { read_mask: paths(&vec!["id"; 257]), ..Default::default() })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "TOO_MANY");
}

async fn update_masks_are_bounded_before_any_write(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let id = uuid::Uuid::now_v7().to_string();
    let upsert = |mask: Option<FieldMask>| UpdateContactRequest {
        contact: Some(Contact { id: id.clone(), ..contact("Ada") }),
        update_mask: mask,
        allow_missing: true,
        comment: None,
    };
    // 100,000 "*": once each added every writable field, inside the transaction.
    let status = client.update_contact(upsert(paths(&vec!["*"; 100_000]))).await.unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "TOO_MANY");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("update_mask"));
    assert_eq!(count_rows(&app, "contacts").await, 0, "nothing was written");
    let created = client.update_contact(upsert(paths(&["*", "*", "display_name", "*"]))).await.expect("upsert");
    assert_eq!(created.into_inner().revision, 1);
}

/// A contact of about 320 KB on the wire: 64 KiB of `<` render to 256 KiB of HTML.
fn heavy(name: &str) -> Contact {
    Contact { notes: Some(RichText { format: 1, raw: "<".repeat(64 * 1024), html: String::new() }), ..contact(name) }
}

async fn answers_are_held_to_the_response_budget(backend: Backend) {
    const BUDGET: usize = 1024 * 1024;
    let app = spawn_app_with(backend, |o| o.max_response_bytes = Some(BUDGET)).await;
    let mut client = app.contacts("t1");
    let mut ids = Vec::new();
    for name in ["A", "B", "C", "D", "E"] {
        ids.push(create(&mut client, heavy(name)).await.id);
    }
    // One heavy contact asked for 1,000 times: once a 328 MB answer was built.
    let status = client
        .batch_get_contacts(BatchGetContactsRequest { ids: vec![ids[0].clone(); 1000], read_mask: None })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::ResourceExhausted, "MESSAGE_TOO_LARGE");
    assert_eq!(info.metadata.get("limit_bytes"), Some(&BUDGET.to_string()));
    // Within the budget it answers, also with repeats.
    let two = client
        .batch_get_contacts(BatchGetContactsRequest {
            ids: vec![ids[1].clone(), ids[0].clone(), ids[1].clone()],
            read_mask: None,
        })
        .await
        .expect("three fit")
        .into_inner()
        .contacts;
    assert_eq!(two.iter().map(|c| c.display_name.as_str()).collect::<Vec<_>>(), ["B", "A", "B"]);
    let masked = client
        .batch_get_contacts(BatchGetContactsRequest { ids: vec![ids[0].clone(); 1000], read_mask: paths(&["id"]) })
        .await
        .expect("small when masked");
    assert_eq!(masked.into_inner().contacts.len(), 1000);

    // A list page stops early with a token, and the walk still sees every contact once.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_contacts(ListContactsRequest { page_size: 1000, page_token: token.clone(), ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        assert!(!page.contacts.is_empty(), "no empty page before the end");
        assert!(page.contacts.len() < 5, "a page of five would outgrow the budget");
        seen.extend(page.contacts.into_iter().map(|c| c.display_name));
        pages += 1;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["A", "B", "C", "D", "E"]);
    assert!(pages >= 2);
}

async fn concurrent_upserts_of_a_new_id_create_it_once(backend: Backend) {
    let app = spawn_app(backend).await;
    for _trial in 0..5 {
        let id = uuid::Uuid::now_v7().to_string();
        let mut calls = Vec::new();
        for writer in 0..8 {
            let mut client = app.contacts("t1");
            let id = id.clone();
            calls.push(tokio::spawn(async move {
                client
                    .update_contact(UpdateContactRequest {
                        contact: Some(Contact { id, ..contact(&format!("writer {writer}")) }),
                        update_mask: paths(&["display_name"]),
                        allow_missing: true,
                        comment: None,
                    })
                    .await
            }));
        }
        let mut answers = Vec::new();
        for call in calls {
            match call.await.expect("task") {
                Ok(response) => answers.push(response.into_inner()),
                Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
            }
        }
        let created: Vec<_> = answers.iter().filter(|c| c.revision == 1).collect();
        assert_eq!(created.len(), 1, "exactly one caller created it: {answers:?}");
        let revisions: HashSet<i64> = answers.iter().map(|c| c.revision).collect();
        assert_eq!(revisions.len(), answers.len(), "no two answers share a revision: {answers:?}");
        let etags: HashSet<&str> = answers.iter().map(|c| c.etag.as_str()).collect();
        assert_eq!(etags.len(), answers.len(), "no two answers share an etag");
        let mut client = app.contacts("t1");
        let stored =
            client.get_contact(GetContactRequest { id: id.clone(), read_mask: None }).await.expect("get").into_inner();
        let last = answers.iter().max_by_key(|c| c.revision).expect("one answer");
        assert_eq!(stored.revision, last.revision, "the stored revision is the last answered");
        assert_eq!(stored.revision as usize, answers.len(), "each answer is one revision");
        assert_eq!(stored.display_name, last.display_name);
    }
}

async fn text_a_database_cannot_hold_is_the_callers_error(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let status = client
        .list_contacts(ListContactsRequest { filter: "display_name = \"\0\"".into(), ..Default::default() })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::InvalidArgument, "FILTER_INVALID");
    assert_eq!(info.metadata.get("position").map(String::as_str), Some("16"));
    let with_nul = [
        (
            Contact { notes: Some(RichText { format: 2, raw: "a\0b".into(), html: String::new() }), ..contact("A") },
            "contact.notes.raw",
        ),
        (
            Contact {
                custom_fields: Some(Struct { fields: [("k".to_string(), text("a\0b"))].into() }),
                ..contact("A")
            },
            "contact.custom_fields",
        ),
        (contact("A\0"), "contact.display_name"),
    ];
    for (sent, field) in with_nul {
        let status = client
            .create_contact(CreateContactRequest { contact: Some(sent), request_id: String::new() })
            .await
            .unwrap_err();
        let info = assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
        assert_eq!(info.metadata.get("field").map(String::as_str), Some(field));
        assert!(status.get_error_details().retry_info().is_none(), "a caller's error is not retryable");
    }
    assert_eq!(count_rows(&app, "contacts").await, 0);
}

fn with_timeout<T>(message: T, timeout: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("grpc-timeout", timeout.parse().expect("ascii"));
    request
}

async fn deadlines_longer_than_postgresql_accepts_still_write(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    // 99,999,999 s is past the 596 hours a statement_timeout can hold.
    let long = "99999999S";
    let created = client
        .create_contact(with_timeout(
            CreateContactRequest { contact: Some(contact("Ada")), request_id: String::new() },
            long,
        ))
        .await
        .expect("create with a long deadline")
        .into_inner();
    let updated = client
        .update_contact(with_timeout(
            UpdateContactRequest {
                contact: Some(Contact { id: created.id.clone(), ..contact("Ada L.") }),
                update_mask: None,
                allow_missing: false,
                comment: None,
            },
            long,
        ))
        .await
        .expect("update with a long deadline");
    assert_eq!(updated.into_inner().revision, 2);
    client
        .get_contact(with_timeout(GetContactRequest { id: created.id.clone(), read_mask: None }, long))
        .await
        .expect("get with a long deadline");
    client.list_contacts(with_timeout(ListContactsRequest::default(), long)).await.expect("list with a long deadline");

    // Reads get the deadline as a statement timeout too: a read kept waiting
    // by a table lock ends at its deadline, in the database as well.
    if backend == Backend::Postgres {
        let mut blocker = AsyncPgConnection::establish(&app.database_url).await.expect("connect");
        blocker.batch_execute("BEGIN; LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE").await.expect("lock");
        let status = client
            .get_contact(with_timeout(GetContactRequest { id: created.id.clone(), read_mask: None }, "300m"))
            .await
            .unwrap_err();
        // On a loaded machine the client's own timer (CANCELLED in tonic) can be first.
        let client_timer = status.code() == Code::Cancelled && status.message().contains("Timeout expired");
        assert!(status.code() == Code::DeadlineExceeded || client_timer, "{status:?}");
        let mut left = i64::MAX;
        for _ in 0..100 {
            left = lock_waiters(&mut blocker).await;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(left, 0, "the read stopped waiting in the database at its deadline");
        blocker.batch_execute("ROLLBACK").await.expect("unlock");
    }
}

async fn a_page_token_whose_anchor_was_purged_is_refused(backend: Backend) {
    let app = spawn_app_with(backend, |o| {
        o.retention = Some(Duration::from_millis(200));
        o.purge_interval = Some(Duration::from_millis(50));
    })
    .await;
    let mut client = app.contacts("t1");
    for name in ["A", "B", "C"] {
        create(&mut client, contact(name)).await;
    }
    let list = |token: &str| ListContactsRequest {
        page_size: 2,
        page_token: token.into(),
        show_deleted: true,
        ..Default::default()
    };
    let first = client.list_contacts(list("")).await.expect("page 1").into_inner();
    let anchor = first.contacts.last().expect("two contacts").clone();
    assert_eq!(anchor.display_name, "B");
    client
        .delete_contact(agenda::api::DeleteContactRequest { id: anchor.id.clone(), etag: String::new() })
        .await
        .expect("delete");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.get_contact(GetContactRequest { id: anchor.id.clone(), read_mask: None }).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the contact was not purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once an empty last page: the listing looked finished with C unseen.
    let status = client.list_contacts(list(&first.next_page_token)).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
}

async fn duplicate_external_ids_in_a_batch_update_name_their_items(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let mut contacts = Vec::new();
    for name in ["A", "B", "C"] {
        contacts.push(create(&mut client, contact(name)).await);
    }
    let update = |c: &Contact, external_id: &str| UpdateContactRequest {
        contact: Some(Contact { id: c.id.clone(), external_id: external_id.into(), ..contact(&c.display_name) }),
        update_mask: paths(&["display_name", "external_id"]),
        allow_missing: false,
        comment: None,
    };
    let status = client
        .batch_update_contacts(BatchUpdateContactsRequest {
            requests: vec![update(&contacts[0], ""), update(&contacts[1], "crm-7"), update(&contacts[2], "crm-7")],
        })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::AlreadyExists, "DUPLICATE");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("requests[2].contact.external_id"));
    assert!(status.message().contains("requests[2] and requests[1]"), "{status:?}");
}

async fn request_ids_create_time_is_not_null(backend: Backend) {
    #[derive(diesel::QueryableByName, Debug)]
    struct Column {
        #[diesel(sql_type = diesel::sql_types::Text)]
        kind: String,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        not_null: bool,
    }
    let app = spawn_app(backend).await;
    let column: Column = match backend {
        Backend::Postgres => {
            let mut conn = AsyncPgConnection::establish(&app.database_url).await.expect("connect");
            diesel::sql_query(
                "SELECT data_type::text AS kind, is_nullable = 'NO' AS not_null FROM information_schema.columns \
                 WHERE table_name = 'request_ids' AND column_name = 'create_time'",
            )
            .get_result(&mut conn)
            .await
            .expect("column")
        }
        Backend::Sqlite => {
            let path = app.database_url.trim_start_matches("sqlite://").to_string();
            let mut conn = agenda::store::SqliteConn::establish(&path).await.expect("connect");
            diesel::sql_query(
                "SELECT type AS kind, \"notnull\" = 1 AS not_null FROM pragma_table_info('request_ids') \
                 WHERE name = 'create_time'",
            )
            .get_result(&mut conn)
            .await
            .expect("column")
        }
    };
    assert!(column.not_null, "{column:?}");
    assert!(["INTEGER", "bigint"].contains(&column.kind.as_str()), "{column:?}");
}

async fn custom_field_keys_share_one_grammar(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.contacts("t1");
    let with_key = |name: &str, value: &str| Contact {
        custom_fields: Some(Struct { fields: [("lead-source".to_string(), text(value))].into() }),
        ..contact(name)
    };
    let web = create(&mut client, with_key("Web", "web")).await;
    create(&mut client, with_key("Fair", "fair")).await;
    let page = client
        .list_contacts(ListContactsRequest {
            filter: "custom_fields.lead-source = \"web\"".into(),
            read_mask: paths(&["custom_fields.lead-source"]),
            ..Default::default()
        })
        .await
        .expect("a key with '-' filters")
        .into_inner();
    assert_eq!(page.contacts.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [web.id.as_str()]);
    let ordered = client
        .list_contacts(ListContactsRequest { order_by: "custom_fields.lead-source desc".into(), ..Default::default() })
        .await
        .expect("and orders")
        .into_inner();
    assert_eq!(ordered.contacts.iter().map(|c| c.display_name.as_str()).collect::<Vec<_>>(), ["Web", "Fair"]);
    let updated = client
        .update_contact(UpdateContactRequest {
            contact: Some(Contact { id: web.id.clone(), ..with_key("Web", "ads") }),
            update_mask: paths(&["custom_fields.lead-source"]),
            allow_missing: false,
            comment: None,
        })
        .await
        .expect("and updates")
        .into_inner();
    assert_eq!(updated.custom_fields.and_then(|f| f.fields.get("lead-source").cloned()), Some(text("ads")));
    let status = client
        .list_contacts(ListContactsRequest { filter: "custom_fields.lead.source = 1".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FILTER_INVALID");
}

/// The limits layer around a service whose database work outlives the
/// call's deadline: the call is answered at its deadline, but its permit is
/// held until that work has ended, so such calls cannot pile up past the limit.
async fn a_dropped_call_holds_its_permit_until_its_database_work_ends(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = match backend {
        Backend::Sqlite => Database::Sqlite(dir.path().join("agenda.db")),
        Backend::Postgres => Database::Postgres(postgres().new_database().await),
    };
    Db::migrate(&database).await.expect("migrate");
    let db = Db::connect(&database, 4).expect("pools");
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let inner = tower::service_fn(move |_request: http::Request<()>| {
        let (db, done) = (db.clone(), done_tx.clone());
        async move {
            // Database work slower than the caller's deadline.
            let _ = db
                .read(move |_conn| {
                    Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(600)).await;
                        let _ = done.send(());
                        Ok(())
                    })
                })
                .await;
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        }
    });
    let mut limited = LimitLayer::new(1, 1024).layer(inner);
    let call = |timeout: Option<&str>| {
        let mut request = http::Request::builder().uri("/agenda.v1.ContactService/ListContacts");
        if let Some(timeout) = timeout {
            request = request.header("grpc-timeout", timeout);
        }
        request.body(()).expect("request")
    };
    let grpc_status = |response: &http::Response<tonic::body::Body>| {
        tonic::Status::from_header_map(response.headers()).map(|s| s.code())
    };
    let first = limited.ready().await.expect("ready").call(call(Some("50m"))).await.expect("answer");
    assert_eq!(grpc_status(&first), Some(Code::DeadlineExceeded));
    // The first call's work still runs: its permit is not free.
    let second = limited.ready().await.expect("ready").call(call(None)).await.expect("answer");
    assert_eq!(grpc_status(&second), Some(Code::ResourceExhausted), "the permit is still held");
    tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await.expect("the work ends").expect("sent");
    // Then it is.
    let mut freed = false;
    for _ in 0..100 {
        let mut probe = limited.clone();
        let third = tokio::time::timeout(
            Duration::from_millis(50),
            probe.ready().await.expect("ready").call(call(Some("20m"))),
        )
        .await;
        match third {
            Ok(Ok(response)) if grpc_status(&response) == Some(Code::ResourceExhausted) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                freed = true;
                break;
            }
        }
    }
    assert!(freed, "the permit came back once the work ended");
}

/// Sends raw bytes as a request message and ignores the answer's body.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf;
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn a_request_that_does_not_decode_is_the_callers_error(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = crate::helpers::token("t1", "contacts.write");
    // Garbage, a truncated message, and a string field holding invalid UTF-8
    // (CreateContactRequest.contact.display_name = 0xC3 0x28).
    for bytes in [vec![0xff, 0xff, 0xff], vec![0x0a, 0x10, 0x12], vec![0x0a, 0x04, 0x12, 0x02, 0xc3, 0x28]] {
        let mut grpc = tonic::client::Grpc::new(app.channel.clone());
        grpc.ready().await.expect("ready");
        let mut request = Request::new(bytes.clone());
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        let path = http::uri::PathAndQuery::from_static("/agenda.v1.ContactService/CreateContact");
        let status = grpc.unary(request, path, RawCodec).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "MALFORMED_REQUEST");
    }
    assert_eq!(count_rows(&app, "contacts").await, 0);
    // The server keeps serving.
    create(&mut app.contacts("t1"), contact("after")).await;
}
