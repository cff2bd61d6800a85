//! The change feed as a consumer sees it: one Change per mutation with its
//! diff, none for what changed nothing; a consumer that resumes never misses
//! or repeats a change, also with concurrent writers, across replicas, a lost
//! LISTEN connection and a watcher too slow to keep up; filters, tenants and
//! expired cursors. And writes whose calls are cancelled leave nothing open.

use std::{collections::HashSet, time::Duration};

use agenda::api::{
    BatchCreateContactsRequest, BatchDeleteContactsRequest, BatchUpdateContactsRequest, Change, ChangeKind, Contact,
    CreateContactRequest, DeleteContactRequest, ListChangesRequest, ResourceType, UndeleteContactRequest,
    UpdateContactRequest, WatchChangesRequest,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl as _};
use prost_types::{FieldMask, Value, value::Kind};
use tonic::{Code, Streaming};

use crate::helpers::{Backend, Changes, Contacts, TestApp, all_changes, assert_error, spawn_app, spawn_app_with};

/// Sequences only grow (on SQLite they are 1, 2, 3, …; on PostgreSQL they
/// come from transaction ids and have gaps).
fn strictly_increasing(changes: &[Change]) -> bool {
    changes.windows(2).all(|pair| pair[0].sequence < pair[1].sequence) && changes.iter().all(|c| c.sequence > 0)
}

on_both_backends!(
    every_contact_mutation_appends_exactly_one_change,
    concurrent_writers_and_a_resuming_consumer_see_every_change_once,
    a_watcher_replays_then_follows_live_changes,
    a_slow_watcher_is_cut_off_and_resumes_without_loss,
    resource_types_filter_the_feed,
    the_feed_is_isolated_per_tenant,
    an_expired_cursor_is_refused_with_the_oldest_sequence,
    cancelled_writes_leave_no_transaction_or_lock_behind,
    watch_streams_have_their_own_cap_and_end_on_drain,
    a_watch_ends_when_its_token_expires,
    a_write_cancelled_before_it_begins_runs_wholly_once_a_connection_frees,
);

fn contact(name: &str) -> Contact {
    Contact { display_name: name.into(), ..Default::default() }
}

fn create(name: &str, request_id: &str) -> CreateContactRequest {
    CreateContactRequest { contact: Some(contact(name)), request_id: request_id.into() }
}

fn rename(id: &str, name: &str) -> UpdateContactRequest {
    UpdateContactRequest {
        contact: Some(Contact { id: id.into(), ..contact(name) }),
        update_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
        allow_missing: false,
        comment: None,
    }
}

fn kind(change: &Change) -> ChangeKind {
    ChangeKind::try_from(change.kind).expect("a known kind")
}

fn text(value: &Option<Value>) -> Option<&str> {
    match value {
        Some(Value { kind: Some(Kind::StringValue(s)) }) => Some(s),
        _ => None,
    }
}

