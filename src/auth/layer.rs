//! The tower layer that authenticates every call and enforces the scope its
//! RPC declares. Health and reflection pass without a token; an RPC that
//! declares no scope is refused (fail closed).

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use super::{Principal, ScopeMap, Verifier, scope::Declared, token::TokenError};
use crate::{
    error::{Error, Reason},
    telemetry::call::CallTenant,
};

/// Paths served to anyone: health checks and reflection.
const PUBLIC_PREFIXES: &[&str] =
    &["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// Whether `path` is served to anyone (and never shed under load).
pub fn is_public(path: &str) -> bool {
    PUBLIC_PREFIXES.iter().any(|prefix| path.starts_with(prefix))
}

/// Decides, for a path and its headers, who the caller is and whether it may call.
#[derive(Clone, Debug)]
pub struct Authorizer {
    verifier: Verifier,
    scopes: Arc<ScopeMap>,
}

impl Authorizer {
    /// An authorizer with these keys and this scope map.
    pub fn new(verifier: Verifier, scopes: ScopeMap) -> Self {
        Authorizer { verifier, scopes: Arc::new(scopes) }
    }

    /// `Ok(None)` for a public path, the verified caller for an allowed call.
    pub async fn authorize(&self, path: &str, headers: &HeaderMap) -> Result<Option<Principal>, Error> {
        if is_public(path) {
            return Ok(None);
        }
        let declared = self.scopes.get(path).ok_or_else(|| Error::UnknownMethod(path.to_string()))?;
        let token = bearer_token(headers)?;
        let principal = self.verifier.verify(token).await.map_err(|e| match e {
            TokenError::Expired => Error::Unauthenticated {
                reason: Reason::TokenExpired,
                message: "The token has expired: get a new one.".to_string(),
            },
            TokenError::Invalid(why) => Error::Unauthenticated {
                reason: Reason::TokenInvalid,
                message: format!("The token was refused: {why}."),
            },
        })?;
        match declared {
            Declared::Scope(scope) if principal.scopes.allows(*scope) => Ok(Some(principal)),
            Declared::Scope(scope) => Err(Error::PermissionDenied {
                reason: Reason::ScopeMissing,
                message: format!("This call needs a token with the scope \"{scope}\"."),
                metadata: vec![("required_scope", scope.to_string())],
            }),
            Declared::Missing => Err(Error::PermissionDenied {
                reason: Reason::ScopeMissing,
                message: "This call declares no scope and is refused.".to_string(),
                metadata: vec![("required_scope", String::new())],
            }),
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, Error> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| Error::Unauthenticated {
        reason: Reason::TokenMissing,
        message: "This call needs an `authorization: Bearer <token>` header.".to_string(),
    })?;
    let invalid = || Error::Unauthenticated {
        reason: Reason::TokenInvalid,
        message: "The authorization header must read `Bearer <token>`.".to_string(),
    };
    let value = value.to_str().map_err(|_| invalid())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(invalid());
    }
    Ok(token.trim())
}

/// Wraps the gRPC router so that every call passes the [`Authorizer`].
#[derive(Clone, Debug)]
pub struct AuthLayer {
    authorizer: Authorizer,
}

impl AuthLayer {
    /// A layer enforcing `authorizer`.
    pub fn new(authorizer: Authorizer) -> Self {
        AuthLayer { authorizer }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, authorizer: self.authorizer.clone() }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    authorizer: Authorizer,
}

impl<S, B> Service<Request<B>> for AuthService<S>
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is the one made ready by poll_ready's caller next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authorizer = self.authorizer.clone();
        Box::pin(async move {
            match authorizer.authorize(request.uri().path(), request.headers()).await {
                Ok(principal) => {
                    if let Some(principal) = principal {
                        if let Some(tenant) = request.extensions().get::<CallTenant>() {
                            tenant.set(&principal.tenant);
                        }
                        request.extensions_mut().insert(principal);
                    }
                    inner.call(request).await
                }
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        })
    }
}
