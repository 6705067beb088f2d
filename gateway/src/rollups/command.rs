//! `aeris-gateway rollups rebuild --from T --to T [--device D]`: marks
//! every hour of the range that holds pollutant readings and recomputes
//! the marks, as the background task does, printing a progress line per
//! round. After a restore, or after changing `rollups.sample_interval`.

use std::time::{Duration, Instant, UNIX_EPOCH};

use aeris_sink::postgis::rollup::RollupDb;
use anyhow::Context;

use crate::config::Config;

/// What to rebuild.
#[derive(clap::Args, Debug, Clone)]
pub struct RebuildArgs {
    /// First hour (RFC 3339, UTC, or a date: `2026-05-01`), inclusive.
    #[arg(long, value_parser = parse_time)]
    pub from: i64,
    /// End of the range (RFC 3339 or a date), exclusive.
    #[arg(long, value_parser = parse_time)]
    pub to: i64,
    /// Only this device's sensors.
    #[arg(long)]
    pub device: Option<String>,
}

/// Unix ms of an RFC 3339 time (`2026-05-01T10:00:00Z`) or a date
/// (`2026-05-01`, midnight UTC).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{s}T00:00:00")))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time or a date: {e}"))?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{s}` is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| format!("`{s}` is too far ahead"))
}

/// The marks, recomputed round by round until none is left. `Ok(false)`
/// with a message when the range is empty or backwards.
pub async fn rebuild(config: &Config, args: &RebuildArgs) -> anyhow::Result<bool> {
    let url = config.database_url.as_deref().context(
        "database_url is not set: rollups are kept in PostGIS (the embedded SQLite sink has none)",
    )?;
    if args.to <= args.from {
        eprintln!("aeris-gateway rollups rebuild: --to must be after --from");
        return Ok(false);
    }
    let p = super::params(&config.rollups);
    let mut db = RollupDb::connect(url).await?;
    let marked = db
        .mark_range(args.from, args.to, args.device.as_deref())
        .await?;
    let start = Instant::now();
    println!("rollups rebuild: {marked} sensor-hours marked");
    let (mut done, mut rows) = (0u64, 0u64);
    loop {
        // Waits for a running gateway's round instead of skipping.
        let round = db.recompute(&p, true).await?;
        done += round.marks;
        rows += round.rows_written;
        let left = db.pending().await?.hours;
        println!(
            "rollups rebuild: {done} sensor-hours recomputed, {rows} rows written, {left} pending, {:.1} s",
            start.elapsed().as_secs_f64()
        );
        if round.marks < u64::try_from(p.max_marks).unwrap_or(0) || left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_dates_parse_as_utc() {
        assert_eq!(parse_time("1970-01-01T01:00:00Z"), Ok(3_600_000));
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000));
        assert!(parse_time("yesterday").is_err());
    }
}
