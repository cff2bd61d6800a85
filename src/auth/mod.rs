//! Who the caller is and what it may do: token verification, the scope each
//! RPC declares in the proto, and the tower layer that enforces both.

mod layer;
mod scope;
mod token;

pub use layer::{AuthLayer, Authorizer, is_public};
pub use scope::{Scope, ScopeMap, ScopeSet};
pub use token::{Claims, TokenError, Verifier, VerifierConfig, mint_hs256};

use crate::error::Error;

/// The verified caller of an RPC, put into the request's extensions by the
/// auth layer. Handlers take the tenant from here, never from a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The token's `sub`: a user or service id.
    pub subject: String,
    /// The token's `tenant`.
    pub tenant: String,
    /// The token's scopes.
    pub scopes: ScopeSet,
    /// When the token expires (its `exp` plus the clock leeway), seconds
    /// since the epoch: a long-lived stream ends then.
    pub expires_at: u64,
    /// The languages the caller reads (its `accept-language` metadata).
    pub languages: crate::i18n::Languages,
}

impl Principal {
    /// The caller of a request. The auth layer refuses every call without a
    /// verified token before it reaches a handler, so a handler without a
    /// principal is a bug in the server's wiring: INTERNAL, and never served.
    /// Its languages come from the request's `accept-language`.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Principal, Error> {
        let mut caller = request.extensions().get::<Principal>().cloned().ok_or_else(|| {
            Error::Internal("a handler ran without a verified caller; the auth layer is missing".into())
        })?;
        caller.languages = crate::i18n::Languages::from_metadata(request.metadata());
        Ok(caller)
    }
}
