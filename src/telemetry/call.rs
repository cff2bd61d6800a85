//! The tower layer that observes every call over the whole router: it gives
//! the call an `x-request-id` (the caller's, or a new UUID) and a W3C trace
//! context, echoes both in the response metadata, counts the grpc-prometheus
//! metrics, and logs one line when the call ends, with the real gRPC code read
//! from the response headers (trailers-only answers, how tonic sends errors)
//! or from the trailers at the end of the body. When the server drains,
//! streaming calls still open end with `UNAVAILABLE`, so that their clients
//! move to another replica instead of holding the drain up to its grace.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use metrics::{Counter, Histogram, Label};
use tokio::sync::watch;
use tonic::body::Body as TonicBody;
use tower::{Layer, Service};
use tracing::Instrument;

use super::{frames::FrameCounter, metrics::HANDLING_SECONDS, trace_context::TraceContext};
use crate::deadline::{CallContext, CallIds};

/// The request id header, echoed in every response.
pub const REQUEST_ID: &str = "x-request-id";
/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// Longest accepted caller-given request id; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The tenant of the call, filled in by the auth layer once the token is
/// verified, so that the call's log line can name it.
#[derive(Clone, Debug, Default)]
pub struct CallTenant(Arc<OnceLock<String>>);

impl CallTenant {
    /// Records the tenant (the first one set wins).
    pub fn set(&self, tenant: &str) {
        let _ = self.0.set(tenant.to_string());
    }

    fn get(&self) -> &str {
        self.0.get().map_or("", String::as_str)
    }
}

/// The labels of one RPC and its metric handles, prepared once at
/// start-up, so a call costs no lookup of its label set in the registry.
#[derive(Debug)]
struct MethodLabels {
    kind: &'static str,
    /// Logged at debug instead of info (health checks every few seconds).
    quiet: bool,
    labels: Vec<Label>,
    started: Counter,
    received: Counter,
    sent: Counter,
    handling: Histogram,
    /// `grpc_server_handled_total` by code (0 to 16), registered at the
    /// first call that ends with the code.
    handled: [OnceLock<Counter>; 17],
}

impl MethodLabels {
    fn new(kind: &'static str, service: &str, method: &str, quiet: bool) -> Self {
        let labels = vec![
            Label::new("grpc_type", kind),
            Label::new("grpc_service", service.to_string()),
            Label::new("grpc_method", method.to_string()),
        ];
        MethodLabels {
            kind,
            quiet,
            started: metrics::counter!("grpc_server_started_total", labels.clone()),
            received: metrics::counter!("grpc_server_msg_received_total", labels.clone()),
            sent: metrics::counter!("grpc_server_msg_sent_total", labels.clone()),
            handling: metrics::histogram!(HANDLING_SECONDS, labels.clone()),
            handled: Default::default(),
            labels,
        }
    }

    fn handled(&self, code: i32) -> Counter {
        let index = usize::try_from(code).ok().filter(|code| *code < self.handled.len()).unwrap_or(2);
        self.handled[index]
            .get_or_init(|| {
                let mut labels = self.labels.clone();
                labels.push(Label::new("grpc_code", code_name(code)));
                metrics::counter!("grpc_server_handled_total", labels)
            })
            .clone()
    }
}

/// The RPCs the server knows, by HTTP path, from their descriptor sets.
/// Unknown paths share one label set, so a caller cannot grow the metrics.
#[derive(Debug)]
pub struct MethodTable {
    methods: HashMap<String, Arc<MethodLabels>>,
    unknown: Arc<MethodLabels>,
}

impl MethodTable {
    /// The RPCs of these encoded `FileDescriptorSet`s.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<MethodTable, prost::DecodeError> {
        // The handles are taken from the recorder, so it is installed first.
        super::metrics::handle();
        let mut methods = HashMap::new();
        for bytes in sets {
            let set: prost_types::FileDescriptorSet = prost::Message::decode(*bytes)?;
            for file in set.file {
                for service in &file.service {
                    let full = match file.package() {
                        "" => service.name().to_string(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        let labels = MethodLabels::new(kind, &full, method.name(), full == "grpc.health.v1.Health");
                        methods.insert(format!("/{full}/{}", method.name()), Arc::new(labels));
                    }
                }
            }
        }
        let unknown = Arc::new(MethodLabels::new("unknown", "unknown", "unknown", false));
        Ok(MethodTable { methods, unknown })
    }

