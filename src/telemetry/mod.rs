//! Observability: the tracing subscriber writing JSON lines or pretty text,
//! filtered by `RUST_LOG` (default `info`; tests leave it uninstalled and stay
//! quiet), optional OTLP export of the call spans, the Prometheus metrics
//! ([`metrics`]) and the tower layer that measures and logs every call
//! ([`call`]).
//!
//! Environment variables read here (besides `AGENDA_LOG_FORMAT` in config):
//! - `RUST_LOG`: the log filter (default `info`).
//! - `OTEL_EXPORTER_OTLP_ENDPOINT`: when set, spans are exported over OTLP/gRPC
//!   to it (the other standard `OTEL_*` variables of the OTLP exporter apply,
//!   e.g. `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`).

pub mod call;
mod frames;
pub mod metrics;
pub mod trace_context;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Whether call spans are exported over OTLP (set once by [`init`]).
static OTLP_ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether call spans are exported over OTLP.
pub(crate) fn otlp_enabled() -> bool {
    OTLP_ENABLED.load(Ordering::Relaxed)
}

/// What has to be flushed before the process ends.
#[must_use = "call shutdown() before exiting so that buffered spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Writes out the queued log lines when dropped (at the end of `main`).
    _flush: tracing_appender::non_blocking::WorkerGuard,
}

impl Telemetry {
    /// Exports what spans are still buffered.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = result {
                eprintln!("agenda: exporting the last spans failed: {error}");
            }
        }
    }
}

/// Installs the global subscriber; call once, from `main`, inside the runtime
/// (the OTLP exporter needs it).
pub fn init(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = otlp_provider();
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("agenda")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // Lines are formatted by the caller and written by a thread of their
    // own, as many at once as are waiting: a call costs no write system call
    // of its own. A caller waits only when 8,192 lines are queued (the
    // queue's slots are allocated and written up front: the default 128k
    // lines held 4 MiB of every idle server's memory).
    let (writer, flush) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(8192)
        .lossy(false)
        .thread_name("agenda-log")
        .finish(std::io::BufWriter::new(std::io::stdout()));
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer().json().with_current_span(true).with_span_list(false).with_target(true).with_writer(writer),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false).with_writer(writer)).try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging was already set up: {error}");
    }
    if provider.is_some() {
        OTLP_ENABLED.store(true, Ordering::Relaxed);
        tracing::info!("exporting spans over OTLP");
    }
    Telemetry { provider, _flush: flush }
}

/// A tracer provider exporting to `OTEL_EXPORTER_OTLP_ENDPOINT`, when set.
fn otlp_provider() -> Option<SdkTracerProvider> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.trim().is_empty())?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("agenda: OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter fails: {error}; not exporting");
            return None;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("agenda").build();
    Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}
