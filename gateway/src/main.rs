use std::path::PathBuf;
use std::sync::Arc;

use aeris_gateway::config::{Config, KEYS_HELP};
use clap::Parser;

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
    #[command(flatten)]
    logging: aeris_runtime::LogArgs,
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
    aeris_runtime::run_until_signal("aeris-gateway", &cli.logging, |shutdown| {
        aeris_gateway::run(config, Arc::new(aeris_gateway::Stats::default()), shutdown)
    })
}
