//! Metrics after real calls, in a test binary of their own: the metrics
//! recorder is process-wide, so here nothing else calls the server while a
//! body counts, and every delta is asserted exactly.

#[macro_use]
#[path = "api/backends.rs"]
mod backends;
#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use agenda::api::{
    Contact, CreateContactRequest, GetContactRequest, WatchChangesRequest, contact_service_client::ContactServiceClient,
};
use tonic::Code;

use crate::helpers::{Backend, sample, scrape, spawn_app};

static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

on_both_backends!(metrics_count_real_calls_with_grpc_prometheus_names, change_feed_metrics_follow_the_watchers);

fn create(name: &str) -> CreateContactRequest {
    CreateContactRequest {
        contact: Some(Contact { display_name: name.to_string(), ..Default::default() }),
        request_id: String::new(),
    }
}

async fn metrics_count_real_calls_with_grpc_prometheus_names(backend: Backend) {
    // One process-wide recorder: the bodies of this binary run one at a time,
    // so the deltas below are exactly this body's calls.
    let _alone = ALONE.lock().await;
    let app = spawn_app(backend).await;
    let before = scrape(app.metrics_addr).await;
    let mut contacts = app.contacts("metrics-tenant");
    contacts.create_contact(create("Ada")).await.expect("create");
    let missing = contacts
        .get_contact(GetContactRequest { id: "01890000-0000-7000-8000-000000000000".into(), read_mask: None })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // A call refused by auth: its request message is never read.
    let mut anonymous = ContactServiceClient::new(app.channel.clone());
    let status = anonymous.create_contact(create("Bob")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health");

    let after = scrape(app.metrics_addr).await;
    let delta = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    let create_labels =
        [("grpc_type", "unary"), ("grpc_service", "agenda.v1.ContactService"), ("grpc_method", "CreateContact")];
    let get_labels =
        [("grpc_type", "unary"), ("grpc_service", "agenda.v1.ContactService"), ("grpc_method", "GetContact")];
    assert_eq!(delta("grpc_server_started_total", &create_labels), 2.0, "{after}");
    assert_eq!(delta("grpc_server_handled_total", &[create_labels.as_slice(), &[("grpc_code", "OK")]].concat()), 1.0);
    assert_eq!(
        delta("grpc_server_handled_total", &[create_labels.as_slice(), &[("grpc_code", "Unauthenticated")]].concat()),
        1.0
    );
    assert_eq!(
        delta("grpc_server_handled_total", &[get_labels.as_slice(), &[("grpc_code", "NotFound")]].concat()),
        1.0
    );
    // Two CreateContact calls, one message read: the refused call's is never read.
    assert_eq!(delta("grpc_server_msg_received_total", &create_labels), 1.0, "{after}");
    assert_eq!(delta("grpc_server_msg_sent_total", &create_labels), 1.0, "{after}");
    assert_eq!(delta("grpc_server_handling_seconds_count", &create_labels), 2.0);
    assert!(
        sample(&after, "grpc_server_handling_seconds_bucket", &[create_labels.as_slice(), &[("le", "+Inf")]].concat())
            >= 2.0
    );
    assert!(
        delta(
            "grpc_server_handled_total",
            &[("grpc_service", "grpc.health.v1.Health"), ("grpc_method", "Check"), ("grpc_code", "OK")]
        ) == 1.0
    );
    let pool = if backend == Backend::Postgres { "postgres" } else { "sqlite_writer" };
    assert!(after.contains(&format!("agenda_db_pool_size{{pool=\"{pool}\"}}")), "{after}");
    assert!(after.contains("agenda_db_pool_idle{"), "{after}");
    assert!(after.contains("agenda_db_pool_wait_seconds_bucket{"), "{after}");
    assert!(sample(&after, "agenda_build_info", &[("version", env!("CARGO_PKG_VERSION"))]) == 1.0, "{after}");
    assert!(after.contains("# TYPE grpc_server_handling_seconds histogram"), "{after}");
}

async fn change_feed_metrics_follow_the_watchers(backend: Backend) {
    let _alone = ALONE.lock().await;
    let app = spawn_app(backend).await;
    let before = scrape(app.metrics_addr).await;
    let mut stream = app.changes("t1").watch_changes(WatchChangesRequest::default()).await.expect("watch").into_inner();
    // Let the stream finish its (empty) replay, so the change comes live
    // and counts towards the lag; a replayed one counts as sent only.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.contacts("t1").create_contact(create("Ada")).await.expect("create");
    let change = stream.message().await.expect("stream").expect("a change");
    assert!(change.sequence > 0);
    let open = scrape(app.metrics_addr).await;
    let delta = |after: &str, name: &str| sample(after, name, &[]) - sample(&before, name, &[]);
    assert_eq!(delta(&open, "agenda_change_watchers"), 1.0, "{open}");
    assert_eq!(delta(&open, "agenda_changes_sent_total"), 1.0, "{open}");
    assert_eq!(delta(&open, "agenda_change_lag_seconds_count"), 1.0, "{open}");
    drop(stream);
    // The server notices the closed stream when it next looks; give it a moment.
    let mut closed = String::new();
    for _ in 0..100 {
        closed = scrape(app.metrics_addr).await;
        if delta(&closed, "agenda_change_watchers") == 0.0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the watcher gauge did not go back: {closed}");
}
