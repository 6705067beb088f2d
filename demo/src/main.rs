//! `aeris-demo`: the whole Aeris pipeline on embedded defaults, in one
//! process: an in-process MQTT broker, the gateway on an SQLite file, an edge
//! agent, and simulated sensors replaying the shared data sets.

mod broker;
mod replay;
mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs sensors → edge agent → MQTT → gateway → database on this machine with
/// nothing to install: the broker is in-process and the cloud database is an
/// SQLite file. Prints a progress line each second; stops on Ctrl-C or after
/// --duration, then tells where the database is and how to look at it.
#[derive(Parser, Debug)]
#[command(name = "aeris-demo", version)]
struct Cli {
    /// Replay speed: simulated seconds per real second, or "max" for as fast
    /// as the pipeline takes it.
    #[arg(long, default_value = "1000000")]
    speedup: Speedup,
    /// Stop after this long (e.g. "30s", "5m").
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Folder with the data sets (beijing_pm25_hourly.csv, de_rural_pm10_*.csv).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))]
    data: PathBuf,
    /// Where the edge buffer and the cloud database are written; the demo's
    /// previous files there are replaced.
    #[arg(long, default_value = "aeris-demo-data")]
    out: PathBuf,
    /// Address of the gateway's HTTP API and live map (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Log filter for the components (tracing syntax).
    #[arg(long, default_value = "warn,rumqttd=off")]
    log: String,
}

#[derive(Debug, Clone, Copy)]
enum Speedup {
    Factor(f64),
    Max,
}

impl std::str::FromStr for Speedup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Speedup::Max);
        }
        match s.parse::<f64>() {
            Ok(f) if f > 0.0 && f.is_finite() => Ok(Speedup::Factor(f)),
            _ => Err(format!("expected a positive number or \"max\", got {s:?}")),
        }
    }
}

const DEVICE: &str = "demo-edge-1";

/// Sets up, runs for `--duration` (or until Ctrl-C) while printing
/// progress, then drains the pipeline front to back and prints the summary.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);

    eprintln!("loading data sets from {}", cli.data.display());
    let messages = replay::load(&cli.data).with_context(|| {
        format!(
            "cannot load the data sets; pass --data <folder> (looked in {})",
            cli.data.display()
        )
    })?;
    let out = prepare_out(&cli.out)?;
    let cloud_db = out.join("cloud.db");

    let port = broker::start()?;
    eprintln!("embedded MQTT broker on 127.0.0.1:{port}");
    let gateway = start_gateway(port, &cloud_db, &cli.listen).await;
    let edge = start_edge(port, &out);
    let sensors = connect_sensors(port).await;

    let stop = stop_on_ctrl_c();
    let started = Instant::now();
    let published = Arc::new(AtomicU64::new(0));
    let replay = spawn_replay(
        messages,
        sensors,
        cli.speedup,
        started,
        published.clone(),
        edge.stats.clone(),
        stop.clone(),
    );
    let counters = report::Counters {
        published: &published,
        edge: &edge.stats,
        gateway: &gateway.stats,
    };
    report::progress(&counters, started, cli.duration, &stop).await;
    let elapsed = started.elapsed();
    stop.cancel();
    let _ = replay.await;
    // Let the last sensor messages reach the agent, then drain it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("stopping: the agent flushes its buffer to the gateway");
    let edge_stats = edge.stop().await?;
    let gw_stats = gateway.stop().await?;

    let counters = report::Counters {
        published: &published,
        edge: &edge_stats,
        gateway: &gw_stats,
    };
    report::totals(&counters, elapsed, &cloud_db)?;
    report::summary(&cloud_db)
}

