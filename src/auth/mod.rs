//! Who the caller is and what it may do: token verification, the scope each
//! RPC declares in the proto, and the tower layer that enforces both.

mod layer;
mod scope;
mod token;

pub use layer::{AuthLayer, Authorizer, is_public};
pub use scope::{Scope, ScopeMap, ScopeSet};
pub use token::{Claims, TokenError, Verifier, VerifierConfig, mint_hs256};

use crate::error::{Error, Reason};

/// The verified caller of an RPC, put into the request's extensions by the
/// auth layer. Handlers take the tenant from here, never from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: a user or service id.
    pub subject: String,
    /// The token's `tenant`.
    pub tenant: String,
    /// The token's scopes.
    pub scopes: ScopeSet,
}

impl Principal {
    /// The caller of a request; an error if the auth layer did not run, which
    /// is a bug, so no request is ever served without a principal.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Principal, Error> {
        request.extensions().get::<Principal>().cloned().ok_or_else(|| Error::Unauthenticated {
            reason: Reason::TokenMissing,
            message: "This call needs an `authorization: Bearer <token>` header.".to_string(),
        })
    }
}
