//! OTLP export, in a test binary of its own because it installs the global
//! tracing subscriber: a call's span reaches a collector, continuing the
//! caller's W3C trace, with the ids the response's `traceparent` names.

use std::time::Duration;

use agenda::{
    config::{LogFormat, Options, Settings},
    startup::Application,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_spans_are_exported_over_otlp_in_the_callers_trace() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let collector = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // SAFETY: set before anything else in this test binary reads the environment.
    unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")) };
    let telemetry = agenda::telemetry::init(LogFormat::Json);

    let dir = tempfile::tempdir().expect("temp dir");
    let options = Options {
        database_url: Some(format!("sqlite://{}", dir.path().join("agenda.db").display())),
        data_dir: Some(dir.path().to_path_buf()),
        listen: Some("127.0.0.1:0".parse().expect("address")),
        metrics_listen: Some("127.0.0.1:0".parse().expect("address")),
        auth_hs256_secret: Some("test-secret-that-is-long-enough-for-hs256".into()),
        ..Options::default()
    };
    let app = Application::build(Settings::resolve(options).expect("settings")).await.expect("builds");
    let channel = Channel::from_shared(format!("http://{}", app.local_addr())).expect("endpoint").connect_lazy();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let mut request = Request::new(HealthCheckRequest { service: String::new() });
    request
        .metadata_mut()
        .insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().expect("ascii"));
    let response = HealthClient::new(channel).check(request).await.expect("health");
    let traceparent = response.metadata().get("traceparent").and_then(|v| v.to_str().ok()).expect("traceparent");
    let parts: Vec<String> = traceparent.split('-').map(str::to_string).collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");

    let _ = stop.send(());
    server.await.expect("task").expect("server");
    telemetry.shutdown().await;

    let mut found = false;
    while let Ok(Some(export)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        for span in export.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            if span.name == "/grpc.health.v1.Health/Check" {
                assert_eq!(hex(&span.trace_id), parts[1], "continues the caller's trace");
                assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7", "under the caller's span");
                assert_eq!(hex(&span.span_id), parts[2], "the span the response names");
                found = true;
            }
        }
        if found {
            break;
        }
    }
    assert!(found, "the call's span was exported");
}