    fn get(&self, path: &str) -> Arc<MethodLabels> {
        self.methods.get(path).unwrap_or(&self.unknown).clone()
    }
}

/// Observes every call: request id, trace context, metrics, one log line.
#[derive(Clone, Debug)]
pub struct CallLayer {
    methods: Arc<MethodTable>,
    draining: watch::Receiver<bool>,
}

impl CallLayer {
    /// A layer labelling calls from `methods`; streaming responses end with
    /// `UNAVAILABLE` once `draining` turns true.
    pub fn new(methods: MethodTable, draining: watch::Receiver<bool>) -> Self {
        super::metrics::handle();
        CallLayer { methods: Arc::new(methods), draining }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService { inner, methods: self.methods.clone(), draining: self.draining.clone() }
    }
}

/// The service of [`CallLayer`].
#[derive(Clone, Debug)]
pub struct CallService<S> {
    inner: S,
    methods: Arc<MethodTable>,
    draining: watch::Receiver<bool>,
}

impl<S> Service<Request<TonicBody>> for CallService<S>
where
    S: Service<Request<TonicBody>, Response = Response<TonicBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<TonicBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<TonicBody>) -> Self::Future {
        let start = Instant::now();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_string();
        let method = self.methods.get(&path);

        let request_id = request_id(request.headers());
        let trace = TraceContext::continue_or_start(request.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()));
        let tenant = CallTenant::default();
        request.extensions_mut().insert(tenant.clone());

        method.started.increment(1);
        let received = method.received.clone();
        let mut request = request.map(|body| TonicBody::new(Counted::new(body, received, None)));

        let (span, trace) = if super::otlp_enabled() {
            let span = tracing::info_span!(
                "call",
                method = %path,
                request_id = %request_id,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                parent_span_id = %trace.parent_id_hex(),
                otel.name = %path,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.grpc.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let trace = trace.exported_as(&span);
            span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
            span.record("span_id", tracing::field::display(trace.span_id_hex()));
            (span, trace)
        } else {
            // Without export a span would only carry the ids into log lines,
            // at a quarter of the cost of a call: the few lines logged
            // during a call take them from its context instead (`log_cause`).
            (tracing::Span::none(), trace)
        };
        request.extensions_mut().insert(Arc::new(CallIds {
            method: path.clone(),
            request_id: request_id.clone(),
            trace_id: trace.trace_id_hex(),
        }));
        let request_id_value = HeaderValue::from_str(&request_id).ok();
        let traceparent_value = HeaderValue::from_str(&trace.traceparent()).ok();
        // Handlers see the id and the trace context the call runs under.
        if let Some(value) = &request_id_value {
            request.headers_mut().insert(REQUEST_ID, value.clone());
        }
        if let Some(value) = &traceparent_value {
            request.headers_mut().insert(TRACEPARENT, value.clone());
        }
        let future = inner.call(request).instrument(span.clone());
        let draining = matches!(method.kind, "server_stream" | "bidi_stream").then(|| self.draining.clone());
        Box::pin(async move {
            let mut response = future.await?;
            let headers = response.headers_mut();
            if let Some(value) = request_id_value {
                headers.insert(REQUEST_ID, value);
            }
            if let Some(value) = traceparent_value {
                headers.insert(TRACEPARENT, value);
            }
            let finish =
                Finish { start, header_code: grpc_status(headers), method, path, request_id, trace, tenant, span };
            let sent = finish.method.sent.clone();
            let response = match draining {
                Some(draining) if finish.header_code.is_none() => {
                    response.map(|body| TonicBody::new(Draining::new(body, draining)))
                }
                _ => response,
            };
            Ok(response.map(|body| TonicBody::new(Counted::new(body, sent, Some(finish)))))
        })
    }
}

/// The caller's `x-request-id` when it is short printable ASCII, else a new UUID.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// What is recorded and logged when the call ends.
struct Finish {
    start: Instant,
    header_code: Option<i32>,
    method: Arc<MethodLabels>,
    path: String,
    request_id: String,
    trace: TraceContext,
    tenant: CallTenant,
    span: tracing::Span,
}