async fn every_contact_mutation_appends_exactly_one_change(backend: Backend) {
    let app = spawn_app_with(backend, |o| {
        o.retention = Some(Duration::from_millis(400));
        o.change_retention = Some(Duration::from_secs(3600));
        o.purge_interval = Some(Duration::from_millis(50));
    })
    .await;
    let (mut contacts, mut changes) = (app.contacts("t1"), app.changes("t1"));
    let request_id = uuid::Uuid::new_v4().to_string();
    let ada = contacts.create_contact(create("Ada", &request_id)).await.expect("create").into_inner();
    contacts.create_contact(create("Ada", &request_id)).await.expect("replay");
    contacts.update_contact(rename(&ada.id, "Ada L.")).await.expect("rename");
    contacts.update_contact(rename(&ada.id, "Ada L.")).await.expect("no-op");
    let upserted = uuid::Uuid::now_v7().to_string();
    contacts
        .update_contact(UpdateContactRequest { allow_missing: true, ..rename(&upserted, "Grace") })
        .await
        .expect("upsert");
    contacts.delete_contact(DeleteContactRequest { id: ada.id.clone(), etag: String::new() }).await.expect("delete");
    contacts.undelete_contact(UndeleteContactRequest { id: ada.id.clone() }).await.expect("undelete");
    let batch = contacts
        .batch_create_contacts(BatchCreateContactsRequest { requests: vec![create("B1", ""), create("B2", "")] })
        .await
        .expect("batch create")
        .into_inner()
        .contacts;
    contacts
        .batch_update_contacts(BatchUpdateContactsRequest {
            requests: vec![rename(&batch[0].id, "B1'"), rename(&batch[1].id, "B2'")],
        })
        .await
        .expect("batch update");
    // A failed batch changes nothing and appends nothing.
    let failed = contacts
        .batch_create_contacts(BatchCreateContactsRequest { requests: vec![create("ok", ""), create(" ", "")] })
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::InvalidArgument);
    contacts
        .batch_delete_contacts(BatchDeleteContactsRequest { ids: vec![batch[0].id.clone(), batch[1].id.clone()] })
        .await
        .expect("batch delete");

    // The two deleted batch contacts are purged after the retention.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let feed = loop {
        let feed = all_changes(&mut changes, 0).await;
        if feed.iter().filter(|c| kind(c) == ChangeKind::Purged).count() == 2 {
            break feed;
        }
        assert!(tokio::time::Instant::now() < deadline, "no PURGED changes: {feed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seen: Vec<(ChangeKind, &str, i64)> =
        feed.iter().map(|c| (kind(c), c.resource_id.as_str(), c.revision)).collect();
    let (b1, b2) = (batch[0].id.as_str(), batch[1].id.as_str());
    let expected = vec![
        (ChangeKind::Created, ada.id.as_str(), 1),
        (ChangeKind::Updated, ada.id.as_str(), 2),
        (ChangeKind::Created, upserted.as_str(), 1),
        (ChangeKind::Deleted, ada.id.as_str(), 3),
        (ChangeKind::Undeleted, ada.id.as_str(), 4),
        (ChangeKind::Created, b1, 1),
        (ChangeKind::Created, b2, 1),
        (ChangeKind::Updated, b1, 2),
        (ChangeKind::Updated, b2, 2),
        (ChangeKind::Deleted, b1, 3),
        (ChangeKind::Deleted, b2, 3),
    ];
    assert_eq!(&seen[..expected.len()], &expected[..]);
    let mut purged: Vec<(ChangeKind, &str, i64)> = seen[expected.len()..].to_vec();
    purged.sort_by_key(|(_, id, _)| *id);
    let mut want = vec![(ChangeKind::Purged, b1, 3), (ChangeKind::Purged, b2, 3)];
    want.sort_by_key(|(_, id, _)| *id);
    assert_eq!(purged, want);
    // Sequences only grow; every change is of a contact.
    assert!(strictly_increasing(&feed), "{feed:?}");
    if backend == Backend::Sqlite {
        assert_eq!(feed.iter().map(|c| c.sequence).collect::<Vec<_>>(), (1..=feed.len() as i64).collect::<Vec<_>>());
    }
    assert!(feed.iter().all(|c| c.resource_type == ResourceType::Contact as i32));
    // Who, which request, and the diff.
    let created = &feed[0];
    assert_eq!((created.actor.as_str(), created.request_id.as_str()), ("user-1", request_id.as_str()));
    let name = created.changes.iter().find(|c| c.field == "display_name").expect("display_name in the diff");
    assert_eq!((text(&name.old_value), text(&name.new_value)), (None, Some("Ada")));
    let renamed = &feed[1];
    assert_eq!(renamed.changes.len(), 1, "{renamed:?}");
    assert_eq!(renamed.changes[0].field, "display_name");
    assert_eq!(
        (text(&renamed.changes[0].old_value), text(&renamed.changes[0].new_value)),
        (Some("Ada"), Some("Ada L."))
    );
    let deleted = &feed[3];
    let fields: Vec<&str> = deleted.changes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, ["delete_time", "purge_time"]);
    assert!(feed.iter().filter(|c| kind(c) == ChangeKind::Purged).all(|c| c.actor.is_empty()));
    assert!(feed.iter().all(|c| c.time.is_some() && c.resource.is_none()), "resources only when asked for");
    // With include_resources, the contact as it was after each change.
    let with = changes
        .list_changes(ListChangesRequest { include_resources: true, page_size: 2, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    let Some(agenda::api::change::Resource::Contact(after)) = &with.changes[1].resource else {
        panic!("no contact in {:?}", with.changes[1]);
    };
    assert_eq!((after.display_name.as_str(), after.revision), ("Ada L.", 2));
    assert_eq!(with.next_start_after, with.changes[1].sequence);
}

/// The stored changes of the client's tenant once there are at least `count`
/// (on PostgreSQL a change is readable once every transaction older than
/// its own has ended, anywhere in the cluster: a moment after its commit).
async fn at_least(changes: &mut Changes, count: usize) -> Vec<Change> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let feed = all_changes(changes, 0).await;
        if feed.len() >= count {
            return feed;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of {count} changes: {feed:?}", feed.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Watches from `start_after` and collects until `stop` says so or the
/// stream ends; returns the changes and how the stream ended.
async fn collect(
    stream: &mut Streaming<Change>,
    mut stop: impl FnMut(&[Change]) -> bool,
) -> (Vec<Change>, Option<tonic::Status>) {
    let mut got = Vec::new();
    loop {
        if stop(&got) {
            return (got, None);
        }
        match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
            Ok(Ok(Some(change))) => got.push(change),
            Ok(Ok(None)) => return (got, None),
            Ok(Err(status)) => return (got, Some(status)),
            Err(_) => panic!("no change within 20 s after {} changes", got.len()),
        }
    }
}

async fn watch(changes: &mut Changes, start_after: i64) -> Streaming<Change> {
    changes.watch_changes(WatchChangesRequest { start_after, ..Default::default() }).await.expect("watch").into_inner()
}

async fn concurrent_writers_and_a_resuming_consumer_see_every_change_once(backend: Backend) {
    const WRITERS: usize = 8;
    const EACH: usize = 30;
    let app = spawn_app(backend).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut contacts: Contacts = app.contacts("t1");
            tokio::spawn(async move {
                let mut acknowledged = 0;
                for i in 0..EACH {
                    let made = contacts.create_contact(create(&format!("w{w}-{i}"), "")).await.expect("create");
                    acknowledged += 1;
                    if i % 3 == 0 {
                        contacts
                            .update_contact(rename(&made.into_inner().id, &format!("w{w}-{i}'")))
                            .await
                            .expect("rename");
                        acknowledged += 1;
                    }
                }
                acknowledged
            })
        })
        .collect();
    // A consumer that reads a while, goes away, and resumes from the last
    // sequence it saw, several times while the writers run.
    let mut consumer = app.changes("t1");
    let mut seen: Vec<Change> = Vec::new();
    let total = WRITERS * (EACH + EACH.div_ceil(3));
    for round in 0.. {
        let last = seen.last().map_or(0, |c| c.sequence);
        let mut stream = watch(&mut consumer, last).await;
        let want = if round < 4 { (seen.len() + 25).min(total) } else { total };
        let (got, ended) = collect(&mut stream, |got| seen.len() + got.len() >= want).await;
        assert!(ended.is_none(), "{ended:?}");
        seen.extend(got);
        drop(stream);
        if seen.len() >= total {
            break;
        }
    }
    let mut acknowledged = 0;
    for writer in writers {
        acknowledged += writer.await.expect("writer");
    }
    assert_eq!(acknowledged, total);
    assert!(strictly_increasing(&seen), "every change once, in sequence order");
    let stored: Vec<i64> = at_least(&mut consumer, total).await.iter().map(|c| c.sequence).collect();
    assert_eq!(seen.iter().map(|c| c.sequence).collect::<Vec<_>>(), stored, "exactly the stored feed");
    let unique: HashSet<(&str, i64)> = seen.iter().map(|c| (c.resource_id.as_str(), c.revision)).collect();
    assert_eq!(unique.len(), total, "no change seen twice");
    // Nothing more arrives: the stream has nothing after the last.
    let mut stream = watch(&mut consumer, seen.last().map_or(0, |c| c.sequence)).await;
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.message()).await.is_err());
}

