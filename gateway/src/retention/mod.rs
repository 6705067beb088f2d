//! Partitions and retention of `readings` on PostGIS: once at start, then
//! every `retention.every`, and on demand (`aeris-gateway retention run`).
//!
//! Each run creates the daily partitions from today to
//! `retention.partitions_ahead_days` ahead, moves rows that landed in the
//! default partition (a backlog from before the oldest partition) into
//! partitions of their own day, and drops, whole, the partitions whose day
//! is entirely older than `retention.readings`. Never a `DELETE`: see
//! [`aeris_sink::postgis::partition`]. Gateways sharing a database run it
//! each on their own schedule; the database's advisory lock makes them take
//! turns, and the second finds nothing left to do.
//!
//! A failed run, or a failed step of a run (the other steps go on), is
//! logged at WARN and counted as `outcome="error"`; nothing is lost
//! meanwhile (rows without a partition go to the default partition) and
//! the next run tries again.

pub mod command;

use std::sync::Arc;
use std::time::Duration;

use aeris_sink::postgis::partition::{self, Plan, Report};
use aeris_sink::SinkError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RetentionConfig;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// The component's metrics; names are stable (alerts and dashboards).
#[derive(Debug)]
pub struct Metrics {
    created: Family<TableLabel, Counter>,
    dropped: Family<TableLabel, Counter>,
    runs: Family<OutcomeLabel, Counter>,
    default_rows: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            created: Family::default(),
            dropped: Family::default(),
            runs: Family::default(),
            default_rows: Gauge::default(),
        };
        registry.register(
            "aeris_gateway_partitions_created",
            "Daily partitions created, by table.",
            m.created.clone(),
        );
        registry.register(
            "aeris_gateway_retention_partitions_dropped",
            "Partitions dropped whole by retention, by table.",
            m.dropped.clone(),
        );
        registry.register(
            "aeris_gateway_retention_runs",
            "Partition and retention runs, by outcome (ok, error).",
            m.runs.clone(),
        );
        registry.register(
            "aeris_gateway_readings_default_partition_rows",
            "Readings in the default partition after the last run: days beyond the partitions created ahead, or a backlog not yet moved.",
            m.default_rows.clone(),
        );
        // Known label values start at 0, so rates and alerts see the
        // series before the first event.
        let _ = m.created.get_or_create(&TableLabel { table: "readings" });
        let _ = m.dropped.get_or_create(&TableLabel { table: "readings" });
        for outcome in ["ok", "error"] {
            let _ = m.runs.get_or_create(&OutcomeLabel { outcome });
        }
        m
    }

    fn record(&self, result: &Result<Report, SinkError>) {
        let table = TableLabel { table: "readings" };
        match result {
            Ok(r) => {
                self.created
                    .get_or_create(&table)
                    .inc_by(r.created.len() as u64);
                self.dropped
                    .get_or_create(&table)
                    .inc_by(r.dropped.len() as u64);
                self.default_rows.set(r.default_rows);
                let outcome = if r.errors.is_empty() { "ok" } else { "error" };
                self.runs.get_or_create(&OutcomeLabel { outcome }).inc();
            }
            Err(_) => {
                self.runs
                    .get_or_create(&OutcomeLabel { outcome: "error" })
                    .inc();
            }
        }
    }
}

/// What a run at `now_ms` does under `config`.
pub fn plan(config: &RetentionConfig, now_ms: i64) -> Plan {
    Plan {
        now_ms,
        ahead_days: config.partitions_ahead_days,
        keep: config.readings.duration(),
        max_backfill_days: config.max_backfill_days,
        lock_timeout: config.lock_timeout,
    }
}

/// One run now against the database at `url`: logged, counted in
/// `metrics`, and returned.
pub async fn run_once(
    config: &RetentionConfig,
    url: &str,
    metrics: &Metrics,
) -> Result<Report, SinkError> {
    let result = partition::maintain(url, &plan(config, aeris_wire::now_ms())).await;
    metrics.record(&result);
    match &result {
        Ok(r) => {
            for name in &r.created {
                info!(partition = %name, "partition created");
            }
            for name in &r.dropped {
                info!(partition = %name, keep = %config.readings, "partition dropped by retention");
            }
            for error in &r.errors {
                warn!(%error, "partition and retention step failed; retried next run");
            }
            if r.default_rows > 0 {
                info!(
                    rows = r.default_rows,
                    "readings wait in the default partition for their day's partition"
                );
            }
        }
        Err(e) => warn!(error = %e, "partition and retention run failed; retried next run"),
    }
    result
}

/// Runs every `config.every` until `shutdown` (the first run is the
/// caller's, at start), counting in `metrics`.
pub async fn run(
    config: RetentionConfig,
    url: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let every = config.every.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let _ = run_once(&config, &url, &metrics).await;
    }
}
