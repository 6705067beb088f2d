//! aeris-runtime: what every Aeris binary does around its own work.
//!
//! - [`config`]: the config loader of both binaries: the struct's defaults,
//!   a TOML file, then `AERIS_*` variables (allow-listed by the struct's
//!   own fields); errors name the dotted key and where the value came from
//!   (the file, or the exact `AERIS_*` variable).
//! - [`run_until_signal`]: logging to stderr, a multi-threaded runtime (as
//!   many workers as the binary asks for, or one per core), and a shutdown
//!   token cancelled by SIGINT or SIGTERM, handed to the program's `run`;
//!   the exit code says whether it succeeded.
//! - [`Backoff`]: the retry delay of every reconnect and retry loop
//!   (exponential, capped, jittered, reset on success).
//! - [`tls`]: the rustls (ring) client configuration for a broker, from
//!   CA / certificate / key PEM files, and connect-failure reasons.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod tls;

pub use backoff::Backoff;

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// How a binary logs; flattened into each binary's command line.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter (tracing syntax, e.g. "info" or "aeris_edge=debug").
    #[arg(long, env = "AERIS_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log line format on stderr: "text" for people, "json" (one object per
    /// line, for journald or a log shipper).
    #[arg(
        long,
        env = "AERIS_LOG_FORMAT",
        default_value = "text",
        value_parser = ["text", "json"],
        global = true
    )]
    pub log_format: String,
}

/// How many worker threads the runtime runs tasks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per core (tokio's default).
    PerCore,
    /// This many, unless `TOKIO_WORKER_THREADS` says otherwise.
    Fixed(usize),
}

/// Sets up logging, starts the runtime with `workers`, and runs `run` with
/// a token that SIGINT or SIGTERM cancels. `name` prefixes the messages
/// printed before logging works.
pub fn run_until_signal<F, Fut>(name: &str, log: &LogArgs, workers: Workers, run: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log.log_format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // tokio reads TOKIO_WORKER_THREADS only when the count is not set here.
    if let (Workers::Fixed(n), None) = (workers, std::env::var_os("TOKIO_WORKER_THREADS")) {
        runtime.worker_threads(n.max(1));
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        tracing::info!(workers, "{name} runtime started");
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        run(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{name} failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM start the graceful shutdown.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received");
    shutdown.cancel();
}
