//! Settings: command-line flags, `AGENDA_*` environment variables and an
//! optional TOML file (`--config` / `AGENDA_CONFIG`), in that order of
//! precedence, then the defaults. Secrets are never printed.
//!
//! Environment variables read here:
//! - `AGENDA_CONFIG`: path of a TOML file with any of the keys below in snake case.
//! - `AGENDA_DATABASE_URL`: `postgres://…` or `sqlite://path`; default an embedded SQLite file in the data folder.
//! - `AGENDA_DATA_DIR`: the data folder of the embedded default (default `./data`).
//! - `AGENDA_DATABASE_POOL_SIZE`: connections per replica (default 16).
//! - `AGENDA_LISTEN`: gRPC address (default `0.0.0.0:50051`).
//! - `AGENDA_METRICS_LISTEN`: Prometheus address (default `0.0.0.0:9090`).
//! - `AGENDA_AUTH_HS256_SECRET`, `AGENDA_AUTH_JWKS_FILE`, `AGENDA_AUTH_ISSUER`, `AGENDA_AUTH_AUDIENCE`: token verification.
//! - `AGENDA_LOG_FORMAT`: `json` or `pretty` (default: pretty on a terminal, json otherwise); `RUST_LOG` filters.
//! - `AGENDA_SHUTDOWN_GRACE`: how long in-flight calls may finish on SIGTERM (default 30s).
//! - `AGENDA_RETENTION`: how long soft-deleted resources are kept (default 30d).
//! - `AGENDA_PURGE_INTERVAL`: how often expired soft-deleted resources are purged (default 1m).
//! - `AGENDA_HEALTH_INTERVAL`: how often the database is checked for the health service (default 5s).
//! - `AGENDA_MAX_MESSAGE_BYTES`: largest request or response message (default 4 MiB); a larger
//!   request is `RESOURCE_EXHAUSTED`.
//! - `AGENDA_MAX_CONCURRENT_CALLS`: calls served at once per replica (default 512); beyond it calls
//!   are shed with `RESOURCE_EXHAUSTED` / `OVERLOADED` (health and reflection always answer).
//! - `AGENDA_TENANT_MAX_CONCURRENT_CALLS`: calls of one tenant served at once per replica (default a
//!   quarter of `AGENDA_MAX_CONCURRENT_CALLS`); beyond it that tenant's calls are shed with
//!   `RESOURCE_EXHAUSTED` / `OVERLOADED` (metadata `scope: tenant`), so one tenant cannot take
//!   every call another needs.
//! - `AGENDA_MAX_CONNECTION_AGE`: after this long a connection is asked to go away (HTTP/2 GOAWAY)
//!   so clients reconnect and load spreads over new replicas (default 30m; `0s` turns it off).
//! - `AGENDA_MAX_CONNECTION_AGE_GRACE`: how long calls may still run on a connection past its age
//!   before it is closed (default 30s).
//! - `AGENDA_HTTP2_KEEPALIVE_INTERVAL`, `AGENDA_HTTP2_KEEPALIVE_TIMEOUT`: HTTP/2 pings that find
//!   dead connections (default 30s and 10s).
//! - `AGENDA_TLS_CERT`, `AGENDA_TLS_KEY`: PEM certificate chain and private key; when set, gRPC is
//!   served over TLS (plaintext h2c otherwise). Reloaded when the files change.
//! - `AGENDA_TLS_CLIENT_CA`: PEM CA bundle; when set, clients must present a certificate it signed (mTLS).

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// agenda: contacts, activities and tasks of many tenants, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "agenda", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (and metrics) until SIGTERM or Ctrl-C.
    Serve(Options),
    /// Apply the database migrations and exit (for a Kubernetes Job).
    Migrate(Options),
    /// Print a token signed with the configured HS256 secret.
    Token(TokenArgs),
}

/// Arguments of `agenda token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The tenant the token is for.
    #[arg(long)]
    pub tenant: String,
    /// The caller (user or service id).
    #[arg(long)]
    pub sub: String,
    /// Space-separated scopes, e.g. "contacts.write tasks.read".
    #[arg(long, default_value = "")]
    pub scopes: String,
    /// How long the token is valid, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The settings (for the secret).
    #[command(flatten)]
    pub options: Options,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// The settings that flags, environment and file can give; all optional here,
