//! `aeris-gateway retention run | list`: the same run as the schedule's,
//! now, from the command line (written to the audit log), and the list of
//! partitions.

use std::time::{Duration, UNIX_EPOCH};

use aeris_sink::postgis::partition::{self, PartitionInfo, Report};
use anyhow::Context;

use crate::config::Config;
use crate::stats::Stats;

fn url(config: &Config) -> anyhow::Result<&str> {
    config.database_url.as_deref().context(
        "database_url is not set: partitions and retention are for PostGIS \
         (the embedded SQLite sink keeps everything)",
    )
}

/// Runs once, prints what it did, writes it to the audit log; `false` if
/// the run or any of its steps failed.
pub async fn run(config: &Config) -> anyhow::Result<bool> {
    let url = url(config)?;
    // Opening the sink brings the schema to the latest migration, which
    // the run needs.
    let sink = crate::open_sink(config).await?;
    let stats = Stats::default();
    let result = super::run_once(&config.retention, url, &stats.retention).await;
    let audited = match &result {
        Ok(r) if !r.errors.is_empty() => Err(r.errors.join("; ")),
        Ok(r) => serde_json::to_value(r).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let actor = crate::audit::cli_actor();
    crate::audit::record(
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
            print!("{}", table(&report, &config.retention.readings.to_string()));
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

/// What a run did, one line per partition.
pub fn table(report: &Report, keep: &str) -> String {
    let mut out = String::new();
    for name in &report.created {
        out.push_str(&format!("created  {name}\n"));
    }
    for name in &report.dropped {
        out.push_str(&format!("dropped  {name}  (older than {keep})\n"));
    }
    out.push_str(&format!(
        "{} created, {} dropped, {} rows in readings_default\n",
        report.created.len(),
        report.dropped.len(),
        report.default_rows
    ));
    out
}

/// Prints the partitions of `readings` and their ranges (UTC).
pub async fn list(config: &Config) -> anyhow::Result<bool> {
    let parts = partition::partitions(url(config)?).await?;
    print!("{}", list_table(&parts));
    Ok(true)
}

fn time(ms: Option<i64>) -> String {
    match ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            humantime::format_rfc3339_seconds(t).to_string()
        }
        None => "-".into(),
    }
}

fn list_table(parts: &[PartitionInfo]) -> String {
    let mut out = format!("{:<24} {:<22} {:<22}\n", "partition", "from", "to");
    for p in parts {
        out.push_str(&format!(
            "{:<24} {:<22} {:<22}\n",
            p.name,
            time(p.from_ms),
            time(p.to_ms)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_shows_utc_ranges_and_a_dash_for_the_default() {
        let parts = [
            PartitionInfo {
                name: "readings_p20201013".into(),
                from_ms: Some(1_602_547_200_000),
                to_ms: Some(1_602_633_600_000),
            },
            PartitionInfo {
                name: "readings_default".into(),
                from_ms: None,
                to_ms: None,
            },
        ];
        let t = list_table(&parts);
        assert!(
            t.contains("readings_p20201013       2020-10-13T00:00:00Z   2020-10-14T00:00:00Z"),
            "{t}"
        );
        assert!(t.contains("readings_default         -"), "{t}");
    }
}