async fn a_watcher_replays_then_follows_live_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut contacts, mut changes) = (app.contacts("t1"), app.changes("t1"));
    for name in ["A", "B", "C"] {
        contacts.create_contact(create(name, "")).await.expect("create");
    }
    let stored: Vec<i64> = at_least(&mut changes, 3).await.iter().map(|c| c.sequence).collect();
    let mut stream = watch(&mut changes, stored[0]).await;
    let (replayed, _) = collect(&mut stream, |got| got.len() == 2).await;
    assert_eq!(replayed.iter().map(|c| c.sequence).collect::<Vec<_>>(), stored[1..]);
    for name in ["D", "E"] {
        contacts.create_contact(create(name, "")).await.expect("create");
    }
    let (live, _) = collect(&mut stream, |got| got.len() == 2).await;
    let stored: Vec<i64> = at_least(&mut changes, 5).await.iter().map(|c| c.sequence).collect();
    assert_eq!(live.iter().map(|c| c.sequence).collect::<Vec<_>>(), stored[3..]);
    // A cursor beyond the newest is not an error: it waits for what comes.
    let mut ahead = watch(&mut changes, i64::MAX / 2).await;
    assert!(tokio::time::timeout(Duration::from_millis(200), ahead.message()).await.is_err());
}

async fn a_slow_watcher_is_cut_off_and_resumes_without_loss(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut contacts = app.contacts("t1");
    // A client with small HTTP/2 windows, so what it does not read stays on the server.
    let slow = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect_lazy();
    let mut changes = crate::helpers::changes_on(slow, "t1");
    let mut stream = watch(&mut changes, 0).await;
    // Far more changes than a watcher may have queued, while it reads nothing.
    const TOTAL: usize = 4000;
    for batch in 0..TOTAL / 500 {
        let requests = (0..500).map(|i| create(&format!("c{batch}-{i}"), "")).collect();
        contacts.batch_create_contacts(BatchCreateContactsRequest { requests }).await.expect("batch");
    }
    let (mut seen, ended) = collect(&mut stream, |got| got.len() >= TOTAL).await;
    let status = ended.expect("the slow watcher was cut off");
    let info = assert_error(&status, Code::Unavailable, "WATCH_ENDED");
    let resume: i64 = info.metadata.get("resume_after").and_then(|v| v.parse().ok()).expect("resume_after");
    assert_eq!(resume, seen.last().map_or(0, |c| c.sequence), "resume after what was received");
    let mut stream = watch(&mut changes, resume).await;
    let (rest, ended) = collect(&mut stream, |got| seen.len() + got.len() >= TOTAL).await;
    assert!(ended.is_none());
    seen.extend(rest);
    assert!(strictly_increasing(&seen));
    assert_eq!(seen.len(), TOTAL, "every change once");
}

