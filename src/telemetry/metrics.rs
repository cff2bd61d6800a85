//! Prometheus metrics: the one process-wide recorder (the `metrics` crate's
//! recorder is global, so every [`crate::startup::Application`] in a process
//! renders the same handle), the `/metrics` HTTP endpoint, the database pool
//! gauges refreshed at each scrape, and build info.

use std::{convert::Infallible, sync::OnceLock, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::store::Db;

/// The handling-time histogram of every call (grpc-prometheus name).
pub const HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
/// How long calls waited for a pooled database connection.
pub const POOL_WAIT_SECONDS: &str = "agenda_db_pool_wait_seconds";

/// How long after its commit a change reached a watcher.
pub const CHANGE_LAG_SECONDS: &str = "agenda_change_lag_seconds";
/// Open WatchChanges streams of this replica.
pub const WATCHERS: &str = "agenda_change_watchers";
/// Changes sent to watchers.
pub const CHANGES_SENT: &str = "agenda_changes_sent_total";
/// Watchers cut off for falling behind.
pub const WATCHERS_CUT: &str = "agenda_change_watchers_cut_total";

const LAG_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A watch stream opened.
pub fn watcher_opened() {
    metrics::gauge!(WATCHERS).increment(1.0);
}

/// A watch stream closed.
pub fn watcher_closed() {
    metrics::gauge!(WATCHERS).decrement(1.0);
}

/// A watcher was cut off for falling behind.
pub fn watcher_cut() {
    metrics::counter!(WATCHERS_CUT).increment(1);
}

/// A change committed at `time_micros` was sent to a watcher now; `live`
/// (not replayed from storage) changes also record their commit-to-send lag.
pub fn change_sent(time_micros: i64, live: bool) {
    metrics::counter!(CHANGES_SENT).increment(1);
    if live {
        let lag = (chrono::Utc::now().timestamp_micros() - time_micros).max(0) as f64 / 1e6;
        metrics::histogram!(CHANGE_LAG_SECONDS).record(lag);
    }
}

/// grpc-prometheus's default buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const POOL_WAIT_BUCKETS: &[f64] = &[0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the global recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets_for_metric(Matcher::Full(HANDLING_SECONDS.into()), LATENCY_BUCKETS) {
            Ok(builder) => builder,
            Err(_) => PrometheusBuilder::new(),
        };
        let builder = match builder.set_buckets_for_metric(Matcher::Full(POOL_WAIT_SECONDS.into()), POOL_WAIT_BUCKETS) {
            Ok(builder) => builder,
            Err(_) => PrometheusBuilder::new(),
        };
        let builder = match builder.set_buckets_for_metric(Matcher::Full(CHANGE_LAG_SECONDS.into()), LAG_BUCKETS) {
            Ok(builder) => builder,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows only what reaches this one");
        }
        describe();
        metrics::gauge!("agenda_build_info", "version" => env!("CARGO_PKG_VERSION"), "name" => env!("CARGO_PKG_NAME"))
            .set(1.0);
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("grpc_server_started_total", "Total number of RPCs started on the server.");
    describe_gauge!(WATCHERS, "Open WatchChanges streams of this replica.");
    describe_counter!(CHANGES_SENT, "Changes sent to WatchChanges streams.");
    describe_counter!(WATCHERS_CUT, "WatchChanges streams ended for falling too far behind.");
    describe_histogram!(CHANGE_LAG_SECONDS, Unit::Seconds, "Time from a change's commit to its sending to a watcher.");
    describe_counter!(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure."
    );
    describe_counter!("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.");
    describe_counter!("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.");
    describe_histogram!(
        HANDLING_SECONDS,
        Unit::Seconds,
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server."
    );
    describe_histogram!(POOL_WAIT_SECONDS, Unit::Seconds, "Time calls waited for a pooled database connection.");
    describe_gauge!("agenda_db_pool_size", "Database connections open, per pool.");
    describe_gauge!("agenda_db_pool_idle", "Database connections open and idle, per pool.");
    describe_gauge!("agenda_db_pool_max_size", "Most database connections a pool opens.");
    describe_gauge!("agenda_db_pool_waiting", "Calls waiting for a database connection, per pool.");
    describe_gauge!("agenda_build_info", "Always 1; the labels name the build.");
}

/// Sets the pool gauges from `db`'s pools.
fn update_pool_gauges(db: &Db) {
    for (pool, status) in db.pool_status() {
        metrics::gauge!("agenda_db_pool_size", "pool" => pool).set(status.size as f64);
        metrics::gauge!("agenda_db_pool_idle", "pool" => pool).set(status.available as f64);
        metrics::gauge!("agenda_db_pool_max_size", "pool" => pool).set(status.max_size as f64);
        metrics::gauge!("agenda_db_pool_waiting", "pool" => pool).set(status.waiting as f64);
    }
}

/// Serves `GET /metrics` on `listener` (HTTP/1.1) until the task is dropped.
pub async fn serve(listener: TcpListener, db: Db) {
    let handle = handle();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let db = db.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = respond(&request, handle, &db);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(error) = tokio::time::timeout(Duration::from_secs(60), connection).await.unwrap_or(Ok(())) {
                tracing::debug!(%error, "metrics connection failed");
            }
        });
    }
}

fn respond<B>(request: &Request<B>, handle: &PrometheusHandle, db: &Db) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    if request.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return response;
    }
    update_pool_gauges(db);
    handle.run_upkeep();
    *response.body_mut() = Full::new(Bytes::from(handle.render()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
