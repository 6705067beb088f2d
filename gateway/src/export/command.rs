//! `aeris-gateway export aqcsv --from T --to T [--out FILE]`: the valid
//! hourly rollups of a range as AQCSV ([`super::aqcsv`]), the same records
//! as `GET /api/export/aqcsv`, read a day at a time so any range fits in
//! memory. Writes to `--out` (replaced atomically) or stdout.

use std::io::Write;
use std::path::PathBuf;

use aeris_wire::aqi::hourly::DAY_MS;
use anyhow::Context;

use crate::config::Config;
use crate::rollups::command::parse_time;

#[derive(clap::Args, Debug, Clone)]
pub struct AqcsvArgs {
    /// First hour (RFC 3339, UTC, or a date: `2026-05-01`), inclusive.
    #[arg(long, value_parser = parse_time)]
    pub from: i64,
    /// End of the range (RFC 3339 or a date), exclusive.
    #[arg(long, value_parser = parse_time)]
    pub to: i64,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Hours one day of a network may hold at most (a day of 40,000 sensors
/// with 6 pollutants is 5.8 million).
const MAX_ROWS_PER_DAY: i64 = 10_000_000;

/// Runs the export; `Ok(false)` on a bad range.
pub async fn aqcsv(config: &Config, args: &AqcsvArgs) -> anyhow::Result<bool> {
    if config.database_url.is_none() {
        anyhow::bail!("database_url is not set: rollups are kept in PostGIS (the embedded SQLite sink has none)");
    }
    if args.to <= args.from {
        eprintln!("aeris-gateway export aqcsv: --to must be after --from");
        return Ok(false);
    }
    let sink = crate::open_sink(config).await?;
    let mut csv = String::new();
    let mut start = args.from;
    while start < args.to {
        let end = (start.div_euclid(DAY_MS) + 1)
            .saturating_mul(DAY_MS)
            .min(args.to);
        match super::aqcsv::export(sink.as_ref(), start, end, MAX_ROWS_PER_DAY).await? {
            Ok(part) => csv.push_str(&part),
            Err(e) => anyhow::bail!(e),
        }
        start = end;
    }
    let records = csv.lines().count();
    match &args.out {
        Some(path) => {
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, &csv).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming to {}", path.display()))?;
            eprintln!("export aqcsv: {records} records to {}", path.display());
        }
        None => {
            std::io::stdout().write_all(csv.as_bytes())?;
            eprintln!("export aqcsv: {records} records");
        }
    }
    Ok(true)
}
