//! The `agenda` binary: parses the command line, loads settings, sets up
//! logging and runs `serve`, `migrate` or `token`.

use std::process::ExitCode;

use agenda::{
    config::{Cli, Command, Settings},
    devmode, shutdown,
    startup::Application,
    store::Db,
    telemetry,
};
use clap::Parser;

/// mimalloc: the server's many small, short-lived allocations (messages,
/// rows, headers) cost less than with the system allocator, and memory
/// freed under load goes back to the system (measured: `scripts/load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agenda: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Calls still running after the drain's grace (a SQLite query waiting on
    // its lock) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("agenda: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(options) => {
            let mut settings = Settings::resolve(options).map_err(anyhow::Error::msg)?;
            let telemetry = telemetry::init(settings.log_format);
            let dev = devmode::ensure_key(&mut settings)?;
            tracing::info!(?settings, "starting");
            let app = Application::build(settings).await?;
            tracing::info!(address = %app.local_addr(), "serving gRPC");
            if let Some(dev) = &dev {
                println!("{}", devmode::banner(dev, app.port()));
            }
            let result = app.run_until_stopped(shutdown::signal()).await;
            telemetry.shutdown().await;
            result
        }
        Command::Migrate(options) => {
            let settings = Settings::resolve(options).map_err(anyhow::Error::msg)?;
            let telemetry = telemetry::init(settings.log_format);
            let result = Db::migrate(&settings.database).await;
            telemetry.shutdown().await;
            Ok(result?)
        }
        Command::Token(args) => {
            let settings = Settings::resolve(args.options).map_err(anyhow::Error::msg)?;
            let secret = devmode::signing_secret(&settings)?;
            let token =
                devmode::mint(&secret, &args.tenant, &args.sub, &args.scopes, args.ttl).map_err(anyhow::Error::msg)?;
            println!("{token}");
            Ok(())
        }
    }
}
