//! Bearer token verification with `jsonwebtoken`: an HS256 shared secret and
//! RS256 / ES256 / EdDSA public keys from a JWKS file that is reloaded when it
//! changes. The algorithm is pinned to the key that verifies it, so neither
//! `alg: none` nor an HS/RS confusion can get through.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm},
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use super::{Principal, ScopeSet};

/// Allowed clock skew for `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;
/// Tokens kept verified, so that a caller's next call with the same token
/// costs a lookup instead of a signature check; a full cache starts over.
const CACHED_TOKENS: usize = 4096;
/// Longer tokens are verified every time (they would make the cache large).
const MAX_CACHED_TOKEN_BYTES: usize = 4096;
/// How often the JWKS file's modification time is looked at, at most.
const JWKS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The claims agenda reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The caller: a user or service id.
    pub sub: String,
    /// The caller's tenant.
    pub tenant: String,
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: a string or a list of strings (checked by the verifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Anything else: bad shape, signature, algorithm, key, claims.
    #[error("{0}")]
    Invalid(String),
}

/// Where the verifier takes its keys from.
#[derive(Debug, Clone, Default)]
pub struct VerifierConfig {
    /// The HS256 shared secret.
    pub hs256_secret: Option<String>,
    /// A JWKS file of public keys (RS256, ES256, EdDSA).
    pub jwks_file: Option<PathBuf>,
    /// The required `iss`, when set.
    pub issuer: Option<String>,
    /// The required `aud`, when set.
    pub audience: Option<String>,
}

struct PublicKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

struct JwksState {
    keys: Arc<Vec<PublicKey>>,
    /// Counts key reloads: a token verified by keys since replaced is verified again.
    generation: u64,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// A token verified earlier, with what its validity depends on.
struct Verified {
    principal: Principal,
    not_before: Option<u64>,
    expires: u64,
    /// The JWKS generation that verified it (0 for HS256, whose secret is fixed).
    generation: u64,
}

struct Jwks {
    path: PathBuf,
    state: RwLock<JwksState>,
}

/// Verifies bearer tokens; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    hs256: Option<Arc<DecodingKey>>,
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    verified: Arc<std::sync::Mutex<HashMap<Box<str>, Verified>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("jwks", &self.jwks.as_ref().map(|j| &j.path))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Verifier {
    /// A verifier for the configured keys; fails when a JWKS file cannot be
    /// read or when no key at all is configured.
    pub fn new(config: &VerifierConfig) -> Result<Self, String> {
        let hs256 = config.hs256_secret.as_ref().map(|s| Arc::new(DecodingKey::from_secret(s.as_bytes())));
        let jwks = match &config.jwks_file {
            Some(path) => {
                let (keys, modified) = load_jwks(path)?;
                Some(Arc::new(Jwks {
                    path: path.clone(),
                    state: RwLock::new(JwksState {
                        keys: Arc::new(keys),
                        generation: 1,
                        modified,
                        checked: Instant::now(),
                    }),
                }))
            }
            None => None,
        };
        if hs256.is_none() && jwks.is_none() {
            return Err("no token key is configured: set AGENDA_AUTH_HS256_SECRET or AGENDA_AUTH_JWKS_FILE".into());
        }
        Ok(Verifier {
            hs256,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            verified: Default::default(),
        })
    }

    /// Verifies a token and returns its caller. A token verified before is
    /// looked up instead, while its times still hold and the keys that
    /// verified it are still the server's.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(principal) = self.cached(token, now).await {
            return Ok(principal);
        }
        let (claims, generation) = self.verify_signed(token).await?;
        let principal = principal_of(&claims)?;
        if token.len() <= MAX_CACHED_TOKEN_BYTES
            && let Ok(mut verified) = self.verified.lock()
        {
            if verified.len() >= CACHED_TOKENS {
                verified.clear();
            }
            let entry =
                Verified { principal: principal.clone(), not_before: claims.nbf, expires: claims.exp, generation };
            verified.insert(token.into(), entry);
        }
        Ok(principal)
    }

    /// The caller of a token verified before, if it is still valid at `now`
    /// (the same rules as [`jsonwebtoken`]'s: `exp` and `nbf` with the leeway).
    async fn cached(&self, token: &str, now: u64) -> Option<Principal> {
        let (principal, generation) = {
            let mut verified = self.verified.lock().ok()?;
            let entry = verified.get(token)?;
            let expired = entry.expires < now.saturating_sub(LEEWAY_SECONDS);
            if expired || entry.not_before.is_some_and(|nbf| nbf > now + LEEWAY_SECONDS) {
                // Verified again, to answer with the reason.
                verified.remove(token);
                return None;
            }
            (entry.principal.clone(), entry.generation)
        };
        if generation != 0 && self.public_keys().await.1 != generation {
            return None;
        }
        Some(principal)
    }

    /// Checks a token's signature and claims; returns them and the JWKS
    /// generation of the key that verified it (0 for HS256).
    async fn verify_signed(&self, token: &str) -> Result<(Claims, u64), TokenError> {
        // The library's own text (e.g. for `alg: none`) goes to the log, not to the caller.
        let header = decode_header(token).map_err(|e| {
            tracing::debug!(error = %e, "token header refused");
            TokenError::Invalid(
                "the token is not a signed JWT this server accepts (HS256, RS256, ES256 or EdDSA)".into(),
            )
        })?;
        if header.alg == Algorithm::HS256 {
            let key = self
                .hs256
                .as_ref()
                .ok_or_else(|| TokenError::Invalid("HS256 tokens are not accepted by this server".into()))?;
            Ok((self.decode(token, key, Algorithm::HS256)?, 0))
        } else {
            let (keys, generation) = self.public_keys().await;
            let mut candidates = keys
                .iter()
                .filter(|k| k.algorithm == header.alg && (header.kid.is_none() || header.kid == k.kid))
                .peekable();
            if candidates.peek().is_none() {
                return Err(TokenError::Invalid(format!(
                    "no key of this server verifies {:?} tokens{}",
                    header.alg,
                    header.kid.as_deref().map(|k| format!(" with kid {k:?}")).unwrap_or_default()
                )));
            }
            let mut last = TokenError::Invalid("the token signature is invalid".into());
            let mut verified = None;
            for candidate in candidates {
                match self.decode(token, &candidate.key, candidate.algorithm) {
                    Ok(claims) => {
                        verified = Some(claims);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            Ok((verified.ok_or(last)?, generation))
        }
    }

    fn decode(&self, token: &str, key: &DecodingKey, algorithm: Algorithm) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &self.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        decode::<Claims>(token, key, &validation).map(|data| data.claims).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::InvalidSignature => TokenError::Invalid("the token signature is invalid".into()),
            ErrorKind::InvalidIssuer => TokenError::Invalid("the token's issuer is not accepted".into()),
            ErrorKind::InvalidAudience => TokenError::Invalid("the token's audience is not accepted".into()),
            ErrorKind::ImmatureSignature => TokenError::Invalid("the token is not valid yet (nbf)".into()),
            ErrorKind::MissingRequiredClaim(claim) => {
                TokenError::Invalid(format!("the token lacks the `{claim}` claim"))
            }
            ErrorKind::Json(_) => {
                TokenError::Invalid("the token's claims are malformed or lack `sub` or `tenant`".into())
            }
            _ => {
                tracing::debug!(error = %e, "token refused");
                TokenError::Invalid("the token is malformed or its signature does not verify".into())
            }
        })
    }

    /// The JWKS keys and their generation, reloaded first when the file changed.
    async fn public_keys(&self) -> (Arc<Vec<PublicKey>>, u64) {
        let Some(jwks) = &self.jwks else {
            return (Arc::new(Vec::new()), 0);
        };
        {
            let state = jwks.state.read().await;
            if state.checked.elapsed() < JWKS_CHECK_INTERVAL {
                return (state.keys.clone(), state.generation);
            }
        }
        let mut state = jwks.state.write().await;
        if state.checked.elapsed() >= JWKS_CHECK_INTERVAL {
            state.checked = Instant::now();
            let modified = tokio::fs::metadata(&jwks.path).await.and_then(|m| m.modified()).ok();
            if modified != state.modified {
                let path = jwks.path.clone();
                match tokio::task::spawn_blocking(move || load_jwks(&path)).await {
                    Ok(Ok((keys, modified))) => {
                        tracing::info!(keys = keys.len(), path = %jwks.path.display(), "reloaded the JWKS file");
                        state.keys = Arc::new(keys);
                        state.generation += 1;
                        state.modified = modified;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "kept the previous JWKS keys: the file could not be loaded");
                    }
                    Err(error) => tracing::warn!(%error, "kept the previous JWKS keys"),
                }
            }
        }
        (state.keys.clone(), state.generation)
    }
}

