//! Bearer token verification with `jsonwebtoken`: an HS256 shared secret and
//! RS256 / ES256 / EdDSA public keys from a JWKS file that is reloaded when it
//! changes. The algorithm is pinned to the key that verifies it, so neither
//! `alg: none` nor an HS/RS confusion can get through.

use std::{
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
    modified: Option<SystemTime>,
    checked: Instant,
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
                    state: RwLock::new(JwksState { keys: Arc::new(keys), modified, checked: Instant::now() }),
                }))
            }
            None => None,
        };
        if hs256.is_none() && jwks.is_none() {
            return Err("no token key is configured: set AGENDA_AUTH_HS256_SECRET or AGENDA_AUTH_JWKS_FILE".into());
        }
        Ok(Verifier { hs256, jwks, issuer: config.issuer.clone(), audience: config.audience.clone() })
    }

    /// Verifies a token and returns its caller.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        // The library's own text (e.g. for `alg: none`) goes to the log, not to the caller.
        let header = decode_header(token).map_err(|e| {
            tracing::debug!(error = %e, "token header refused");
            TokenError::Invalid(
                "the token is not a signed JWT this server accepts (HS256, RS256, ES256 or EdDSA)".into(),
            )
        })?;
        let claims = if header.alg == Algorithm::HS256 {
            let key = self
                .hs256
                .as_ref()
                .ok_or_else(|| TokenError::Invalid("HS256 tokens are not accepted by this server".into()))?;
            self.decode(token, key, Algorithm::HS256)?
        } else {
            let keys = self.public_keys().await;
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
            verified.ok_or(last)?
        };
        // Both are stored with what the caller writes: text a database cannot
        // hold (NUL) or a log line should not carry is refused here.
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
            subject: claims.sub,
            tenant: claims.tenant,
            scopes: ScopeSet::parse(&claims.scope),
            expires_at: claims.exp.saturating_add(LEEWAY_SECONDS),
            languages: Default::default(),
        })
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

    /// The JWKS keys, reloaded first when the file changed.
    async fn public_keys(&self) -> Arc<Vec<PublicKey>> {
        let Some(jwks) = &self.jwks else {
            return Arc::new(Vec::new());
        };
        {
            let state = jwks.state.read().await;
            if state.checked.elapsed() < JWKS_CHECK_INTERVAL {
                return state.keys.clone();
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
                        state.modified = modified;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "kept the previous JWKS keys: the file could not be loaded");
                    }
                    Err(error) => tracing::warn!(%error, "kept the previous JWKS keys"),
                }
            }
        }
        state.keys.clone()
    }
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
