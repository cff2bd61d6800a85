//! Measures what the observing layer (request id, trace context, metrics,
//! the per-call log line) adds to a call: the same stub service is called
//! with and without `CallLayer` in front, in-process, no network.
//!
//! ```sh
//! cargo run --release --example call_layer_bench            # no log output
//! RUST_LOG=info cargo run --release --example call_layer_bench  # with JSON log lines (to /dev/null)
//! ```

use std::{convert::Infallible, time::Instant};

use agenda::telemetry::{
    self,
    call::{CallLayer, MethodTable},
};
use http::{Request, Response};
use http_body_util::BodyExt;
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt, service_fn};

const CALLS: u32 = 200_000;

async fn stub(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut response = Response::new(Body::empty());
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("0"));
    Ok(response)
}

fn request() -> Request<Body> {
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = http::Uri::from_static("http://localhost/agenda.v1.ContactService/GetContact");
    request.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    request
}

async fn run<S>(mut service: S) -> anyhow::Result<f64>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let start = Instant::now();
    for _ in 0..CALLS {
        let response = service.ready().await?.call(request()).await?;
        // Drain the body, as the transport would, so trailers and counters run.
        let _ = response.into_body().collect().await;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let logging = std::env::var("RUST_LOG").is_ok();
    if logging {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::sink)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    telemetry::metrics::handle();
    let methods = MethodTable::from_descriptor_sets(&[agenda::api::FILE_DESCRIPTOR_SET])?;
    let (_draining_tx, draining) = tokio::sync::watch::channel(false);
    let bare = run(service_fn(stub)).await?;
    let layered = run(CallLayer::new(methods, draining).layer(service_fn(stub))).await?;
    println!("{CALLS} calls, logs {}", if logging { "on (JSON, to a sink)" } else { "off" });
    println!("stub alone:        {bare:.2} µs per call");
    println!("with CallLayer:    {layered:.2} µs per call (+{:.2} µs)", layered - bare);
    Ok(())
}