/// resolved against the file and the defaults by [`Settings::resolve`].
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// A TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "AGENDA_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Database URL: postgres://user:pass@host/db, or sqlite://path [default: SQLite file in the data folder].
    #[arg(long, env = "AGENDA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Folder for the embedded SQLite database and the development secret [default: ./data].
    #[arg(long, env = "AGENDA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database connections per replica [default: 16].
    #[arg(long, env = "AGENDA_DATABASE_POOL_SIZE")]
    pub database_pool_size: Option<usize>,
    /// gRPC listen address [default: 0.0.0.0:50051].
    #[arg(long, env = "AGENDA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus metrics listen address [default: 0.0.0.0:9090].
    #[arg(long, env = "AGENDA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// HS256 shared secret that tokens are signed with.
    #[arg(long, env = "AGENDA_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<String>,
    /// JWKS file with RS256 / ES256 / EdDSA public keys; reloaded when it changes.
    #[arg(long, env = "AGENDA_AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,
    /// Required token issuer (`iss`), when set.
    #[arg(long, env = "AGENDA_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required token audience (`aud`), when set.
    #[arg(long, env = "AGENDA_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Log format [default: pretty on a terminal, json otherwise].
    #[arg(long, env = "AGENDA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// How long in-flight calls may run on after SIGTERM [default: 30s].
    #[arg(long, env = "AGENDA_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub shutdown_grace: Option<Duration>,
    /// How long soft-deleted resources are kept before they are purged [default: 30d].
    #[arg(long, env = "AGENDA_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub retention: Option<Duration>,
    /// How long changes are kept in the change feed; never less than the retention [default: 30d].
    #[arg(long, env = "AGENDA_CHANGE_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub change_retention: Option<Duration>,
    /// Open WatchChanges streams per replica; more are RESOURCE_EXHAUSTED [default: 2048].
    #[arg(long, env = "AGENDA_MAX_WATCHERS")]
    pub max_watchers: Option<usize>,
    /// PostgreSQL URL of the change listener's own session (LISTEN needs a
    /// direct session: not through a transaction-mode pooler) [default: the database URL].
    #[arg(long, env = "AGENDA_DATABASE_LISTEN_URL", hide_env_values = true)]
    pub database_listen_url: Option<String>,
    /// How often resources past their purge time are removed [default: 1m].
    #[arg(long, env = "AGENDA_PURGE_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub purge_interval: Option<Duration>,
    /// How often the database is checked for the health service [default: 5s].
    #[arg(long, env = "AGENDA_HEALTH_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub health_interval: Option<Duration>,
    /// Largest request message in bytes [default: 4194304].
    #[arg(long, env = "AGENDA_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest answer of a read in bytes: a BatchGet over it is RESOURCE_EXHAUSTED, a List page stops early [default: 4194304].
    #[arg(long, env = "AGENDA_MAX_RESPONSE_BYTES")]
    pub max_response_bytes: Option<usize>,
    /// Calls served at once; more are shed with RESOURCE_EXHAUSTED [default: 512].
    #[arg(long, env = "AGENDA_MAX_CONCURRENT_CALLS")]
    pub max_concurrent_calls: Option<usize>,
    /// Calls of one tenant served at once; more of its calls are shed with RESOURCE_EXHAUSTED [default: a quarter of the calls served at once].
    #[arg(long, env = "AGENDA_TENANT_MAX_CONCURRENT_CALLS")]
    pub tenant_max_concurrent_calls: Option<usize>,
    /// Age after which a connection is asked to go away, so load rebalances; 0s turns it off [default: 30m].
    #[arg(long, env = "AGENDA_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub max_connection_age: Option<Duration>,
    /// How long calls may still run on a connection past its age [default: 30s].
    #[arg(long, env = "AGENDA_MAX_CONNECTION_AGE_GRACE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub max_connection_age_grace: Option<Duration>,
    /// Interval of HTTP/2 keepalive pings [default: 30s].
    #[arg(long, env = "AGENDA_HTTP2_KEEPALIVE_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub http2_keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered before the connection is closed [default: 10s].
    #[arg(long, env = "AGENDA_HTTP2_KEEPALIVE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub http2_keepalive_timeout: Option<Duration>,
    /// PEM certificate chain; with --tls-key, serves gRPC over TLS. Reloaded when it changes.
    #[arg(long, env = "AGENDA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate. Reloaded when it changes.
    #[arg(long, env = "AGENDA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    #[arg(long, env = "AGENDA_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

/// Which database agenda runs on.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// PostgreSQL at this URL.
    Postgres(String),
    /// SQLite in this file.
    Sqlite(PathBuf),
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Postgres(_) => f.write_str("Postgres(<redacted url>)"),
            Database::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
        }
    }
}

