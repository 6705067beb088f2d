//! `aeris-demo`: the whole Aeris pipeline on embedded defaults, in one
//! process: an in-process MQTT broker, the gateway on an SQLite file, an edge
//! agent, and simulated sensors replaying the shared data sets.

mod broker;
mod replay;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rumqttc::{AsyncClient, MqttOptions, QoS};
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    eprintln!("loading data sets from {}", cli.data.display());
    let messages = replay::load(&cli.data).with_context(|| {
        format!(
            "cannot load the data sets; pass --data <folder> (looked in {})",
            cli.data.display()
        )
    })?;
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("cannot create {}", cli.out.display()))?;
    let out = cli.out.canonicalize()?;
    let cloud_db = out.join("cloud.db");
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

    let port = broker::start()?;
    eprintln!("embedded MQTT broker on 127.0.0.1:{port}");

    let gw_defaults = aeris_gateway::Config::default();
    let gw_config = aeris_gateway::Config {
        broker: aeris_gateway::config::BrokerConfig {
            port,
            ..gw_defaults.broker.clone()
        },
        sqlite_path: cloud_db.clone(),
        api: aeris_gateway::config::ApiConfig {
            listen: if std::net::TcpListener::bind(&cli.listen).is_ok() {
                cli.listen.clone()
            } else {
                eprintln!("{} is taken; the map listens on a free port", cli.listen);
                "127.0.0.1:0".into()
            },
            ..gw_defaults.api.clone()
        },
        ..gw_defaults
    };
    let gw_stats = Arc::new(aeris_gateway::Stats::default());
    let gw_stop = CancellationToken::new();
    let gateway = tokio::spawn(aeris_gateway::run(
        gw_config,
        gw_stats.clone(),
        gw_stop.clone(),
    ));

    for _ in 0..100 {
        if gw_stats.api_addr.get().is_some() || gateway.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match gw_stats.api_addr.get() {
        Some(addr) => println!("live map: http://{addr}/  (sensors coloured by AQI, updated live)"),
        None => eprintln!("the gateway's HTTP API did not start (see --listen)"),
    }

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
    let edge_stats = aeris_edge::Telemetry::default();
    let edge_stop = CancellationToken::new();
    let edge = tokio::spawn(aeris_edge::run(
        edge_config,
        edge_stats.clone(),
        edge_stop.clone(),
    ));

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

    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("\nCtrl-C: stopping");
            stop.cancel();
        });
    }
    let started = Instant::now();
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let replay = {
        let (published, stop, speedup) = (published.clone(), stop.clone(), cli.speedup);
        let accepted = edge_stats.clone();
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
    };

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_in, mut last_acked, mut last_t) = (0u64, 0u64, Instant::now());
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until((started + cli.duration).into()) => break,
            _ = tick.tick() => {
                let (accepted, acked) = (edge_stats.ingest.accepted.get(), edge_stats.uplink.readings_acked.get());
                let dt = last_t.elapsed().as_secs_f64();
                println!(
                    "[{:>4.0}s] published {:>7} | in {:>7} ({:>6.0}/s) | buffered {:>5} | acked {:>7} ({:>6.0}/s) | stored {:>7} | model runs {:>6} | rejected {}",
                    started.elapsed().as_secs_f64(),
                    published.load(Relaxed),
                    accepted,
                    (accepted - last_in) as f64 / dt,
                    accepted.saturating_sub(acked),
                    acked,
                    (acked - last_acked) as f64 / dt,
                    gw_stats.readings_inserted.get(),
                    edge_stats.infer.runs.get(),
                    edge_stats.ingest.rejected(),
                );
                (last_in, last_acked, last_t) = (accepted, acked, Instant::now());
            }
        }
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let _ = replay.await;
    // Let the last sensor messages reach the agent, then drain it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("stopping: the agent flushes its buffer to the gateway");
    edge_stop.cancel();
    edge.await??;
    gw_stop.cancel();
    gateway.await??;

    let accepted = edge_stats.ingest.accepted.get();
    let acked = edge_stats.uplink.readings_acked.get();
    println!();
    println!(
        "{} readings published in {:.1}s; {} accepted by the agent ({:.0}/s), {} stored and acked, {} rejected, {} left in the edge buffer",
        published.load(Relaxed),
        elapsed.as_secs_f64(),
        accepted,
        accepted as f64 / elapsed.as_secs_f64(),
        acked,
        edge_stats.ingest.rejected(),
        accepted.saturating_sub(acked),
    );
    let runs = edge_stats.infer.runs.get();
    if runs > 0 {
        println!(
            "models: {runs} runs on the board ({:.1} µs each), {} readings flagged as suspected sensor faults",
            edge_stats.infer.run_micros.get() as f64 / runs as f64,
            flagged(&cloud_db)?,
        );
    }
    summary(&cloud_db)
}

fn flagged(db: &Path) -> anyhow::Result<i64> {
    let conn = rusqlite::Connection::open(db)?;
    Ok(conn.query_row(
        "SELECT count(*) FROM readings WHERE flags & 1 = 1",
        [],
        |r| r.get(0),
    )?)
}

const QUERY: &str = "SELECT sensor_id, count(*) AS readings, \
    round(avg(coalesce(json_extract(measurements, '$.pm10'), json_extract(measurements, '$.pm25'))), 1) AS mean_pm, \
    round(avg(json_extract(measurements, '$.\"model:pm25_nowcast@1.0.0\"')), 1) AS mean_nowcast, \
    round(lat, 3) AS lat, round(lon, 3) AS lon \
    FROM readings GROUP BY sensor_id ORDER BY readings DESC LIMIT 5";

fn summary(db: &Path) -> anyhow::Result<()> {
    println!("cloud database: {}", db.display());
    println!("look at it (sqlite3 is Debian's package sqlite3):");
    println!(
        "sqlite3 -header -column {} <<'SQL'\n{QUERY};\nSQL",
        db.display()
    );
    let conn = rusqlite::Connection::open(db)?;
    let mut stmt = conn.prepare(QUERY)?;
    println!(
        "\n{:<24} {:>9} {:>9} {:>12} {:>9} {:>9}",
        "sensor_id", "readings", "mean_pm", "mean_nowcast", "lat", "lon"
    );
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<f64>>(2)?,
            r.get::<_, Option<f64>>(3)?,
            r.get::<_, f64>(4)?,
            r.get::<_, f64>(5)?,
        ))
    })?;
    let show = |v: Option<f64>| v.map(|m| m.to_string()).unwrap_or_default();
    for row in rows {
        let (sensor, n, mean, nowcast, lat, lon) = row?;
        println!(
            "{sensor:<24} {n:>9} {:>9} {:>12} {lat:>9} {lon:>9}",
            show(mean),
            show(nowcast)
        );
    }
    Ok(())
}
