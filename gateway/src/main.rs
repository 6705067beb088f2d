use std::path::PathBuf;
use std::sync::Arc;

use aeris_gateway::config::{Config, KEYS_HELP};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The Aeris cloud gateway: consumes device batches from the broker (shared
/// subscription, so several gateways split the load), stores them in PostGIS
/// or an embedded SQLite file, and acknowledges each batch to its device only
/// after the commit.
#[derive(Parser, Debug)]
#[command(name = "aeris-gateway", version, after_long_help = KEYS_HELP, after_help = "Run with --help for every config key.")]
struct Cli {
    /// TOML config file; AERIS_* environment variables override it.
    #[arg(short, long, env = "AERIS_GATEWAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the merged configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    /// Log filter (tracing syntax).
    #[arg(long, env = "AERIS_LOG", default_value = "info")]
    log: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let file = cli
                .config
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(no file)".into());
            eprintln!("aeris-gateway: bad configuration ({file}): {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.print_config {
        if config.database_url.is_some() {
            config.database_url = Some("<redacted>".into());
        }
        if config.redis_url.is_some() {
            config.redis_url = Some("<redacted>".into());
        }
        if !config.broker.password.is_empty() {
            config.broker.password = "<redacted>".into();
        }
        match toml::to_string_pretty(&config) {
            Ok(s) => print!("{s}"),
            Err(e) => eprintln!("aeris-gateway: cannot print config: {e}"),
        }
        return std::process::ExitCode::SUCCESS;
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
            eprintln!("aeris-gateway: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                tracing::info!("signal received");
                s.cancel();
            }
        });
        aeris_gateway::run(config, Arc::new(aeris_gateway::Stats::default()), shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}
