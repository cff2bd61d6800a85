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
    /// How often resources past their purge time are removed [default: 1m].
    #[arg(long, env = "AGENDA_PURGE_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub purge_interval: Option<Duration>,
    /// How often the database is checked for the health service [default: 5s].
    #[arg(long, env = "AGENDA_HEALTH_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub health_interval: Option<Duration>,
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
    /// How often expired resources are purged.
    pub purge_interval: Duration,
    /// How often the database is checked for health.
    pub health_interval: Duration,
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
            .field("purge_interval", &self.purge_interval)
            .field("health_interval", &self.health_interval)
            .finish()
    }
}

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
        Ok(Settings {
            database,
            embedded_default,
            data_dir,
            database_pool_size: pool_size,
            listen: pick!(listen).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 50051))),
            metrics_listen: pick!(metrics_listen).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9090))),
            auth_hs256_secret: pick!(auth_hs256_secret).filter(|s| !s.is_empty()),
            auth_jwks_file: pick!(auth_jwks_file),
            auth_issuer: pick!(auth_issuer).filter(|s| !s.is_empty()),
            auth_audience: pick!(auth_audience).filter(|s| !s.is_empty()),
            log_format: pick!(log_format).unwrap_or_else(default_log_format),
            shutdown_grace: pick!(shutdown_grace).unwrap_or(Duration::from_secs(30)),
            retention,
            purge_interval: pick!(purge_interval).unwrap_or(Duration::from_secs(60)).max(Duration::from_millis(10)),
            health_interval: pick!(health_interval).unwrap_or(Duration::from_secs(5)).max(Duration::from_millis(10)),
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
    fn secrets_are_not_printed() {
        let options = Options {
            auth_hs256_secret: Some("hunter2".into()),
            database_url: Some("postgres://u:pw@h/db".into()),
            ..Options::default()
        };
        let printed = format!("{:?}", Settings::resolve(options).expect("resolves"));
        assert!(!printed.contains("hunter2") && !printed.contains("pw@"), "{printed}");
    }
}
