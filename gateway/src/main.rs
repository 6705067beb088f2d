use std::path::PathBuf;
use std::sync::Arc;

use aeris_gateway::config::{Config, KEYS_HELP};
use aeris_runtime::Workers;
use clap::{Parser, Subcommand};

/// The Aeris cloud gateway: consumes device batches from the broker (shared
/// subscription, so several gateways split the load), stores them in PostGIS
/// or an embedded SQLite file, and acknowledges each batch to its device only
/// after the commit. Without a subcommand it runs the gateway.
#[derive(Parser, Debug)]
#[command(name = "aeris-gateway", version, after_long_help = KEYS_HELP, after_help = "Run with --help for every config key.")]
struct Cli {
    /// TOML config file; AERIS_* environment variables override it.
    #[arg(
        short,
        long,
        env = "AERIS_GATEWAY_CONFIG",
        value_name = "FILE",
        global = true
    )]
    config: Option<PathBuf>,
    /// Print the merged configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    logging: aeris_runtime::LogArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway (the default).
    Run,
    /// Check a running deployment end to end: schema version, Redis, broker
    /// login, and a canary reading through broker, gateway, PostGIS and the
    /// API, removed afterwards. Prints a pass/fail table; exits 1 if any
    /// check fails.
    Verify(aeris_gateway::verify::VerifyArgs),
    /// After restoring the database from a backup: ask every known device
    /// (database and retained statuses on the broker) to re-send from the
    /// first seq the database lacks. Written to the audit log.
    Resend,
    /// Rolls a signed agent update out to devices through the broker in the
    /// config: the canary devices first, the rest once every canary
    /// confirmed; follows each device's `up/event` outcome and halts when
    /// failures exceed --max-failures. Prints one JSON summary per change
    /// and exits 0 only if every targeted device confirmed. Written to the
    /// audit log.
    Rollout(RolloutArgs),
    /// Partitions and retention of the `readings` table (PostGIS); the
    /// gateway also runs it at start and every `retention.every`.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Desired configuration of devices and groups (issue 18): set, get,
    /// diff against what a device runs, history. `set` is written to the
    /// audit log.
    #[command(subcommand)]
    Config(aeris_gateway::fleet_config::command::ConfigCmd),
    /// Hourly rollups (`readings_hourly`, PostGIS): the gateway keeps them
    /// current as data arrives; rebuild a range after a restore.
    #[command(subcommand)]
    Rollups(RollupsCmd),
    /// Exports of the hourly rollups in the field's exchange formats.
    #[command(subcommand)]
    Export(ExportCmd),
    /// Locations (one sensor of one device) as the field knows them: the
    /// AQCSV site code and the local standard time that bounds their days.
    /// `set` is written to the audit log.
    #[command(subcommand)]
    Locations(aeris_gateway::locations::LocationsCmd),
}

#[derive(Subcommand, Debug)]
enum ExportCmd {
    /// The valid hourly rollups whose hour begins in [--from, --to) as
    /// EPA AQCSV (AirNow-I exchange format; hour-beginning UTC times), to
    /// --out or stdout: the records `GET /api/export/aqcsv` serves.
    Aqcsv(aeris_gateway::export::command::AqcsvArgs),
}

#[derive(Subcommand, Debug)]
enum RollupsCmd {
    /// Recomputes the hourly rollups (statistics, completeness, NowCast,
    /// AQI) of every sensor-hour with readings in [--from, --to), and the
    /// NowCasts after them, printing a line per round. Start a day before
    /// the first changed hour so the NowCasts at the start see their
    /// windows. Written to the audit log; exits 2 if it could not run.
    Rebuild(aeris_gateway::rollups::command::RebuildArgs),
}

#[derive(Subcommand, Debug)]
enum RetentionCmd {
    /// Once, now: create the daily partitions of `readings` from today to
    /// retention.partitions_ahead_days ahead, move rows that wait in the
    /// default partition into their day's partition, and drop, whole (never
    /// a DELETE), every partition entirely older than retention.readings
    /// (their keys stay, so the readings are never stored again). Prints
    /// what it did and writes it to the audit log; exits 1 if the run
    /// failed, 2 if it could not start (no database_url).
    Run,
    /// Lists the partitions of `readings` and their ranges (UTC).
    List,
}

