//! What the demo prints: a progress line each second while it runs, the
//! totals once it stopped, and a look into the cloud database.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The counters the demo reports from.
pub struct Counters<'a> {
    /// Sensor messages published by the replay.
    pub published: &'a AtomicU64,
    pub edge: &'a aeris_edge::Telemetry,
    pub gateway: &'a aeris_gateway::Stats,
}

/// Prints a progress line each second until `stop` or `duration` after
/// `started`.
pub async fn progress(
    c: &Counters<'_>,
    started: Instant,
    duration: Duration,
    stop: &tokio_util::sync::CancellationToken,
) {
    let (edge_stats, gw_stats, published) = (c.edge, c.gateway, c.published);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_in, mut last_acked, mut last_t) = (0u64, 0u64, Instant::now());
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until((started + duration).into()) => break,
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
}

/// The run's totals, and the models' work when they ran.
pub fn totals(c: &Counters<'_>, elapsed: Duration, cloud_db: &Path) -> anyhow::Result<()> {
    let (edge_stats, published) = (c.edge, c.published);
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
            flagged(cloud_db)?,
        );
    }
    Ok(())
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

pub fn summary(db: &Path) -> anyhow::Result<()> {
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
