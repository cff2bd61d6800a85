//! Database faults: PostgreSQL stopped and started under load, its
//! connections terminated in the middle of transactions, a lock held by
//! another session, the pool exhausted. Calls fail with `UNAVAILABLE` (never
//! `INTERNAL`), health follows the database, the service heals by itself,
//! and no acknowledged write or change is lost.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agenda::api::{
    BatchCreateContactsRequest, Contact, CreateContactRequest, GetContactRequest, ListContactsRequest,
    WatchChangesRequest,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::time::Instant;
use tonic::{Code, Request, Status};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_types::StatusExt;

use crate::{
    helpers::{Backend, PgCluster, TestApp, assert_error, changes_on, contacts_on, enabled, scrape, spawn_app_with},
    ops::{Blocker, lock_waiters},
};

on_both_backends!(an_exhausted_pool_makes_calls_wait_then_unavailable);

fn contact(name: &str, request_id: &str) -> CreateContactRequest {
    CreateContactRequest {
        contact: Some(Contact { display_name: name.to_string(), ..Default::default() }),
        request_id: request_id.to_string(),
    }
}

/// A failure the database caused: UNAVAILABLE `DATABASE_UNAVAILABLE` with a
/// retry delay.
fn assert_unavailable(status: &Status) {
    assert_error(status, Code::Unavailable, "DATABASE_UNAVAILABLE");
    assert!(status.get_details_retry_info().is_some(), "no RetryInfo: {status:?}");
}

async fn health_is(app: &TestApp) -> i32 {
    let mut health = HealthClient::new(app.channel.clone());
    health.check(HealthCheckRequest { service: String::new() }).await.expect("health answers").into_inner().status
}