async fn resource_types_filter_the_feed(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut contacts, mut changes) = (app.contacts("t1"), app.changes("t1"));
    let mut activities_only = changes
        .watch_changes(WatchChangesRequest {
            resource_types: vec![ResourceType::Activity as i32],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    contacts.create_contact(create("A", "")).await.expect("create");
    contacts.create_contact(create("B", "")).await.expect("create");
    let both = at_least(&mut changes, 2).await;
    let page = changes
        .list_changes(ListChangesRequest { resource_types: vec![ResourceType::Contact as i32], ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.changes.len(), 2);
    let none = changes
        .list_changes(ListChangesRequest { resource_types: vec![ResourceType::Activity as i32], ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(none.changes.is_empty());
    assert!(none.next_start_after >= both[1].sequence, "a filtered page still moves the cursor past what it looked at");
    assert!(tokio::time::timeout(Duration::from_millis(300), activities_only.message()).await.is_err());
    let status =
        changes.list_changes(ListChangesRequest { resource_types: vec![0], ..Default::default() }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_INVALID");
}

async fn the_feed_is_isolated_per_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut t1 = app.contacts("t1");
    let mut t2 = app.contacts("t2");
    let mut t2_watch = watch(&mut app.changes("t2"), 0).await;
    for name in ["A", "B", "C"] {
        t1.create_contact(create(name, "")).await.expect("create");
    }
    t2.create_contact(create("Z", "")).await.expect("create");
    let (got, _) = collect(&mut t2_watch, |got| !got.is_empty()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].resource_type, ResourceType::Contact as i32);
    let t2_feed = all_changes(&mut app.changes("t2"), 0).await;
    assert_eq!(t2_feed.len(), 1);
    assert!(tokio::time::timeout(Duration::from_millis(200), t2_watch.message()).await.is_err());
    assert_eq!(at_least(&mut app.changes("t1"), 3).await.len(), 3);
}

async fn an_expired_cursor_is_refused_with_the_oldest_sequence(backend: Backend) {
    let app = spawn_app_with(backend, |o| {
        o.retention = Some(Duration::from_millis(100));
        o.change_retention = Some(Duration::from_millis(200));
        o.purge_interval = Some(Duration::from_millis(50));
    })
    .await;
    let (mut contacts, mut changes) = (app.contacts("t1"), app.changes("t1"));
    for name in ["A", "B"] {
        contacts.create_contact(create(name, "")).await.expect("create");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The later change keeps arriving so the feed has something kept.
        contacts.create_contact(create("later", "")).await.expect("create");
        // 0 means "from the oldest kept": never expired.
        let from_oldest = changes.list_changes(ListChangesRequest::default()).await.expect("from the oldest kept");
        let from_oldest = from_oldest.into_inner().changes;
        match changes.list_changes(ListChangesRequest { start_after: 1, ..Default::default() }).await {
            Err(status) => {
                let info = assert_error(&status, Code::FailedPrecondition, "CURSOR_EXPIRED");
                let oldest: i64 = info.metadata.get("oldest_sequence").and_then(|v| v.parse().ok()).expect("oldest");
                assert!(oldest > 1);
                // From just before the oldest kept, it answers (the purge keeps
                // running, so the oldest may move on while we ask).
                let mut oldest = oldest;
                let kept = loop {
                    match changes
                        .list_changes(ListChangesRequest { start_after: oldest - 1, ..Default::default() })
                        .await
                    {
                        Ok(page) => break page.into_inner().changes,
                        Err(status) => {
                            let info = assert_error(&status, Code::FailedPrecondition, "CURSOR_EXPIRED");
                            let newer: i64 =
                                info.metadata.get("oldest_sequence").and_then(|v| v.parse().ok()).expect("oldest");
                            assert!(newer > oldest, "the oldest only moves on");
                            oldest = newer;
                        }
                    }
                };
                assert!(kept.iter().all(|c| c.sequence >= oldest), "{kept:?}");
                // And 0 answered with what was kept then (the later changes keep coming).
                assert!(!from_oldest.is_empty());
                let status = changes
                    .watch_changes(WatchChangesRequest { start_after: 1, ..Default::default() })
                    .await
                    .unwrap_err();
                assert_error(&status, Code::FailedPrecondition, "CURSOR_EXPIRED");
                return;
            }
            Ok(_) => {
                assert!(tokio::time::Instant::now() < deadline, "changes were never purged");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn idle_in_transaction(app: &TestApp) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(&app.database_url).await.expect("connect");
    diesel::sql_query(
        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    .get_result::<Count>(&mut conn)
    .await
    .expect("pg_stat_activity")
    .n
}

async fn cancelled_writes_leave_no_transaction_or_lock_behind(backend: Backend) {
    let app = spawn_app_with(backend, |o| o.database_pool_size = Some(8)).await;
    let mut contacts = app.contacts("t1");
    let ada = contacts.create_contact(create("Ada", "")).await.expect("create").into_inner();
    let fresh = || {
        // A new connection each time: the server answers a flood of reset
        // streams on one connection by closing it, as HTTP/2 servers must.
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr)).expect("endpoint");
        channel.connect_lazy()
    };
    // The next write of a row is not kept waiting by anything left open.
    let write_now = |name: &'static str| {
        let channel = fresh();
        let id = ada.id.clone();
        async move {
            let mut request = tonic::Request::new(rename(&id, name));
            request.set_timeout(Duration::from_secs(3));
            let answer = crate::helpers::contacts_on(channel, "t1").update_contact(request).await;
            answer.expect("the row is free").into_inner()
        }
    };

    // Cancelled in the middle of its body (inside the transaction, waiting
    // on a lock): the client gives up, then the lock goes away.
    let blocker = crate::ops::Blocker::hold(&app).await;
    let mut client = app.contacts("t1");
    let request = rename(&ada.id, "mid-body");
    let call = tokio::spawn(async move { client.update_contact(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    blocker.release().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if backend == Backend::Postgres {
        assert_eq!(idle_in_transaction(&app).await, 0, "no connection is left inside a transaction");
    }
    let after = write_now("after-1").await;
    assert_eq!(after.display_name, "after-1");
    // The cancelled update ran to its end: wholly there, one revision.
    assert_eq!(after.revision, 3, "create, the cancelled rename, this rename");

    // Many batches cancelled at random moments, before BEGIN, in their body
    // and during their commit.
    let mut batches = Vec::new();
    for round in 0..40u64 {
        let mut client = crate::helpers::contacts_on(fresh(), "t1");
        let requests: Vec<CreateContactRequest> = (0..5).map(|i| create(&format!("r{round}-{i}"), "")).collect();
        batches.push(tokio::spawn(async move {
            let call = client.batch_create_contacts(BatchCreateContactsRequest { requests });
            tokio::time::timeout(Duration::from_micros(200 + round * 150), call).await
        }));
    }
    let mut acknowledged = Vec::new();
    for batch in batches {
        if let Ok(Ok(Ok(answer))) = batch.await {
            acknowledged.extend(answer.into_inner().contacts.into_iter().map(|c| c.display_name));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if backend == Backend::Postgres {
        assert_eq!(idle_in_transaction(&app).await, 0, "no connection is left inside a transaction");
    }
    assert_eq!(write_now("after-2").await.display_name, "after-2");

    // Every acknowledged write is there; every batch is wholly there or absent;
    // and the feed holds exactly one change per write that is there.
    let mut next = crate::helpers::contacts_on(fresh(), "t1");
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = next
            .list_contacts(agenda::api::ListContactsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        names.extend(page.contacts.into_iter().map(|c| c.display_name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    for name in &acknowledged {
        assert!(names.contains(name), "acknowledged {name} is missing");
    }
    for round in 0..40 {
        let present = (0..5).filter(|i| names.contains(&format!("r{round}-{i}"))).count();
        assert!(present == 0 || present == 5, "batch {round} is half there ({present} of 5)");
    }
    let feed = at_least(&mut crate::helpers::changes_on(fresh(), "t1"), names.len()).await;
    let created = feed.iter().filter(|c| kind(c) == ChangeKind::Created).count();
    assert_eq!(created, names.len(), "one CREATED change per contact there");
}

async fn watch_streams_have_their_own_cap_and_end_on_drain(backend: Backend) {
    let mut app = spawn_app_with(backend, |o| {
        o.max_watchers = Some(2);
        // Unary calls have a limit of one: open streams must not use it.
        o.max_concurrent_calls = Some(1);
    })
    .await;
    let mut changes = app.changes("t1");
    let mut first = watch(&mut changes, 0).await;
    let _second = watch(&mut changes, 0).await;
    let status = changes.watch_changes(WatchChangesRequest::default()).await.unwrap_err();
    let info = assert_error(&status, Code::ResourceExhausted, "OVERLOADED");
    assert!(info.metadata.get("scope").is_none_or(|s| s == "server"));
    // Two open streams, and unary calls still get the one permit.
    let mut contacts = app.contacts("t1");
    contacts.create_contact(create("A", "")).await.expect("a unary call beside open streams");
    let (got, _) = collect(&mut first, |got| !got.is_empty()).await;
    assert_eq!(got[0].kind, ChangeKind::Created as i32);
    // On drain, open streams end with UNAVAILABLE so clients move on.
    app.signal_stop();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match first.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream ends on drain");
    assert_eq!(ended.map(|s| s.code()), Some(Code::Unavailable));
}

async fn a_watch_ends_when_its_token_expires(backend: Backend) {
    let app = spawn_app(backend).await;
    // Expired 27 s ago: still inside the 30 s clock leeway, so it is
    // accepted, and good for three more seconds.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = agenda::auth::Claims {
        sub: "user-1".into(),
        tenant: "t1".into(),
        scope: "changes.read".into(),
        exp: now - 27,
        iat: None,
        nbf: None,
        iss: None,
        aud: None,
    };
    let token = agenda::auth::mint_hs256(crate::helpers::SECRET, &claims).expect("token");
    let mut changes = app.changes_with(&token);
    let mut stream = watch(&mut changes, 0).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends with its token")
        .unwrap_err();
    assert_error(&ended, Code::Unauthenticated, "TOKEN_EXPIRED");
}

async fn a_write_cancelled_before_it_begins_runs_wholly_once_a_connection_frees(backend: Backend) {
    // One connection: the first update holds it inside its transaction
    // (waiting on a lock), the second waits for it before BEGIN.
    let app = spawn_app_with(backend, |o| o.database_pool_size = Some(1)).await;
    let mut contacts = app.contacts("t1");
    let ada = contacts.create_contact(create("Ada", "")).await.expect("create").into_inner();
    // Let start-up work (the first purge, the first health ping) finish with the connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let blocker = crate::ops::Blocker::hold(&app).await;
    let mut calls = Vec::new();
    for name in ["inside-its-transaction", "before-begin"] {
        let mut client = app.contacts("t1");
        let request = rename(&ada.id, name);
        calls.push(tokio::spawn(async move { client.update_contact(request).await }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for call in &calls {
        call.abort();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    blocker.release().await;
    // Both cancelled writes run to their end, one after the other, each whole.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let fresh =
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr)).expect("endpoint").connect_lazy();
    let mut reader = crate::helpers::contacts_on(fresh.clone(), "t1");
    loop {
        let now = reader
            .get_contact(agenda::api::GetContactRequest { id: ada.id.clone(), read_mask: None })
            .await
            .expect("get")
            .into_inner();
        if now.revision == 3 {
            assert_eq!(now.display_name, "before-begin");
            break;
        }
        assert!(now.revision < 3, "{now:?}");
        assert!(tokio::time::Instant::now() < deadline, "the cancelled writes did not finish: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if backend == Backend::Postgres {
        assert_eq!(idle_in_transaction(&app).await, 0, "no connection is left inside a transaction");
    }
    let feed = at_least(&mut crate::helpers::changes_on(fresh, "t1"), 3).await;
    let revisions: Vec<i64> = feed.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, [1, 2, 3], "one change per write, in order");
}
