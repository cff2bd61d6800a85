//! Replicas on one PostgreSQL database: a change committed through one
//! reaches the watchers of another, also when the other's LISTEN connection
//! was cut. PostgreSQL only: an embedded SQLite file is one process's, and
//! its feed is signalled in-process (the other tests cover it).

use std::time::Duration;

use crate::helpers::{Backend, Process, changes_on, contacts_on, enabled, postgres, spawn_app_with};
use agenda::api::{Contact, CreateContactRequest, WatchChangesRequest};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

fn create(name: &str) -> CreateContactRequest {
    CreateContactRequest {
        contact: Some(Contact { display_name: name.into(), ..Default::default() }),
        request_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_process_reaches_a_watcher_on_another() {
    if !enabled(Backend::Postgres) {
        eprintln!("PostgreSQL left out by AGENDA_TEST_BACKENDS");
        return;
    }
    let url = postgres().new_database().await;
    let (first, second) = (Process::start(&url).await, Process::start(&url).await);
    let mut watcher = changes_on(second.channel(), "t1")
        .watch_changes(WatchChangesRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let mut writer = contacts_on(first.channel(), "t1");
    for name in ["A", "B", "C"] {
        writer.create_contact(create(name)).await.expect("create");
    }
    let mut last = 0;
    for _ in 1..=3 {
        let change = tokio::time::timeout(Duration::from_secs(10), watcher.message())
            .await
            .expect("the change reaches the other process")
            .expect("stream")
            .expect("a change");
        assert!(change.sequence > last);
        last = change.sequence;
    }
}

/// The listener connections of this database's replicas.
async fn terminate_listeners(url: &str) -> usize {
    #[derive(diesel::QueryableByName)]
    struct Terminated {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        done: bool,
    }
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    let rows: Vec<Terminated> = diesel::sql_query(
        "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .load(&mut conn)
    .await
    .expect("terminate");
    rows.iter().filter(|r| r.done).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_listen_connection_loses_nothing() {
    if !enabled(Backend::Postgres) {
        eprintln!("PostgreSQL left out by AGENDA_TEST_BACKENDS");
        return;
    }
    let watching = spawn_app_with(Backend::Postgres, |_| {}).await;
    let url = watching.database_url.clone();
    let writing = spawn_app_with(Backend::Postgres, |o| o.database_url = Some(url.clone())).await;
    let mut watcher =
        watching.changes("t1").watch_changes(WatchChangesRequest::default()).await.expect("watch").into_inner();
    let mut writer = writing.contacts("t1");
    writer.create_contact(create("before")).await.expect("create");
    let first = tokio::time::timeout(Duration::from_secs(10), watcher.message()).await.expect("live").expect("ok");
    let mut last = first.expect("a change").sequence;
    // Both replicas' listeners are cut; the writes right after may find no
    // one listening, and must still arrive.
    let mut cut = 0;
    for _ in 0..100 {
        cut = terminate_listeners(&url).await;
        if cut > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cut >= 1, "no LISTEN connection found");
    for name in ["during-1", "during-2", "during-3"] {
        writer.create_contact(create(name)).await.expect("create");
    }
    for expected in ["during-1", "during-2", "during-3"] {
        let change = tokio::time::timeout(Duration::from_secs(15), watcher.message())
            .await
            .expect("caught up after the listener reconnected")
            .expect("stream")
            .expect("a change");
        assert!(change.sequence > last);
        last = change.sequence;
        let name = change.changes.iter().find(|c| c.field == "display_name").and_then(|c| c.new_value.clone());
        assert_eq!(name.and_then(|v| v.kind), Some(prost_types::value::Kind::StringValue(expected.into())));
    }
}
