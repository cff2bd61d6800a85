//! Operations as an operator sees them: metrics after real calls, request
//! ids and trace context, limits and load shedding, deadlines, the drain on
//! shutdown, and TLS.

use std::{net::SocketAddr, time::Duration};

use agenda::api::{Contact, CreateContactRequest, GetContactRequest};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::helpers::{Backend, TestApp, assert_error, contacts_on, sample, scrape, spawn_app_with as spawn};

on_both_backends!(
    request_ids_and_trace_context_are_echoed,
    drain_refuses_new_calls_and_lets_in_flight_ones_finish,
    drain_stops_after_the_grace_period,
    an_oversized_request_is_resource_exhausted,
    a_deadline_ends_the_call_and_its_query,
    overload_is_shed_while_health_and_reflection_answer,
    a_flooding_tenant_is_held_to_its_share_while_others_are_served,
    tls_serves_and_reloads_changed_certificates,
    mtls_requires_a_client_certificate_from_the_ca,
    connections_past_their_age_finish_calls_within_the_grace,
);

pub fn create(name: &str) -> CreateContactRequest {
    CreateContactRequest {
        contact: Some(Contact { display_name: name.to_string(), ..Default::default() }),
        request_id: String::new(),
    }
}

async fn request_ids_and_trace_context_are_echoed(backend: Backend) {
    let app = spawn(backend, |_| {}).await;
    let mut contacts = app.contacts("request-id-tenant");

    let mut request = Request::new(create("Ada"));
    request.metadata_mut().insert("x-request-id", "req-42".parse().expect("ascii"));
    request
        .metadata_mut()
        .insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().expect("ascii"));
    let response = contacts.create_contact(request).await.expect("create");
    assert_eq!(response.metadata().get("x-request-id").and_then(|v| v.to_str().ok()), Some("req-42"));
    let traceparent = response.metadata().get("traceparent").and_then(|v| v.to_str().ok()).expect("traceparent");
    let parts: Vec<_> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parts[2], "00f067aa0ba902b7", "the call gets a span of its own");
    assert_eq!(parts[3], "01");

    // Without one, an id is made; errors carry it too.
    let status = contacts
        .get_contact(GetContactRequest { id: "01890000-0000-7000-8000-000000000000".into(), read_mask: None })
        .await
        .unwrap_err();
    let made = status.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).expect("a request id");
    uuid::Uuid::parse_str(made).expect("a UUID");
    assert!(status.metadata().get("traceparent").is_some());
}

/// A transaction on another connection that keeps the server's writes of
/// contacts waiting: a table lock on PostgreSQL, the write lock on SQLite.
pub enum Blocker {
    Pg(Box<AsyncPgConnection>),
    Sqlite(agenda::store::SqliteConn),
}

impl Blocker {
    pub async fn hold(app: &TestApp) -> Blocker {
        match app.backend {
            Backend::Postgres => {
                let mut conn = AsyncPgConnection::establish(&app.database_url).await.expect("connect");
                conn.batch_execute("BEGIN; LOCK TABLE contacts IN EXCLUSIVE MODE").await.expect("lock");
                Blocker::Pg(Box::new(conn))
            }
            Backend::Sqlite => {
                let path = app.database_url.trim_start_matches("sqlite://").to_string();
                let mut conn = agenda::store::SqliteConn::establish(&path).await.expect("connect");
                conn.batch_execute("PRAGMA busy_timeout = 5000; BEGIN IMMEDIATE").await.expect("lock");
                Blocker::Sqlite(conn)
            }
        }
    }

