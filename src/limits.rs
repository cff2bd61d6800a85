//! The tower layers that keep one replica within its limits. [`LimitLayer`]
//! sheds calls beyond `AGENDA_MAX_CONCURRENT_CALLS` (`RESOURCE_EXHAUSTED` /
//! `OVERLOADED`; health and reflection are never shed, so probes keep
//! answering), honours
//! the caller's `grpc-timeout` (`DEADLINE_EXCEEDED`, with the deadline handed
//! to the store through [`crate::deadline`]), and turns tonic's answer to an
//! oversized request into a clear `RESOURCE_EXHAUSTED` / `MESSAGE_TOO_LARGE`
//! and one that does not decode into `INVALID_ARGUMENT` / `MALFORMED_REQUEST`.
//! [`TenantLimitLayer`], inside authentication, sheds a tenant's calls beyond
//! `AGENDA_TENANT_MAX_CONCURRENT_CALLS`, so that one tenant flooding the
//! replica leaves the calls others need.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use tokio::{sync::Semaphore, time::Instant};
use tower::{Layer, Service};

use crate::{
    auth::{Principal, is_public},
    deadline::{self, CallContext},
    error::{Error, Overload},
};

/// tonic's own `grpc-timeout` timer sits outside this layer and answers
/// `CANCELLED`, and the caller's timer fires at the deadline too; ours ends
/// the call this much earlier so that the answer is `DEADLINE_EXCEEDED` and
/// reaches the caller before its own timer does.
const DEADLINE_MARGIN: Duration = Duration::from_millis(10);

/// Sheds load, enforces deadlines and names oversized requests.
#[derive(Clone, Debug)]
pub struct LimitLayer {
    permits: Arc<Semaphore>,
    max_message_bytes: usize,
}

impl LimitLayer {
    /// At most `max_calls` calls at once (over all connections); requests up to `max_message_bytes`.
    pub fn new(max_calls: usize, max_message_bytes: usize) -> Self {
        LimitLayer { permits: Arc::new(Semaphore::new(max_calls)), max_message_bytes }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService { inner, permits: self.permits.clone(), max_message_bytes: self.max_message_bytes }
    }
}

/// The service of [`LimitLayer`].
#[derive(Clone, Debug)]
pub struct LimitService<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max_message_bytes: usize,
}

impl<S, B> Service<Request<B>> for LimitService<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let permit = if is_public(request.uri().path()) {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(Arc::new(permit)),
                Err(_) => {
                    let overloaded = Error::Overloaded { scope: Overload::Server };
                    return Box::pin(async move { Ok(tonic::Status::from(overloaded).into_http()) });
                }
            }
        };
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(deadline::parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout.saturating_sub(DEADLINE_MARGIN));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max_message_bytes = self.max_message_bytes;
        Box::pin(async move {
            // The database work of the call holds clones of the permit, so it
            // is released only when the call and that work have both ended.
            let ids = request.extensions().get::<Arc<deadline::CallIds>>().cloned();
            let mut call = Box::pin(deadline::scope(deadline, permit.clone(), ids, inner.call(request)));
            let response = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, &mut call).await {
                    Ok(response) => response?,
                    Err(_) => {
                        // Dropping the call may wait for a blocking thread; the
                        // caller is answered now and the call is dropped aside.
                        // Its database work keeps its own clone of the permit.
                        tokio::spawn(async move { drop(call) });
                        return Ok(tonic::Status::from(Error::DeadlineExceeded).into_http());
                    }
                },
                None => call.await?,
            };
            drop(permit);
            if is_too_large(response.headers()) {
                return Ok(tonic::Status::from(Error::MessageTooLarge { limit: max_message_bytes }).into_http());
            }
            if is_undecodable(response.headers()) {
                return Ok(tonic::Status::from(Error::Malformed).into_http());
            }
            Ok(response)
        })
    }
}

/// Whether this is tonic's trailers-only answer to a request message that
/// does not decode (`INTERNAL`, "failed to decode Protobuf message"): the
/// caller's error, so it is answered and counted as INVALID_ARGUMENT.
fn is_undecodable(headers: &HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"13")
        && tonic::Status::from_header_map(headers)
            .is_some_and(|status| status.message().starts_with("failed to decode Protobuf message"))
}

/// Whether this is tonic's trailers-only answer to a request message over
/// the decoding limit (`OUT_OF_RANGE`, "decoded message length too large").
fn is_too_large(headers: &HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11")
        && tonic::Status::from_header_map(headers)
            .is_some_and(|status| status.message().contains("decoded message length too large"))
}

/// Sheds the calls of a tenant that already has its most calls running.
#[derive(Clone, Debug)]
pub struct TenantLimitLayer {
    tenants: Arc<Tenants>,
}

impl TenantLimitLayer {
    /// At most `max_calls` calls of one tenant at once.
    pub fn new(max_calls: usize) -> Self {
        TenantLimitLayer { tenants: Arc::new(Tenants { max_calls, running: Default::default() }) }
    }
}

/// The running calls of each tenant: a semaphore per tenant with calls,
/// dropped again once none of its calls runs.
#[derive(Debug)]
struct Tenants {
    max_calls: usize,
    running: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

/// Tenants whose semaphores are kept before the idle ones are dropped.
const TENANTS_KEPT: usize = 1024;

impl Tenants {
    fn try_acquire(&self, tenant: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let mut running = self.running.lock().ok()?;
        if running.len() >= TENANTS_KEPT && !running.contains_key(tenant) {
            // A semaphore only the map holds has no call running.
            running.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
        }
        let semaphore =
            running.entry(tenant.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.max_calls))).clone();
        semaphore.try_acquire_owned().ok()
    }
}

impl<S> Layer<S> for TenantLimitLayer {
    type Service = TenantLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantLimitService { inner, tenants: self.tenants.clone() }
    }
}

/// The service of [`TenantLimitLayer`].
#[derive(Clone, Debug)]
pub struct TenantLimitService<S> {
    inner: S,
    tenants: Arc<Tenants>,
}

impl<S, B> Service<Request<B>> for TenantLimitService<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Public calls (health, reflection) have no caller and are never shed.
        let Some(tenant) = request.extensions().get::<Principal>().map(|p| p.tenant.clone()) else {
            return Box::pin(inner.call(request));
        };
        let Some(permit) = self.tenants.try_acquire(&tenant) else {
            let overloaded = Error::Overloaded { scope: Overload::Tenant };
            return Box::pin(async move { Ok(tonic::Status::from(overloaded).into_http()) });
        };
        // Like the replica's permit, the tenant's is held by the call's
        // database work until that has stopped.
        let context = CallContext { tenant_permit: Some(Arc::new(permit)), ..CallContext::current() };
        Box::pin(context.scope(inner.call(request)))
    }
}