fn init_logging(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Creates the output folder and removes the demo's files from an earlier
/// run; returns the folder's canonical path.
fn prepare_out(out: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = out.canonicalize()?;
    let _ = std::fs::remove_dir_all(out.join("edge/models"));
    for stale in [
        "cloud.db",
        "cloud.db-wal",
        "cloud.db-shm",
        "edge/buffer.db",
        "edge/buffer.db-wal",
        "edge/buffer.db-shm",
    ] {
        let _ = std::fs::remove_file(out.join(stale));
    }
    Ok(out)
}

/// A component running as a task until its `stop` is cancelled.
struct Running<S> {
    stats: Arc<S>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl<S> Running<S> {
    /// Stops the component, waits for it to end, and hands back its stats.
    async fn stop(self) -> anyhow::Result<Arc<S>> {
        self.stop.cancel();
        self.task.await??;
        Ok(self.stats)
    }
}

/// Starts the gateway on the SQLite file `cloud_db` and waits (up to five
/// seconds) for its HTTP API, printing the live map's address.
async fn start_gateway(port: u16, cloud_db: &Path, listen: &str) -> Running<aeris_gateway::Stats> {
    let gw_defaults = aeris_gateway::Config::default();
    let gw_config = aeris_gateway::Config {
        broker: aeris_gateway::config::BrokerConfig {
            port,
            ..gw_defaults.broker.clone()
        },
        sqlite_path: cloud_db.to_path_buf(),
        api: aeris_gateway::config::ApiConfig {
            listen: if std::net::TcpListener::bind(listen).is_ok() {
                listen.to_owned()
            } else {
                eprintln!("{listen} is taken; the map listens on a free port");
                "127.0.0.1:0".into()
            },
            ..gw_defaults.api.clone()
        },
        ..gw_defaults
    };
    let stats = Arc::new(aeris_gateway::Stats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(aeris_gateway::run(gw_config, stats.clone(), stop.clone()));

    for _ in 0..100 {
        if stats.api_addr.get().is_some() || task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match stats.api_addr.get() {
        Some(addr) => println!("live map: http://{addr}/  (sensors coloured by AQI, updated live)"),
        None => eprintln!("the gateway's HTTP API did not start (see --listen)"),
    }
    Running { stats, stop, task }
}

/// Starts the edge agent with its data under `out/edge`, running the
/// repository's two models.
fn start_edge(port: u16, out: &Path) -> Running<aeris_edge::Telemetry> {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let defaults = aeris_edge::Config::default();
    let edge_config = aeris_edge::Config {
        device_id: DEVICE.into(),
        data_dir: out.join("edge"),
        local: aeris_edge::config::LocalConfig {
            port,
            ..defaults.local.clone()
        },
        cloud: aeris_edge::config::CloudConfig {
            port,
            ..defaults.cloud.clone()
        },
        // The replay keeps the data sets' original timestamps (from 2010),
        // far beyond the default 7-day retention.
        ingest: aeris_edge::config::IngestConfig {
            retention: Duration::from_secs(100 * 365 * 86_400),
            ..defaults.ingest.clone()
        },
        uplink: aeris_edge::config::UplinkConfig {
            batch_max_age: Duration::from_millis(200),
            ..defaults.uplink.clone()
        },
        shutdown_grace: Duration::from_secs(15),
        infer: aeris_edge::config::InferConfig {
            models: vec![models.join("pm25_nowcast"), models.join("pm_anomaly")],
            // The nowcast's hour features are Beijing local time.
            utc_offset_hours: 8.0,
            ..defaults.infer.clone()
        },
        ..defaults
    };
    let stats = Arc::new(aeris_edge::Telemetry::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(aeris_edge::run(edge_config, (*stats).clone(), stop.clone()));
    Running { stats, stop, task }
}

/// The sensors' MQTT client, connected to the broker on `port`.
async fn connect_sensors(port: u16) -> AsyncClient {
    let (sensors, mut sensor_events) =
        AsyncClient::new(MqttOptions::new("demo-sensors", "127.0.0.1", port), 1024);
    tokio::spawn(async move {
        loop {
            if sensor_events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // Give the agent a moment to subscribe before the sensors speak.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sensors
}

/// A token cancelled on Ctrl-C.
fn stop_on_ctrl_c() -> CancellationToken {
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("\nCtrl-C: stopping");
        on_signal.cancel();
    });
    stop
}

/// Publishes the replay's messages at `speedup` from `started`, counting
/// them in `published`, until they run out or `stop`.
fn spawn_replay(
    messages: Vec<replay::Message>,
    sensors: AsyncClient,
    speedup: Speedup,
    started: Instant,
    published: Arc<AtomicU64>,
    accepted: Arc<aeris_edge::Telemetry>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for m in &messages {
            if stop.is_cancelled() {
                break;
            }
            // "max" is closed-loop: the sensors stay at most a few
            // thousand readings ahead of what the agent has stored.
            while matches!(speedup, Speedup::Max)
                && published.load(Relaxed) > accepted.ingest.accepted.get() + 4000
            {
                tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(Duration::from_millis(2)) => {} }
            }
            if let Speedup::Factor(f) = speedup {
                let due = Duration::from_secs_f64(m.offset_ms as f64 / 1000.0 / f);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(wait) => {} }
                }
            }
            if sensors
                .publish(
                    format!("sensors/{}/air", m.sensor),
                    QoS::AtLeastOnce,
                    false,
                    m.payload.clone(),
                )
                .await
                .is_err()
            {
                break;
            }
            published.fetch_add(1, Relaxed);
        }
    })
}
