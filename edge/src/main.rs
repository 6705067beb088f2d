use std::path::PathBuf;
use std::sync::Arc;

use aeris_edge::config::{Config, KEYS_HELP};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The Aeris edge agent: takes sensor readings from the board's MQTT broker,
/// validates them, keeps every one in a crash-safe SQLite buffer and syncs
/// them to the cloud broker, deleting each only once the cloud acknowledged it.
#[derive(Parser, Debug)]
#[command(name = "aeris-edge", version, after_long_help = KEYS_HELP, after_help = "Run with --help for every config key.")]
struct Cli {
    /// TOML config file; keys not in it keep their defaults, and AERIS_*
    /// environment variables override both.
    #[arg(short, long, env = "AERIS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the merged configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Log filter (tracing syntax, e.g. "info" or "aeris_edge=debug").
    #[arg(long, env = "AERIS_LOG", default_value = "info")]
    log: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let file = cli
                .config
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(no file)".into());
            eprintln!("aeris-edge: bad configuration ({file}): {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.print_config {
        match toml::to_string_pretty(&config) {
            Ok(s) => {
                print!("{s}");
                return std::process::ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("aeris-edge: cannot print config: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("aeris-edge: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        aeris_edge::run(config, Arc::new(aeris_edge::Stats::default()), shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent failed");
            std::process::ExitCode::FAILURE
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