#[derive(clap::Args, Debug)]
struct RolloutArgs {
    /// Package folder (manifest.json and manifest.json.sig, from
    /// cross/build.sh) whose update is sent.
    #[arg(long)]
    package: PathBuf,
    /// URL devices fetch the package's files from (`<url>/<path>`).
    #[arg(long)]
    url: String,
    /// Devices of the fleet, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    devices: Vec<String>,
    /// Share of --devices to update, chosen by a stable hash of the id.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
    percent: u8,
    /// Devices updated first, alone.
    #[arg(long, default_value_t = 1)]
    canary: usize,
    /// Failures tolerated before the rollout halts.
    #[arg(long, default_value_t = 0)]
    max_failures: usize,
    /// A device without an outcome after this long counts as failed.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    device_timeout: std::time::Duration,
    /// Command id devices echo in their events; default: the time.
    #[arg(long)]
    id: Option<u64>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cli.print_config {
        print_config(config);
        return std::process::ExitCode::SUCCESS;
    }
    match cli.command {
        None | Some(Cmd::Run) => aeris_runtime::run_until_signal(
            "aeris-gateway",
            &cli.logging,
            Workers::PerCore,
            |shutdown| {
                aeris_gateway::run(config, Arc::new(aeris_gateway::Stats::default()), shutdown)
            },
        ),
        Some(Cmd::Verify(args)) => tool(&cli.logging.log, async move {
            let checks = aeris_gateway::verify::run(&config, &args).await;
            print!("{}", aeris_gateway::verify::table(&checks));
            Ok(checks.iter().all(|c| c.passed))
        }),
        Some(Cmd::Rollout(args)) => aeris_runtime::run_until_signal(
            "aeris-gateway",
            &cli.logging,
            Workers::PerCore,
            |shutdown| async move {
                tokio::select! {
                    r = rollout(config, args) => r,
                    _ = shutdown.cancelled() => anyhow::bail!(
                        "rollout interrupted; devices already sent the update finish on their own"
                    ),
                }
            },
        ),
        Some(Cmd::Resend) => tool(&cli.logging.log, resend(config)),
        Some(Cmd::Retention(RetentionCmd::Run)) => tool(&cli.logging.log, retention_run(config)),
        Some(Cmd::Retention(RetentionCmd::List)) => tool(&cli.logging.log, async move {
            aeris_gateway::retention::command::list(&config).await
        }),
        Some(Cmd::Config(cmd)) => tool(&cli.logging.log, async move {
            aeris_gateway::fleet_config::command::run(&config, cmd).await
        }),
        Some(Cmd::Rollups(RollupsCmd::Rebuild(args))) => {
            tool(&cli.logging.log, rollups_rebuild(config, args))
        }
        Some(Cmd::Export(ExportCmd::Aqcsv(args))) => tool(&cli.logging.log, async move {
            aeris_gateway::export::command::aqcsv(&config, &args).await
        }),
        Some(Cmd::Locations(cmd)) => tool(&cli.logging.log, async move {
            aeris_gateway::locations::run(&config, cmd).await
        }),
    }
}

/// The merged configuration; a bad one is reported with its file and
/// exits 2.
fn load_config(cli: &Cli) -> Result<Config, std::process::ExitCode> {
    Config::load(cli.config.as_deref()).map_err(|e| {
        let file = cli
            .config
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(no file)".into());
        eprintln!("aeris-gateway: bad configuration ({file}): {e}");
        std::process::ExitCode::from(2)
    })
}

/// `--print-config`: the merged configuration as TOML, secrets redacted.
fn print_config(mut config: Config) {
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
}

/// `resend`: asks every known device to re-send what the database lacks,
/// writes it to the audit log and prints the table; `false` if it failed.
async fn resend(config: Config) -> anyhow::Result<bool> {
    let sink = aeris_gateway::open_sink(&config).await?;
    let stats = aeris_gateway::Stats::default();
    let result = aeris_gateway::resend::run(&config, sink.as_ref()).await;
    let audited = result
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string()));
    let actor = aeris_gateway::audit::cli_actor();
    aeris_gateway::audit::record(sink.as_ref(), &stats, &actor, "resend", "fleet", &audited).await;
    match result {
        Ok(report) => {
            print!("{}", aeris_gateway::resend::table(&report));
            Ok(true)
        }
        Err(e) => {
            eprintln!("aeris-gateway resend: {e}");
            Ok(false)
        }
    }
}

