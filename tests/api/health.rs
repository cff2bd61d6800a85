//! Health and reflection: served without a token.

use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::helpers::{Backend, spawn_app};

on_both_backends!(health_is_serving_overall_and_per_service, reflection_v1_and_v1alpha_list_the_services);

async fn health_is_serving_overall_and_per_service(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "agenda.v1.ContactService"] {
        let response =
            health.check(HealthCheckRequest { service: service.to_string() }).await.expect("health check").into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let status = health.check(HealthCheckRequest { service: "nope.Service".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

async fn reflection_v1_and_v1alpha_list_the_services(backend: Backend) {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = spawn_app(backend).await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        client.server_reflection_info(tokio_stream::iter(vec![request])).await.expect("reflection v1").into_inner();
    let response = stream.message().await.expect("message").expect("a response");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = response.message_response
    else {
        panic!("unexpected reflection response");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["agenda.v1.ContactService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    // The contract's scopes are reachable the way grpcurl reaches them: the
    // file holding ContactService, then each dependency by file name.
    let mut pool = prost_reflect::DescriptorPool::new();
    let mut pending = reflect_files(
        &mut client,
        v1::server_reflection_request::MessageRequest::FileContainingSymbol("agenda.v1.ContactService".into()),
    )
    .await;
    while let Some((file, bytes)) = pending.pop() {
        if pool.get_file_by_name(file.name()).is_some() {
            continue;
        }
        let missing: Vec<String> =
            file.dependency.iter().filter(|d| pool.get_file_by_name(d).is_none()).cloned().collect();
        if missing.is_empty() {
            // Decoded by prost-reflect from the bytes, so custom options survive.
            pool.decode_file_descriptor_proto(bytes.as_slice()).expect("a valid file");
            continue;
        }
        pending.push((file, bytes));
        for name in missing {
            if !pending.iter().any(|(f, _)| f.name() == name) {
                let request = v1::server_reflection_request::MessageRequest::FileByFilename(name);
                pending.extend(reflect_files(&mut client, request).await);
            }
        }
    }
    let method = pool
        .get_service_by_name("agenda.v1.ContactService")
        .and_then(|s| s.methods().find(|m| m.name() == "CreateContact"))
        .expect("CreateContact");
    let extension = pool.get_extension_by_name("agenda.v1.required_scope").expect("the scope option");
    assert_eq!(method.options().get_extension(&extension).as_str(), Some("contacts.write"));
    // And the field behaviours (AIP-203), from google/api/field_behavior.proto
    // as reflection serves it: what grpcurl and generated clients read.
    let behavior = pool.get_extension_by_name("google.api.field_behavior").expect("google.api.field_behavior");
    assert_eq!(behavior.number(), 1052);
    let contact = pool.get_message_by_name("agenda.v1.Contact").expect("Contact");
    let behaviors = |field: &str| -> Vec<i32> {
        let options = contact.get_field_by_name(field).expect("a field").options();
        match options.get_extension(&behavior).as_ref() {
            prost_reflect::Value::List(values) => values.iter().filter_map(|v| v.as_enum_number()).collect(),
            _ => Vec::new(),
        }
    };
    assert_eq!(behaviors("id"), [8], "IDENTIFIER");
    assert_eq!(behaviors("display_name"), [2], "REQUIRED");
    assert_eq!(behaviors("etag"), [3], "OUTPUT_ONLY");
    assert!(behaviors("given_name").is_empty());

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        alpha.server_reflection_info(tokio_stream::iter(vec![request])).await.expect("reflection v1alpha").into_inner();
    let response = stream.message().await.expect("message").expect("a response");
    assert!(matches!(
        response.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(_))
    ));
}

async fn reflect_files(
    client: &mut tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient<tonic::transport::Channel>,
    message: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> Vec<(prost_types::FileDescriptorProto, Vec<u8>)> {
    use tonic_reflection::pb::v1;
    let request = v1::ServerReflectionRequest { host: String::new(), message_request: Some(message) };
    let mut stream =
        client.server_reflection_info(tokio_stream::iter(vec![request])).await.expect("reflection v1").into_inner();
    let response = stream.message().await.expect("message").expect("a response");
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        response.message_response
    else {
        panic!("unexpected reflection response: {response:?}");
    };
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| (prost::Message::decode(bytes.as_slice()).expect("file descriptor"), bytes.clone()))
        .collect()
}

/// PostgreSQL only: it is the backend that can stop answering while agenda
/// runs (an embedded SQLite file lives in the process itself; its failures
/// are file corruption, which no health check can undo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_on_postgres() {
    if !crate::helpers::enabled(Backend::Postgres) {
        eprintln!("PostgreSQL left out by AGENDA_TEST_BACKENDS");
        return;
    }
    health_follows_the_database(Backend::Postgres).await;
}

/// Makes the app's PostgreSQL database unreachable (new connections refused,
/// open ones cut) and returns how to bring it back.
async fn break_database(
    app: &crate::helpers::TestApp,
) -> Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send> {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    match app.backend {
        Backend::Postgres => {
            let (server, name) = app.database_url.rsplit_once('/').expect("a database URL");
            let admin = format!("{server}/postgres");
            let name = name.to_string();
            let mut conn = AsyncPgConnection::establish(&admin).await.expect("connect");
            diesel::sql_query(format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"))
                .execute(&mut conn)
                .await
                .expect("alter");
            diesel::sql_query(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ))
            .execute(&mut conn)
            .await
            .expect("terminate");
            Box::new(move || {
                Box::pin(async move {
                    let mut conn = AsyncPgConnection::establish(&admin).await.expect("connect");
                    diesel::sql_query(format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"))
                        .execute(&mut conn)
                        .await
                        .expect("alter");
                })
            })
        }
        Backend::Sqlite => unreachable!("an embedded SQLite file has no server that can go away"),
    }
}

async fn wait_for(health: &mut HealthClient<tonic::transport::Channel>, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status =
            health.check(HealthCheckRequest { service: String::new() }).await.expect("health").into_inner().status;
        if status == want as i32 {
            let per_service = health
                .check(HealthCheckRequest { service: "agenda.v1.ContactService".into() })
                .await
                .expect("health")
                .into_inner()
                .status;
            assert_eq!(per_service, want as i32);
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn health_follows_the_database(backend: Backend) {
    let app =
        crate::helpers::spawn_app_with(backend, |o| o.health_interval = Some(std::time::Duration::from_millis(100)))
            .await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut contacts = app.contacts("t1");
    wait_for(&mut health, ServingStatus::Serving).await;
    let restore = break_database(&app).await;
    wait_for(&mut health, ServingStatus::NotServing).await;
    let status = contacts
        .get_contact(agenda::api::GetContactRequest { id: uuid::Uuid::now_v7().to_string(), read_mask: None })
        .await
        .unwrap_err();
    let info = crate::helpers::assert_error(&status, Code::Unavailable, "DATABASE_UNAVAILABLE");
    assert!(!status.message().contains("SQL") && !status.message().contains('/'), "no internals: {}", status.message());
    assert_eq!(info.domain, "agenda");
    restore().await;
    wait_for(&mut health, ServingStatus::Serving).await;
    contacts
        .list_contacts(agenda::api::ListContactsRequest::default())
        .await
        .expect("calls work again once the database is back");
}