/// The resolved settings of a run.
#[derive(Clone)]
pub struct Settings {
    /// The database.
    pub database: Database,
    /// Whether the database is the embedded default (no URL configured).
    pub embedded_default: bool,
    /// The data folder.
    pub data_dir: PathBuf,
    /// Pool size.
    pub database_pool_size: usize,
    /// gRPC address.
    pub listen: SocketAddr,
    /// Metrics address.
    pub metrics_listen: SocketAddr,
    /// HS256 secret.
    pub auth_hs256_secret: Option<String>,
    /// JWKS file.
    pub auth_jwks_file: Option<PathBuf>,
    /// Required issuer.
    pub auth_issuer: Option<String>,
    /// Required audience.
    pub auth_audience: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Soft-delete retention.
    pub retention: Duration,
    /// How long changes are kept (at least `retention`).
    pub change_retention: Duration,
    /// Open watch streams per replica.
    pub max_watchers: usize,
    /// The change listener's PostgreSQL URL (PostgreSQL only).
    pub database_listen_url: Option<String>,
    /// How often expired resources are purged.
    pub purge_interval: Duration,
    /// How often the database is checked for health.
    pub health_interval: Duration,
    /// Largest request message in bytes.
    pub max_message_bytes: usize,
    /// Largest answer of a read in bytes (the response budget).
    pub max_response_bytes: usize,
    /// Calls served at once before load is shed.
    pub max_concurrent_calls: usize,
    /// Calls of one tenant served at once before its calls are shed.
    pub tenant_max_concurrent_calls: usize,
    /// Connection age before GOAWAY; `None` when off.
    pub max_connection_age: Option<Duration>,
    /// How long calls may run on past the connection age.
    pub max_connection_age_grace: Duration,
    /// HTTP/2 keepalive ping interval.
    pub http2_keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    pub http2_keepalive_timeout: Duration,
    /// TLS files; `None` serves plaintext h2c.
    pub tls: Option<TlsFiles>,
}