/// `retention run`: one partition and retention run now, printed and
/// written to the audit log; `false` if the run or any of its steps
/// failed.
async fn retention_run(config: Config) -> anyhow::Result<bool> {
    use aeris_gateway::retention;
    let url = retention::command::database_url(&config)?;
    // Opening the sink brings the schema to the latest migration, which
    // the run needs.
    let sink = aeris_gateway::open_sink(&config).await?;
    let stats = aeris_gateway::Stats::default();
    let result = retention::run_once(&config.retention, url, &stats.retention).await;
    let audited = match &result {
        Ok(r) if !r.errors.is_empty() => Err(r.errors.join("; ")),
        Ok(r) => serde_json::to_value(r).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let actor = aeris_gateway::audit::cli_actor();
    aeris_gateway::audit::record(
        sink.as_ref(),
        &stats,
        &actor,
        "retention",
        "readings",
        &audited,
    )
    .await;
    match result {
        Ok(report) => {
            let keep = config.retention.readings.to_string();
            print!("{}", retention::command::table(&report, &keep));
            for e in &report.errors {
                eprintln!("aeris-gateway retention run: {e}");
            }
            Ok(report.errors.is_empty())
        }
        Err(e) => {
            eprintln!("aeris-gateway retention run: {e}");
            Ok(false)
        }
    }
}

/// `rollups rebuild`: recomputes a range, then writes it to the audit log.
async fn rollups_rebuild(
    config: Config,
    args: aeris_gateway::rollups::command::RebuildArgs,
) -> anyhow::Result<bool> {
    // Opening the sink brings the schema to the latest migration (0009
    // creates the rollup tables).
    let sink = aeris_gateway::open_sink(&config).await?;
    let result = aeris_gateway::rollups::command::rebuild(&config, &args).await;
    let audited = match &result {
        Ok(_) => Ok(serde_json::json!({"from_ms": args.from, "to_ms": args.to})),
        Err(e) => Err(format!("{e:#}")),
    };
    let target = args.device.clone().unwrap_or_else(|| "all devices".into());
    aeris_gateway::audit::record(
        sink.as_ref(),
        &aeris_gateway::Stats::default(),
        &aeris_gateway::audit::cli_actor(),
        "rollups rebuild",
        &target,
        &audited,
    )
    .await;
    result
}

/// Runs a one-shot command: exit 0 when it reports success, 1 when it
/// reports failure, 2 when it could not run.
fn tool(
    log: &str,
    f: impl std::future::Future<Output = anyhow::Result<bool>>,
) -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aeris-gateway: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(f) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("aeris-gateway: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// `rollout`: sends the package's update wave by wave, prints each
/// change, writes the outcome to the audit log; an error unless every
/// targeted device confirmed.
async fn rollout(config: Config, args: RolloutArgs) -> anyhow::Result<()> {
    use aeris_gateway::rollout;
    let payload = update_payload(&args)?;
    let targets = rollout::select(&args.devices, args.percent);
    let id = args
        .id
        .unwrap_or_else(|| u64::try_from(aeris_wire::now_ms()).unwrap_or(0));
    let plan = rollout::Plan::new(
        id,
        targets,
        args.canary,
        args.max_failures,
        args.device_timeout,
    );
    // Every wave may take the device timeout, plus time to connect.
    let give_up = args.device_timeout * 2 + std::time::Duration::from_secs(60);
    let devices = plan_targets_text(&args.devices, args.percent);
    let result = rollout::run(
        &config.broker,
        payload,
        plan,
        give_up,
        rollout::Session::Clean,
        tokio_util::sync::CancellationToken::new(),
        |s| {
            println!("{}", serde_json::to_string(&s).unwrap_or_default());
            async { Ok(()) }
        },
    )
    .await;
    audit_rollout(&config, &devices, &result).await;
    let summary = result?;
    if summary.halted.is_some() || summary.failed > 0 {
        anyhow::bail!(
            "rollout {id}: {} confirmed, {} failed{}",
            summary.confirmed,
            summary.failed,
            summary
                .halted
                .map(|h| format!(", halted: {h}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// The update command's payload: the package's signed manifest and where
/// devices fetch its files.
fn update_payload(args: &RolloutArgs) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let read = |name: &str| {
        let path = args.package.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    Ok(serde_json::to_vec(&serde_json::json!({
        "format": 1,
        "url": args.url,
        "manifest": read("manifest.json")?,
        "signature": read("manifest.json.sig")?.trim(),
    }))?)
}

/// Writes the rollout's outcome to the audit log, or logs why it cannot.
async fn audit_rollout(
    config: &Config,
    devices: &str,
    result: &anyhow::Result<aeris_gateway::rollout::Summary>,
) {
    let audited = match result {
        Ok(s) => serde_json::to_value(s).map_err(|e| e.to_string()),
        Err(e) => Err(format!("{e:#}")),
    };
    match aeris_gateway::open_sink(config).await {
        Ok(sink) => {
            aeris_gateway::audit::record(
                sink.as_ref(),
                &aeris_gateway::Stats::default(),
                &aeris_gateway::audit::cli_actor(),
                "rollout",
                devices,
                &audited,
            )
            .await
        }
        Err(e) => tracing::error!(error = %e, "rollout not written to the audit log"),
    }
}

/// The audit log's target of a rollout: its devices and share.
fn plan_targets_text(devices: &[String], percent: u8) -> String {
    format!("{percent}% of {}", devices.join(","))
}
