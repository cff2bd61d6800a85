//! Observability: the tracing subscriber writing JSON lines or pretty text,
//! filtered by `RUST_LOG` (default `info`; tests leave it uninstalled and stay
//! quiet), the Prometheus metrics ([`metrics`]) and the tower layer that
//! measures and logs every call ([`call`]).

pub mod call;
mod frames;
pub mod metrics;
pub mod trace_context;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber; call once, from `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true).with_span_list(false).with_target(true))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging was already set up: {error}");
    }
}