/// The files of the TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to (mTLS), when set.
    pub client_ca: Option<PathBuf>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database", &self.database)
            .field("data_dir", &self.data_dir)
            .field("database_pool_size", &self.database_pool_size)
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("auth_hs256_secret", &self.auth_hs256_secret.as_ref().map(|_| "<redacted>"))
            .field("auth_jwks_file", &self.auth_jwks_file)
            .field("auth_issuer", &self.auth_issuer)
            .field("auth_audience", &self.auth_audience)
            .field("log_format", &self.log_format)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("retention", &self.retention)
            .field("change_retention", &self.change_retention)
            .field("max_watchers", &self.max_watchers)
            .field("database_listen_url", &self.database_listen_url.as_ref().map(|_| "<redacted>"))
            .field("purge_interval", &self.purge_interval)
            .field("health_interval", &self.health_interval)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("tenant_max_concurrent_calls", &self.tenant_max_concurrent_calls)
            .field("max_connection_age", &self.max_connection_age)
            .field("max_connection_age_grace", &self.max_connection_age_grace)
            .field("http2_keepalive_interval", &self.http2_keepalive_interval)
            .field("http2_keepalive_timeout", &self.http2_keepalive_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Smallest response budget: the largest resource (64 KiB of text, its
/// rendered HTML at up to a few times that, 16 KiB of custom fields) fits.
pub const MIN_RESPONSE_BYTES: usize = 1024 * 1024;

/// Shortest HS256 secret accepted, in bytes: as long as the SHA-256 output (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

impl Settings {
    /// Resolves flags and environment over the config file over the defaults.
    pub fn resolve(options: Options) -> Result<Settings, String> {
        let file = match &options.config {
            Some(path) => read_file(path)?,
            None => Options::default(),
        };
        macro_rules! pick {
            ($field:ident) => {
                options.$field.clone().or(file.$field.clone())
            };
        }
        let data_dir = pick!(data_dir).unwrap_or_else(|| PathBuf::from("data"));
        let (database, embedded_default) = match pick!(database_url) {
            Some(url) => (parse_database_url(&url)?, false),
            None => (Database::Sqlite(data_dir.join("agenda.db")), true),
        };
        let retention = pick!(retention).unwrap_or(Duration::from_secs(30 * 24 * 3600));
        let pool_size = pick!(database_pool_size).unwrap_or(16);
        if pool_size == 0 {
            return Err("AGENDA_DATABASE_POOL_SIZE must be at least 1".into());
        }
        let max_message_bytes = pick!(max_message_bytes).unwrap_or(4 * 1024 * 1024);
        if max_message_bytes == 0 {
            return Err("AGENDA_MAX_MESSAGE_BYTES must be at least 1".into());
        }
        let max_response_bytes = pick!(max_response_bytes).unwrap_or(4 * 1024 * 1024);
        if max_response_bytes < MIN_RESPONSE_BYTES {
            return Err(format!(
                "AGENDA_MAX_RESPONSE_BYTES must be at least {MIN_RESPONSE_BYTES}: the largest single resource must fit"
            ));
        }
        let auth_hs256_secret = pick!(auth_hs256_secret).filter(|s| !s.is_empty());
        if let Some(secret) = &auth_hs256_secret
            && secret.len() < MIN_HS256_SECRET_BYTES
        {
            return Err(format!(
                "AGENDA_AUTH_HS256_SECRET is {} bytes long; it must be at least {MIN_HS256_SECRET_BYTES} bytes \
                 (an HS256 key shorter than its 256-bit hash makes tokens guessable): use e.g. `openssl rand -hex 32`",
                secret.len()
            ));
        }
        let change_retention = pick!(change_retention).unwrap_or(Duration::from_secs(30 * 24 * 3600).max(retention));
        if change_retention < retention {
            return Err(format!(
                "AGENDA_CHANGE_RETENTION ({}) must not be shorter than AGENDA_RETENTION ({}): a purge must stay in the feed as long as the resource could be read",
                humantime::format_duration(change_retention),
                humantime::format_duration(retention)
            ));
        }
        let max_watchers = pick!(max_watchers).unwrap_or(2048);
        if max_watchers == 0 {
            return Err("AGENDA_MAX_WATCHERS must be at least 1".into());
        }
        let database_listen_url = match (&database, pick!(database_listen_url)) {
            (Database::Postgres(_), Some(url)) => match parse_database_url(&url)? {
                Database::Postgres(url) => Some(url),
                Database::Sqlite(_) => return Err("AGENDA_DATABASE_LISTEN_URL must be a postgres:// URL".into()),
            },
            (Database::Postgres(url), None) => Some(url.clone()),
            (Database::Sqlite(_), _) => None,
        };
        let max_concurrent_calls = pick!(max_concurrent_calls).unwrap_or(512);
        if max_concurrent_calls == 0 {
            return Err("AGENDA_MAX_CONCURRENT_CALLS must be at least 1".into());
        }
        let tenant_max_concurrent_calls =
            pick!(tenant_max_concurrent_calls).unwrap_or((max_concurrent_calls / 4).max(1));
        if tenant_max_concurrent_calls == 0 {
            return Err("AGENDA_TENANT_MAX_CONCURRENT_CALLS must be at least 1".into());
        }
        let tls = match (pick!(tls_cert), pick!(tls_key), pick!(tls_client_ca)) {
            (Some(cert), Some(key), client_ca) => Some(TlsFiles { cert, key, client_ca }),
            (None, None, None) => None,
            (None, None, Some(_)) => return Err("AGENDA_TLS_CLIENT_CA needs AGENDA_TLS_CERT and AGENDA_TLS_KEY".into()),
            _ => return Err("AGENDA_TLS_CERT and AGENDA_TLS_KEY must be set together".into()),
        };
        Ok(Settings {
            database,
            embedded_default,
            data_dir,
            database_pool_size: pool_size,
            listen: pick!(listen).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 50051))),
            metrics_listen: pick!(metrics_listen).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9090))),
            auth_hs256_secret,
            auth_jwks_file: pick!(auth_jwks_file),
            auth_issuer: pick!(auth_issuer).filter(|s| !s.is_empty()),
            auth_audience: pick!(auth_audience).filter(|s| !s.is_empty()),
            log_format: pick!(log_format).unwrap_or_else(default_log_format),
            shutdown_grace: pick!(shutdown_grace).unwrap_or(Duration::from_secs(30)),
            retention,
            change_retention,
            max_watchers,
            database_listen_url,
            purge_interval: pick!(purge_interval).unwrap_or(Duration::from_secs(60)).max(Duration::from_millis(10)),
            health_interval: pick!(health_interval).unwrap_or(Duration::from_secs(5)).max(Duration::from_millis(10)),
            max_message_bytes,
            max_response_bytes,
            max_concurrent_calls,
            tenant_max_concurrent_calls,
            max_connection_age: Some(pick!(max_connection_age).unwrap_or(Duration::from_secs(30 * 60)))
                .filter(|age| !age.is_zero()),
            max_connection_age_grace: pick!(max_connection_age_grace).unwrap_or(Duration::from_secs(30)),
            http2_keepalive_interval: pick!(http2_keepalive_interval).unwrap_or(Duration::from_secs(30)),
            http2_keepalive_timeout: pick!(http2_keepalive_timeout).unwrap_or(Duration::from_secs(10)),
            tls,
        })
    }

    /// Whether any token key is configured.
    pub fn has_auth_key(&self) -> bool {
        self.auth_hs256_secret.is_some() || self.auth_jwks_file.is_some()
    }
}