/// The caller a token's claims name. Both `sub` and `tenant` are stored
/// with what the caller writes: text a database cannot hold (NUL) or a log
/// line should not carry is refused here.
fn principal_of(claims: &Claims) -> Result<Principal, TokenError> {
    if claims.sub.chars().any(char::is_control) || claims.tenant.chars().any(char::is_control) {
        return Err(TokenError::Invalid("the token's `sub` or `tenant` claim holds control characters".into()));
    }
    if claims.sub.trim().is_empty() || claims.sub.len() > 255 {
        return Err(TokenError::Invalid("the token has no `sub` claim".into()));
    }
    if claims.tenant.trim().is_empty() || claims.tenant.len() > 255 {
        return Err(TokenError::Invalid("the token's `tenant` claim is empty or too long".into()));
    }
    Ok(Principal {
        subject: claims.sub.clone(),
        tenant: claims.tenant.clone(),
        scopes: ScopeSet::parse(&claims.scope),
        expires_at: claims.exp.saturating_add(LEEWAY_SECONDS),
        languages: Default::default(),
    })
}

/// Reads a JWKS file: every RS256, ES256 and EdDSA public key in it.
fn load_jwks(path: &PathBuf) -> Result<(Vec<PublicKey>, Option<SystemTime>), String> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("JWKS file {} is not a JWK set: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Some(Algorithm::ES256),
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
            _ => None,
        };
        let declared = match jwk.common.key_algorithm {
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
            Some(_) => None,
            None => inferred,
        };
        // A key is used only for the one algorithm its type allows.
        let Some(algorithm) = declared.filter(|alg| Some(*alg) == inferred) else {
            tracing::warn!(kid = ?jwk.common.key_id, "skipped a JWKS key: only RS256, ES256 and EdDSA keys are used");
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(PublicKey { kid: jwk.common.key_id.clone(), algorithm, key }),
            Err(e) => {
                tracing::warn!(kid = ?jwk.common.key_id, error = %e, "skipped an unusable JWKS key")
            }
        }
    }
    Ok((keys, modified))
}

/// Mints an HS256 token, as `agenda token` and the development mode do.
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| format!("cannot sign the token: {e}"))
}