impl Finish {
    fn record(self, code: i32) {
        let elapsed = self.start.elapsed();
        let name = code_name(code);
        self.method.handling.record(elapsed.as_secs_f64());
        self.method.handled(code).increment(1);

        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let server_fault = matches!(code, 2 | 13 | 14 | 15);
        if super::otlp_enabled() {
            self.span.record("rpc.grpc.status_code", code);
            if server_fault {
                self.span.record("otel.status_code", "ERROR");
            }
        }
        // The line holds every field of the call's span itself; it is logged
        // inside the span only when spans are exported (then it becomes one
        // of its events), since printing the span again costs as much as the
        // line does.
        let _entered = super::otlp_enabled().then(|| self.span.enter());
        macro_rules! log {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    method = %self.path,
                    code = name,
                    latency_ms,
                    tenant = self.tenant.get(),
                    request_id = %self.request_id,
                    trace_id = %self.trace.trace_id_hex(),
                    span_id = %self.trace.span_id_hex(),
                    "call finished"
                )
            };
        }
        if server_fault {
            log!(tracing::Level::WARN);
        } else if self.method.quiet {
            log!(tracing::Level::DEBUG);
        } else {
            log!(tracing::Level::INFO);
        }
    }
}

/// How much a cause logged with [`log_cause`] matters.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    /// Expected now and then (a transaction conflict).
    Info,
    /// A fault of the server or the database.
    Error,
}

/// Logs what caused a call's answer, with the call's method, request id and
/// trace id (the current call's; none outside a call).
pub fn log_cause(severity: Severity, message: &str, cause: &dyn std::fmt::Display) {
    let ids = CallContext::current().ids.unwrap_or_default();
    let (method, request_id, trace_id) = (&ids.method, &ids.request_id, &ids.trace_id);
    match severity {
        Severity::Info => tracing::info!(error = %cause, %method, %request_id, %trace_id, "{message}"),
        Severity::Error => tracing::error!(error = %cause, %method, %request_id, %trace_id, "{message}"),
    }
}

/// The code names grpc-prometheus (Go's `codes.Code.String()`) uses.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

pin_project_lite::pin_project! {
    /// A body that counts the gRPC messages passing through it and, for a
    /// response, records the call when the body ends or is dropped.
    struct Counted<B> {
        #[pin]
        inner: B,
        frames: FrameCounter,
        counter: Counter,
        finish: Option<Finish>,
    }

    impl<B> PinnedDrop for Counted<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(finish) = this.finish.take() {
                // The body was dropped before its end: the client went away.
                let code = finish.header_code.unwrap_or(1);
                finish.record(code);
            }
        }
    }
}

impl<B> Counted<B> {
    fn new(inner: B, counter: Counter, finish: Option<Finish>) -> Self {
        Counted { inner, frames: FrameCounter::default(), counter, finish }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let messages = this.frames.feed(data);
                    if messages > 0 {
                        this.counter.increment(messages);
                    }
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(finish) = this.finish.take()
                {
                    let code = grpc_status(trailers).or(finish.header_code).unwrap_or(2);
                    finish.record(code);
                }
            }
            // The body failed or ended without trailers: the headers' code, else UNKNOWN.
            Some(Err(_)) | None => {
                if let Some(finish) = this.finish.take() {
                    let code = finish.header_code.unwrap_or(2);
                    finish.record(code);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A streaming response that ends with `UNAVAILABLE` trailers once the
    /// server drains, after passing on what the stream has ready (so a
    /// health watcher still sees NOT_SERVING first).
    struct Draining<B> {
        #[pin]
        inner: B,
        signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        ended: bool,
    }
}

impl<B> Draining<B> {
    fn new(inner: B, mut draining: watch::Receiver<bool>) -> Self {
        let signal = Box::pin(async move {
            // An error means the server is gone: drain as well.
            let _ = draining.wait_for(|draining| *draining).await;
        });
        Draining { inner, signal: Some(signal), ended: false }
    }
}

impl<B> Body for Draining<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(frame) = frame {
            return Poll::Ready(frame);
        }
        let drained = match this.signal {
            Some(signal) => signal.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if !drained {
            return Poll::Pending;
        }
        *this.signal = None;
        *this.ended = true;
        let status = tonic::Status::unavailable("The server is shutting down; reconnect to another replica.");
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", HeaderValue::from_static("14"));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