fn default_log_format() -> LogFormat {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() { LogFormat::Pretty } else { LogFormat::Json }
}

fn read_file(path: &Path) -> Result<Options, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

/// Parses `postgres://…`, `postgresql://…`, `sqlite://path` or `sqlite:path`.
pub fn parse_database_url(url: &str) -> Result<Database, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Database::Postgres(url.to_string()))
    } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err("the sqlite database URL names no file".into());
        }
        Ok(Database::Sqlite(PathBuf::from(path)))
    } else {
        Err("AGENDA_DATABASE_URL must start with postgres://, postgresql:// or sqlite://".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_use_embedded_sqlite() {
        let settings = Settings::resolve(Options::default()).expect("defaults resolve");
        assert!(settings.embedded_default);
        assert_eq!(settings.database, Database::Sqlite(PathBuf::from("data/agenda.db")));
        assert_eq!(settings.listen.port(), 50051);
        assert_eq!(settings.retention, Duration::from_secs(30 * 24 * 3600));
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agenda.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:7000\"\nretention = \"2d\"\nauth_issuer = \"file\"\n")
            .expect("write");
        let options = Options { config: Some(path), auth_issuer: Some("flag".into()), ..Options::default() };
        let settings = Settings::resolve(options).expect("resolves");
        assert_eq!(settings.listen.port(), 7000);
        assert_eq!(settings.retention, Duration::from_secs(2 * 24 * 3600));
        assert_eq!(settings.auth_issuer.as_deref(), Some("flag"));
    }

    #[test]
    fn unknown_file_keys_and_bad_urls_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agenda.toml");
        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        assert!(Settings::resolve(Options { config: Some(path), ..Options::default() }).is_err());
        assert!(parse_database_url("mysql://x").is_err());
    }

    #[test]
    fn operations_settings_have_defaults_and_checks() {
        let settings = Settings::resolve(Options::default()).expect("defaults resolve");
        assert_eq!(settings.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(settings.max_connection_age, Some(Duration::from_secs(1800)));
        assert_eq!(settings.tls, None);
        let off = Options { max_connection_age: Some(Duration::ZERO), ..Options::default() };
        assert_eq!(Settings::resolve(off).expect("resolves").max_connection_age, None);
        let half = Options { tls_cert: Some("tls.crt".into()), ..Options::default() };
        assert!(Settings::resolve(half).is_err(), "a certificate without its key is refused");
        let ca_only = Options { tls_client_ca: Some("ca.crt".into()), ..Options::default() };
        assert!(Settings::resolve(ca_only).is_err(), "a client CA without a certificate is refused");
        assert!(Settings::resolve(Options { max_concurrent_calls: Some(0), ..Options::default() }).is_err());
        assert!(Settings::resolve(Options { max_message_bytes: Some(0), ..Options::default() }).is_err());
        assert_eq!(settings.max_response_bytes, 4 * 1024 * 1024);
        assert!(Settings::resolve(Options { max_response_bytes: Some(10), ..Options::default() }).is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let options = Options {
            auth_hs256_secret: Some("hunter2-hunter2-hunter2-hunter2-hunter2".into()),
            database_url: Some("postgres://u:pw@h/db".into()),
            ..Options::default()
        };
        let printed = format!("{:?}", Settings::resolve(options).expect("resolves"));
        assert!(!printed.contains("hunter2") && !printed.contains("pw@"), "{printed}");
    }

    #[test]
    fn short_hs256_secrets_are_refused_with_the_reason() {
        let short = Options { auth_hs256_secret: Some("x".into()), ..Options::default() };
        let err = Settings::resolve(short).unwrap_err();
        assert!(err.contains("at least 32 bytes"), "{err}");
        let enough = Options { auth_hs256_secret: Some("k".repeat(32)), ..Options::default() };
        assert!(Settings::resolve(enough).is_ok());
    }
}
