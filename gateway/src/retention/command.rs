//! What `aeris-gateway retention run | list` print: the run's changes
//! (the run itself is the schedule's [`super::run_once`]; the binary
//! writes it to the audit log), and the partitions.

use std::time::{Duration, UNIX_EPOCH};

use aeris_sink::postgis::partition::{self, PartitionInfo, Report};
use anyhow::Context;

use crate::config::Config;

/// The PostGIS URL, or why there is none.
pub fn database_url(config: &Config) -> anyhow::Result<&str> {
    config.database_url.as_deref().context(
        "database_url is not set: partitions and retention are for PostGIS \
         (the embedded SQLite sink keeps everything)",
    )
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
    let parts = partition::partitions(database_url(config)?).await?;
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