    /// Waits until a server query waits on the lock (PostgreSQL shows it;
    /// SQLite's busy wait does not show, so it gets a moment instead).
    pub async fn wait_for_waiters(&mut self, at_least: i64) {
        match self {
            Blocker::Pg(conn) => {
                for _ in 0..200 {
                    if lock_waiters(conn).await >= at_least {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("no call came to wait on the lock");
            }
            Blocker::Sqlite(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }

    pub async fn release(self) {
        match self {
            Blocker::Pg(mut conn) => conn.batch_execute("ROLLBACK").await.expect("rollback"),
            Blocker::Sqlite(mut conn) => conn.batch_execute("ROLLBACK").await.expect("rollback"),
        }
    }
}

/// Queries of this database waiting on a lock.
pub async fn lock_waiters(conn: &mut AsyncPgConnection) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .get_result::<Count>(conn)
    .await
    .expect("pg_stat_activity")
    .n
}

async fn drain_refuses_new_calls_and_lets_in_flight_ones_finish(backend: Backend) {
    let mut app = spawn(backend, |_| {}).await;
    let mut contacts = app.contacts("drain-tenant");
    contacts.create_contact(create("warm-up")).await.expect("create");
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest { service: "agenda.v1.ContactService".into() })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("a status").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let mut blocker = Blocker::hold(&app).await;
    let in_flight = tokio::spawn(async move { contacts.create_contact(create("in flight")).await });
    blocker.wait_for_waiters(1).await;

    app.signal_stop();
    let update = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("health changes at once")
        .expect("a status")
        .expect("a status");
    assert_eq!(update.status, ServingStatus::NotServing as i32, "health turns NOT_SERVING first");
    // Then open streams end with UNAVAILABLE, so their clients go elsewhere.
    let ended = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("the stream ends at once")
        .expect_err("with a status");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");

    // New calls are refused (on a new connection: the listener is closed).
    let mut refused = false;
    for _ in 0..100 {
        let channel = Channel::from_shared(format!("http://{}", app.addr)).expect("endpoint").connect_lazy();
        let mut client = HealthClient::new(channel);
        let check = client.check(HealthCheckRequest { service: String::new() });
        if tokio::time::timeout(Duration::from_secs(1), check).await.map(|r| r.is_err()).unwrap_or(true) {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "new calls are refused while draining");
    assert!(!in_flight.is_finished(), "the in-flight call still waits on the lock");

    blocker.release().await;
    let created = in_flight.await.expect("task").expect("the in-flight call finishes");
    assert_eq!(created.into_inner().display_name, "in flight");
    tokio::time::timeout(Duration::from_secs(5), app.stopped())
        .await
        .expect("the server stops once the call is done")
        .expect("and ends without error (exit 0)");
}

async fn drain_stops_after_the_grace_period(backend: Backend) {
    let mut app = spawn(backend, |o| o.shutdown_grace = Some(Duration::from_millis(300))).await;
    let mut contacts = app.contacts("grace-tenant");
    contacts.create_contact(create("warm-up")).await.expect("create");
    let mut blocker = Blocker::hold(&app).await;
    let in_flight = tokio::spawn(async move { contacts.create_contact(create("too slow")).await });
    blocker.wait_for_waiters(1).await;

    let start = std::time::Instant::now();
    app.signal_stop();
    tokio::time::timeout(Duration::from_secs(3), app.stopped())
        .await
        .expect("the server stops after the grace period")
        .expect("and ends without error (exit 0)");
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
    blocker.release().await;
    in_flight.abort();
}

async fn an_oversized_request_is_resource_exhausted(backend: Backend) {
    let app = spawn(backend, |o| o.max_message_bytes = Some(64 * 1024)).await;
    let mut contacts = app.contacts("size-tenant");
    let huge = "x".repeat(100 * 1024);
    let status = contacts.create_contact(create(&huge)).await.unwrap_err();
    let info = assert_error(&status, Code::ResourceExhausted, "MESSAGE_TOO_LARGE");
    assert_eq!(info.metadata.get("limit_bytes").map(String::as_str), Some("65536"));
    // The server is unharmed.
    contacts.create_contact(create("small")).await.expect("a small request still works");
}

async fn a_deadline_ends_the_call_and_its_query(backend: Backend) {
    let app = spawn(backend, |_| {}).await;
    let mut contacts = app.contacts("deadline-tenant");
    contacts.create_contact(create("warm-up")).await.expect("create");
    let mut blocker = Blocker::hold(&app).await;

    let mut request = Request::new(create("late"));
    request.set_timeout(Duration::from_millis(200));
    let start = std::time::Instant::now();
    let status = contacts.create_contact(request).await.unwrap_err();
    // The server answers 10 ms before the deadline; on a loaded machine the
    // client's own timer (tonic reports it as CANCELLED) can still be first.
    let client_timer = status.code() == Code::Cancelled && status.message().contains("Timeout expired");
    assert!(status.code() == Code::DeadlineExceeded || client_timer, "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());

    // The database stopped working on it too, while the lock is still held.
    if let Blocker::Pg(conn) = &mut blocker {
        let mut waiting = lock_waiters(conn).await;
        for _ in 0..100 {
            if waiting == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            waiting = lock_waiters(conn).await;
        }
        assert_eq!(waiting, 0, "the query was cancelled with the call");
    }
    blocker.release().await;
    contacts.create_contact(create("after")).await.expect("the server still works");
}

async fn overload_is_shed_while_health_and_reflection_answer(backend: Backend) {
    use tonic_reflection::pb::v1;
    let app = spawn(backend, |o| o.max_concurrent_calls = Some(1)).await;
    let mut contacts = app.contacts("overload-tenant");
    contacts.create_contact(create("warm-up")).await.expect("create");
    let mut blocker = Blocker::hold(&app).await;
    let mut busy = app.contacts("overload-tenant");
    let in_flight = tokio::spawn(async move { busy.create_contact(create("holds the only slot")).await });
    blocker.wait_for_waiters(1).await;

    let status = contacts.create_contact(create("one too many")).await.unwrap_err();
    let info = assert_error(&status, Code::ResourceExhausted, "OVERLOADED");
    assert_eq!(info.metadata.get("scope").map(String::as_str), Some("server"));
    let mut health = HealthClient::new(app.channel.clone());
    let serving = health.check(HealthCheckRequest { service: String::new() }).await.expect("health answers");
    assert_eq!(serving.into_inner().status, ServingStatus::Serving as i32);
    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.expect("reflection").into_inner();
    stream.message().await.expect("reflection answers").expect("a response");

    blocker.release().await;
    in_flight.await.expect("task").expect("the admitted call finishes");
    contacts.create_contact(create("after")).await.expect("calls are admitted again");
    let metrics = scrape(app.metrics_addr).await;
    assert!(
        sample(
            &metrics,
            "grpc_server_handled_total",
            &[("grpc_method", "CreateContact"), ("grpc_code", "ResourceExhausted")]
        ) >= 1.0
    );
}

/// A tenant with as many calls running as it may gets the next shed at once,
/// as its own (`scope: tenant`, with a retry delay), while another tenant
/// is served; once its calls end, it is served again.
async fn a_flooding_tenant_is_held_to_its_share_while_others_are_served(backend: Backend) {
    let app = spawn(backend, |o| {
        o.max_concurrent_calls = Some(64);
        o.tenant_max_concurrent_calls = Some(2);
    })
    .await;
    let mut quiet = app.contacts("quiet-tenant");
    let mine = quiet.create_contact(create("quiet")).await.expect("create").into_inner().id;
    let mut flood = app.contacts("flooding-tenant");
    let theirs = flood.create_contact(create("warm-up")).await.expect("create").into_inner().id;
    // The flooding tenant's two places are taken by writes waiting on a lock.
    let mut blocker = Blocker::hold(&app).await;
    let held: Vec<_> = (0..2)
        .map(|i| {
            let mut flood = flood.clone();
            tokio::spawn(async move { flood.create_contact(create(&format!("held {i}"))).await })
        })
        .collect();
    blocker.wait_for_waiters(1).await;
    let get = |id: &str| GetContactRequest { id: id.to_string(), read_mask: None };
    let status = flood.get_contact(get(&theirs)).await.expect_err("a third call of the tenant");
    let info = assert_error(&status, Code::ResourceExhausted, "OVERLOADED");
    assert_eq!(info.metadata.get("scope").map(String::as_str), Some("tenant"));
    assert!(tonic_types::StatusExt::get_details_retry_info(&status).is_some(), "no RetryInfo");
    for _ in 0..5 {
        quiet.get_contact(get(&mine)).await.expect("the other tenant is served");
    }
    blocker.release().await;
    for call in held {
        call.await.expect("task").expect("the admitted calls finish");
    }
    flood.get_contact(get(&theirs)).await.expect("the tenant is served again");
}

/// A test certificate authority.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("key");
        Ca { issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA") }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `name` and its key, in PEM.
    fn issue(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}

fn tls_channel(addr: SocketAddr, ca: &Ca, identity: Option<&(String, String)>) -> Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().domain_name("localhost").ca_certificate(Certificate::from_pem(ca.pem()));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}")).expect("endpoint").tls_config(tls).expect("tls").connect_lazy()
}

async fn healthy(channel: Channel) -> bool {
    let mut health = HealthClient::new(channel);
    let check = health.check(HealthCheckRequest { service: String::new() });
    matches!(tokio::time::timeout(Duration::from_secs(5), check).await, Ok(Ok(_)))
}

async fn tls_serves_and_reloads_changed_certificates(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = Ca::new("first CA");
    let (cert, key) = first.issue("localhost");
    std::fs::write(&cert_path, cert).expect("write");
    std::fs::write(&key_path, key).expect("write");
    let app = spawn(backend, |o| {
        o.tls_cert = Some(cert_path.clone());
        o.tls_key = Some(key_path.clone());
    })
    .await;

    assert!(!healthy(app.channel.clone()).await, "plaintext is refused on a TLS port");
    assert!(healthy(tls_channel(app.addr, &first, None)).await, "TLS with the server's CA works");
    let mut contacts = contacts_on(tls_channel(app.addr, &first, None), "tls-tenant");
    contacts.create_contact(create("over TLS")).await.expect("a call over TLS");

    // A new certificate from another CA is picked up by new connections.
    let second = Ca::new("second CA");
    let (cert, key) = second.issue("localhost");
    std::fs::write(&key_path, key).expect("write");
    std::fs::write(&cert_path, cert).expect("write");
    assert!(healthy(tls_channel(app.addr, &second, None)).await, "the reloaded certificate is served");
    assert!(!healthy(tls_channel(app.addr, &first, None)).await, "the old certificate is gone");
}

async fn mtls_requires_a_client_certificate_from_the_ca(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert_path, key_path, ca_path) =
        (dir.path().join("tls.crt"), dir.path().join("tls.key"), dir.path().join("clients.crt"));
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let (cert, key) = server_ca.issue("localhost");
    std::fs::write(&cert_path, cert).expect("write");
    std::fs::write(&key_path, key).expect("write");
    std::fs::write(&ca_path, client_ca.pem()).expect("write");
    let app = spawn(backend, |o| {
        o.tls_cert = Some(cert_path.clone());
        o.tls_key = Some(key_path.clone());
        o.tls_client_ca = Some(ca_path.clone());
    })
    .await;

    assert!(!healthy(tls_channel(app.addr, &server_ca, None)).await, "no client certificate is refused");
    let stranger = Ca::new("another CA").issue("intruder");
    assert!(!healthy(tls_channel(app.addr, &server_ca, Some(&stranger))).await, "a foreign certificate is refused");
    let client = client_ca.issue("billing-service");
    assert!(healthy(tls_channel(app.addr, &server_ca, Some(&client))).await, "the CA's client is served");
    let mut contacts = contacts_on(tls_channel(app.addr, &server_ca, Some(&client)), "mtls-tenant");
    contacts.create_contact(create("over mTLS")).await.expect("a call over mTLS");
}

async fn connections_past_their_age_finish_calls_within_the_grace(backend: Backend) {
    let app = spawn(backend, |o| {
        o.max_connection_age = Some(Duration::from_millis(300));
        o.max_connection_age_grace = Some(Duration::from_millis(700));
    })
    .await;
    let mut contacts = app.contacts("age-tenant");
    let connected = std::time::Instant::now();
    contacts.create_contact(create("warm-up")).await.expect("create");

    // A call that runs past the age but ends within the grace succeeds.
    let mut blocker = Blocker::hold(&app).await;
    let mut busy = app.contacts("age-tenant");
    let in_flight = tokio::spawn(async move { busy.create_contact(create("past the age")).await });
    blocker.wait_for_waiters(1).await;
    tokio::time::sleep(Duration::from_millis(350).saturating_sub(connected.elapsed())).await;
    blocker.release().await;
    in_flight.await.expect("task").expect("finishes within the grace");

    // One that outlives age and grace is cut off with its connection.
    let blocker = Blocker::hold(&app).await;
    let start = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), contacts.create_contact(create("too long")))
        .await
        .expect("the connection is closed")
        .unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(900), "{:?} {status:?}", start.elapsed());
    blocker.release().await;
    // The channel notices the closed connection on first use at the latest.
    let mut last = None;
    for _ in 0..3 {
        match contacts.create_contact(create("after")).await {
            Ok(_) => return,
            Err(status) => last = Some(status),
        }
    }
    panic!("clients do not reconnect: {last:?}");
}
