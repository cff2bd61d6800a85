//! The embedded default: with SQLite and no token key configured, agenda makes
//! a development HS256 secret in its data folder (kept across restarts) and
//! prints a token and a `grpcurl` line that work when pasted.

use std::{io::Write, path::Path, time::Duration};

use rand::RngCore;

use crate::{
    auth::{Claims, Scope, mint_hs256},
    config::Settings,
};

const SECRET_FILE: &str = "dev-hs256-secret";
/// Lifetime of the printed development token.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a development run prints.
#[derive(Debug)]
pub struct DevMode {
    /// A token for tenant `dev` with every scope.
    pub token: String,
}

/// Makes sure settings have a token key: with the embedded SQLite default and
/// none configured, loads or makes the development secret; with PostgreSQL
/// and none configured, refuses.
pub fn ensure_key(settings: &mut Settings) -> anyhow::Result<Option<DevMode>> {
    if settings.has_auth_key() {
        return Ok(None);
    }
    if !matches!(settings.database, crate::config::Database::Sqlite(_)) {
        anyhow::bail!(
            "no token key is configured: with PostgreSQL agenda refuses to start without one. \
             Set AGENDA_AUTH_HS256_SECRET (a long random string) or AGENDA_AUTH_JWKS_FILE (a JWKS file of public keys)."
        );
    }
    let secret = load_or_make_secret(&settings.data_dir)?;
    settings.auth_hs256_secret = Some(secret.clone());
    let token = mint(&secret, "dev", "developer", &all_scopes(), DEV_TOKEN_TTL).map_err(anyhow::Error::msg)?;
    Ok(Some(DevMode { token }))
}

/// The secret for `agenda token`: the configured one, or the development one
/// of the data folder (made if missing) with the embedded default.
pub fn signing_secret(settings: &Settings) -> anyhow::Result<String> {
    if let Some(secret) = &settings.auth_hs256_secret {
        return Ok(secret.clone());
    }
    if settings.embedded_default || matches!(settings.database, crate::config::Database::Sqlite(_)) {
        return load_or_make_secret(&settings.data_dir);
    }
    anyhow::bail!("no HS256 secret is configured: set AGENDA_AUTH_HS256_SECRET")
}

/// Every scope, space-separated.
pub fn all_scopes() -> String {
    Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
}

/// Mints an HS256 token for `tenant` and `sub` valid for `ttl`.
pub fn mint(secret: &str, tenant: &str, sub: &str, scopes: &str, ttl: Duration) -> Result<String, String> {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = Claims {
        sub: sub.to_string(),
        tenant: tenant.to_string(),
        scope: scopes.to_string(),
        exp: now.saturating_add(ttl.as_secs()),
        iat: Some(now),
        nbf: None,
        iss: None,
        aud: None,
    };
    mint_hs256(secret, &claims)
}

fn load_or_make_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(SECRET_FILE);
    if let Ok(secret) = std::fs::read_to_string(&path) {
        let secret = secret.trim().to_string();
        if secret.len() >= 32 {
            return Ok(secret);
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    file.write_all(secret.as_bytes())?;
    Ok(secret)
}

/// The lines printed at a development start.
pub fn banner(dev: &DevMode, port: u16) -> String {
    format!(
        "\n  agenda is running in development mode (embedded SQLite, development secret).\n\
         \n  A token for tenant \"dev\" with every scope, valid 24 hours:\n\n    {token}\n\
         \n  Try it:\n\n    grpcurl -plaintext -H \"authorization: Bearer {token}\" \\\n      \
         -d '{{\"contact\": {{\"display_name\": \"Ada Lovelace\"}}}}' \\\n      \
         localhost:{port} agenda.v1.ContactService/CreateContact\n",
        token = dev.token,
    )
}