/// Waits until health reports `want`; returns how long that took.
async fn await_health(app: &TestApp, want: ServingStatus, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if health_is(app).await == want as i32 {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "health did not turn {want:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_is_unavailable_and_the_service_heals_by_itself() {
    if !enabled(Backend::Postgres) {
        eprintln!("PostgreSQL left out by AGENDA_TEST_BACKENDS");
        return;
    }
    let interval = Duration::from_millis(300);
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::dedicated).await.expect("a cluster of its own"));
    let url = cluster.new_database().await;
    let app = spawn_app_with(Backend::Postgres, |o| {
        o.database_url = Some(url.clone());
        o.health_interval = Some(interval);
    })
    .await;
    await_health(&app, ServingStatus::Serving, Duration::from_secs(5)).await;

    // A consumer follows the feed the whole time, resuming after each end.
    let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (channel, seen, stop) = (app.channel.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let mut changes = changes_on(channel, "outage");
            let mut last = 0;
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                let request = WatchChangesRequest { start_after: last, ..Default::default() };
                let Ok(stream) = changes.watch_changes(request).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut stream = stream.into_inner();
                while let Ok(Ok(Some(change))) =
                    tokio::time::timeout(Duration::from_millis(500), stream.message()).await
                {
                    last = change.sequence;
                    seen.lock().expect("seen").insert(change.resource_id);
                }
            }
        })
    };

    // A writer creates contacts with request_ids throughout.
    let outcomes = Arc::new(Mutex::new(Vec::<(Instant, CreateContactRequest, Result<String, Status>)>::new()));
    let writer = {
        let (channel, outcomes, stop) = (app.channel.clone(), outcomes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut contacts = contacts_on(channel, "outage");
            let mut n = 0;
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                n += 1;
                let request = contact(&format!("Outage {n}"), &uuid::Uuid::new_v4().to_string());
                let answer = contacts.create_contact(request.clone()).await.map(|a| a.into_inner().id);
                outcomes.lock().expect("outcomes").push((Instant::now(), request, answer));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = cluster.clone();
    tokio::task::spawn_blocking(move || stopped.stop()).await.expect("stop");
    let not_serving = await_health(&app, ServingStatus::NotServing, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = cluster.clone();
    tokio::task::spawn_blocking(move || started.resume()).await.expect("start");
    let up = Instant::now();
    // The first write that succeeds after the database answers again.
    let healed = loop {
        let first = outcomes.lock().expect("outcomes").iter().find(|(at, _, r)| *at > up && r.is_ok()).map(|o| o.0);
        if let Some(at) = first {
            break at - up;
        }
        assert!(up.elapsed() < Duration::from_secs(10), "no write succeeded after the database came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    await_health(&app, ServingStatus::Serving, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");

    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    let failed: Vec<&Status> = outcomes.iter().filter_map(|(_, _, r)| r.as_ref().err()).collect();
    assert!(!failed.is_empty(), "no write met the outage");
    for status in &failed {
        assert_unavailable(status);
    }
    eprintln!(
        "outage: {} writes, {} UNAVAILABLE; NOT_SERVING after {not_serving:?}; writing again {healed:?} after the database answered",
        outcomes.len(),
        failed.len()
    );
    assert!(not_serving <= interval * 3, "health took {not_serving:?} to turn NOT_SERVING (interval {interval:?})");
    assert!(healed <= Duration::from_secs(1), "writing again took {healed:?} after the database answered");

    // Nothing acknowledged is lost; what was not acknowledged is there at
    // most once (its request_id answers the same contact twice).
    let mut contacts = contacts_on(app.channel.clone(), "outage");
    let mut expected = Vec::new();
    for (_, request, answer) in &outcomes {
        let again = contacts.create_contact(request.clone()).await.expect("replay").into_inner().id;
        if let Ok(id) = answer {
            assert_eq!(&again, id, "an acknowledged create answered another contact");
        }
        let twice = contacts.create_contact(request.clone()).await.expect("replay").into_inner().id;
        assert_eq!(twice, again);
        expected.push(again);
    }
    // The consumer saw every contact's change.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let missing = expected.iter().filter(|id| !seen.lock().expect("seen").contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} changes never reached the watcher");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await.expect("watcher");
}

/// The ids of this database's client backends other than ours, ended.
async fn terminate_backends(admin: &mut AsyncPgConnection, database: &str) -> usize {
    #[derive(diesel::QueryableByName)]
    struct Ended {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ended: bool,
    }
    let rows: Vec<Ended> = diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity \
         WHERE datname = '{database}' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ))
    .load(admin)
    .await
    .expect("terminate");
    rows.iter().filter(|r| r.ended).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_cost_calls_never_data() {
    if !enabled(Backend::Postgres) {
        eprintln!("PostgreSQL left out by AGENDA_TEST_BACKENDS");
        return;
    }
    let app = spawn_app_with(Backend::Postgres, |o| o.database_pool_size = Some(4)).await;
    let database = app.database_url.rsplit_once('/').expect("a database URL").1.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(Mutex::new(Vec::<(String, Result<(), Status>)>::new()));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (channel, stop, batches) = (app.channel.clone(), stop.clone(), batches.clone());
        writers.push(tokio::spawn(async move {
            let mut contacts = contacts_on(channel, "terminated");
            let mut n = 0;
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                n += 1;
                let marker = format!("t{w}-{n}-{}", uuid::Uuid::new_v4().simple());
                let requests = (0..5).map(|i| contact(&format!("{marker} {i}"), "")).collect();
                let answer = contacts.batch_create_contacts(BatchCreateContactsRequest { requests }).await;
                batches.lock().expect("batches").push((marker, answer.map(|_| ())));
            }
        }));
    }
    let (server, _) = app.database_url.rsplit_once('/').expect("a database URL");
    let mut admin = AsyncPgConnection::establish(&format!("{server}/postgres")).await.expect("connect");
    let mut ended = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ended += terminate_backends(&mut admin, &database).await;
    }
    // Calls work again at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let mut contacts = contacts_on(app.channel.clone(), "terminated");
    contacts.create_contact(contact("after", "")).await.expect("the service writes again");
    let batches = std::mem::take(&mut *batches.lock().expect("batches"));
    let failed = batches.iter().filter(|(_, r)| r.is_err()).count();
    eprintln!("{ended} connections terminated under {} batches; {failed} failed", batches.len());
    assert!(ended > 0, "no connection was terminated");
    for (marker, answer) in &batches {
        if let Err(status) = answer {
            assert_unavailable(status);
        }
        let page = contacts
            .list_contacts(ListContactsRequest {
                page_size: 10,
                filter: format!("display_name:\"{marker}\""),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        let expected = if answer.is_ok() { &[5][..] } else { &[0, 5][..] };
        assert!(expected.contains(&page.contacts.len()), "batch {marker}: {} of 5 contacts", page.contacts.len());
    }
    // No transaction was left open on the database.
    #[derive(diesel::QueryableByName)]
    struct Open {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let open: Open = diesel::sql_query(format!(
        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = '{database}' AND state LIKE 'idle in transaction%'"
    ))
    .get_result(&mut admin)
    .await
    .expect("pg_stat_activity");
    assert_eq!(open.n, 0, "a transaction was left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_blocked_by_a_lock_ends_at_its_deadline_with_its_query() {
    if !enabled(Backend::Postgres) {
        eprintln!("PostgreSQL left out by AGENDA_TEST_BACKENDS");
        return;
    }
    let app = spawn_app_with(Backend::Postgres, |_| {}).await;
    let mut contacts = contacts_on(app.channel.clone(), "locked");
    let id = contacts.create_contact(contact("Locked", "")).await.expect("create").into_inner().id;
    // Another session takes a lock that even reads wait for.
    let mut holder = AsyncPgConnection::establish(&app.database_url).await.expect("connect");
    holder.batch_execute("BEGIN; LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    let mut request = Request::new(GetContactRequest { id: id.clone(), read_mask: None });
    request.set_timeout(Duration::from_millis(300));
    let status = contacts.get_contact(request).await.expect_err("the read waits on the lock");
    let client_timer = status.code() == Code::Cancelled && status.message().contains("Timeout expired");
    assert!(status.code() == Code::DeadlineExceeded || client_timer, "{status:?}");
    // The database stopped the read too, while the lock is still held.
    let mut observer = AsyncPgConnection::establish(&app.database_url).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(2);
    while lock_waiters(&mut observer).await > 0 {
        assert!(Instant::now() < deadline, "the read's query still waits on the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.batch_execute("ROLLBACK").await.expect("unlock");
    contacts.get_contact(GetContactRequest { id, read_mask: None }).await.expect("reads work again");
}

/// With every pooled connection busy, a call waits for one, then is
/// UNAVAILABLE; health and metrics keep answering, and health stays
/// SERVING (the database is up; the replica is busy).
async fn an_exhausted_pool_makes_calls_wait_then_unavailable(backend: Backend) {
    let app = spawn_app_with(backend, |o| {
        o.database_pool_size = Some(1);
        o.health_interval = Some(Duration::from_millis(100));
    })
    .await;
    let mut contacts = contacts_on(app.channel.clone(), "pool");
    contacts.create_contact(contact("warm-up", "")).await.expect("create");
    // One write holds the writing connection (the pool's only one on
    // PostgreSQL; SQLite's one writer), waiting on another session's lock.
    let mut blocker = Blocker::hold(&app).await;
    let held = {
        let mut contacts = contacts.clone();
        tokio::spawn(async move { contacts.create_contact(contact("held", "")).await })
    };
    blocker.wait_for_waiters(1).await;
    let start = Instant::now();
    let mut queued = contacts.clone();
    let waiting = tokio::spawn(async move { queued.create_contact(contact("queued", "")).await });
    // Meanwhile the replica answers health checks and scrapes, SERVING.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(health_is(&app).await, ServingStatus::Serving as i32);
    assert!(scrape(app.metrics_addr).await.contains("grpc_server_started_total"));
    let status = waiting.await.expect("task").expect_err("no connection came free");
    assert_unavailable(&status);
    assert!(start.elapsed() >= Duration::from_secs(4), "the call did not wait for a connection");
    blocker.release().await;
    let _ = held.await.expect("task");
    contacts.create_contact(contact("after", "")).await.expect("the pool serves again");
    assert_eq!(health_is(&app).await, ServingStatus::Serving as i32);
}
