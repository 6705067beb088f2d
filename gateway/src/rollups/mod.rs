//! Hourly rollups on PostGIS (`readings_hourly`): every `rollups.every`
//! the gateway recomputes the hours its writes marked, and on demand
//! (`aeris-gateway rollups rebuild`) a range.
//!
//! The writes only mark hours (one small statement in their transaction),
//! so ingest never waits for a NowCast; the rollups lag the readings by
//! at most `rollups.every` plus a round. Each round is one transaction
//! under an advisory lock, on a connection of its own (see
//! [`aeris_sink::postgis::rollup`]): gateways sharing a database take
//! turns, and the one that finds the lock taken skips its round. A failed
//! round is logged at WARN and counted; its marks stay and the next round
//! does them.

pub mod command;

use std::sync::Arc;
use std::time::Duration;

use aeris_sink::postgis::rollup::{self, Params, RollupDb, Round};
use aeris_sink::SinkError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::RollupsConfig;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// The component's metrics; names are stable (alerts and dashboards).
#[derive(Debug)]
pub struct Metrics {
    pending: Gauge,
    lag: Gauge,
    recomputed: Counter,
    rows: Counter,
    rounds: Family<OutcomeLabel, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            pending: Gauge::default(),
            lag: Gauge::default(),
            recomputed: Counter::default(),
            rows: Counter::default(),
            rounds: Family::default(),
        };
        registry.register(
            "aeris_gateway_rollup_pending_hours",
            "Sensor-hours marked by writes whose rollups wait for a recompute.",
            m.pending.clone(),
        );
        registry.register(
            "aeris_gateway_rollup_lag_seconds",
            "Age of the oldest sensor-hour waiting for a recompute (0 when none).",
            m.lag.clone(),
        );
        registry.register(
            "aeris_gateway_rollup_hours_recomputed",
            "Marked sensor-hours recomputed (their hourly statistics and the NowCasts after them).",
            m.recomputed.clone(),
        );
        registry.register(
            "aeris_gateway_rollup_rows_written",
            "Rollup rows (sensor, pollutant, hour) inserted or changed.",
            m.rows.clone(),
        );
        registry.register(
            "aeris_gateway_rollup_rounds",
            "Recompute rounds, by outcome (ok, busy: another gateway held the lock, error).",
            m.rounds.clone(),
        );
        for outcome in ["ok", "busy", "error"] {
            let _ = m.rounds.get_or_create(&OutcomeLabel { outcome });
        }
        m
    }

    fn record(&self, result: &Result<Round, SinkError>) {
        let outcome = match result {
            Ok(r) if r.busy => "busy",
            Ok(r) => {
                self.recomputed.inc_by(r.marks);
                self.rows.inc_by(r.rows_written);
                "ok"
            }
            Err(_) => "error",
        };
        self.rounds.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    fn set_pending(&self, p: rollup::Pending) {
        self.pending.set(p.hours);
        let lag_ms = p
            .oldest_ms
            .map_or(0, |t| aeris_wire::now_ms().saturating_sub(t).max(0));
        self.lag.set(lag_ms / 1000);
    }
}

/// The sink's parameters from the config section.
pub fn params(config: &RollupsConfig) -> Params {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    Params {
        sample_interval_ms: ms(config.sample_interval),
        sensor_intervals_ms: config
            .sensor_intervals
            .iter()
            .map(|(s, d)| (s.clone(), ms(**d)))
            .collect(),
        reference: Default::default(),
        rules: Default::default(),
        max_marks: i64::from(config.max_hours_per_round),
    }
}

/// Rounds until fewer marks are left than a round takes (or another
/// gateway holds the lock); then the pending gauges. Returns the marks
/// recomputed.
pub async fn drain(db: &mut RollupDb, p: &Params, metrics: &Metrics) -> Result<u64, SinkError> {
    let mut done = 0;
    loop {
        let result = db.recompute(p, false).await;
        metrics.record(&result);
        let round = result?;
        done += round.marks;
        if round.busy || round.marks < u64::try_from(p.max_marks).unwrap_or(0) {
            break;
        }
    }
    metrics.set_pending(db.pending().await?);
    Ok(done)
}

/// Recomputes marked hours every `config.every` until `shutdown`. Marks
/// left at shutdown stay in the database for the next start.
pub async fn run(
    config: RollupsConfig,
    url: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let p = params(&config);
    let mut client: Option<RollupDb> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.every) => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match RollupDb::connect(&url).await {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(error = %e, "rollups: cannot connect; retried next round");
                    continue;
                }
            };
        }
        let Some(c) = client.as_mut() else { continue };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = drain(c, &p, &metrics) => r,
        };
        match result {
            Ok(0) => {}
            Ok(n) => debug!(hours = n, "rollups recomputed"),
            Err(e) => {
                warn!(error = %e, "rollup recompute failed; its hours stay marked and are retried");
                if matches!(e, SinkError::Unavailable(_)) {
                    client = None;
                }
            }
        }
    }
}
