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
use aeris_sink::query::ChannelHealth;
use aeris_sink::SinkError;
use aeris_wire::aqi::channels::ChannelRule;
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensorLabel {
    pub device: String,
    pub sensor: String,
    pub pollutant: String,
}

/// The component's metrics; names are stable (alerts and dashboards).
#[derive(Debug)]
pub struct Metrics {
    pending: Gauge,
    lag: Gauge,
    recomputed: Counter,
    rows: Counter,
    rounds: Family<OutcomeLabel, Counter>,
    disagreement: Family<SensorLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    degrading: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            pending: Gauge::default(),
            lag: Gauge::default(),
            recomputed: Counter::default(),
            rows: Counter::default(),
            rounds: Family::default(),
            disagreement: Family::default(),
            degrading: Gauge::default(),
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
        registry.register(
            "aeris_gateway_sensor_channel_disagreement_ratio",
            "Share of a two-channel sensor's judged hours in rollups.degrading_window whose A and B channels disagreed (hour invalid), by device, sensor and pollutant.",
            m.disagreement.clone(),
        );
        registry.register(
            "aeris_gateway_sensors_degrading",
            "Two-channel sensors whose disagreement ratio is above rollups.degrading_ratio.",
            m.degrading.clone(),
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

    /// Sets the per-sensor ratios; sensors no longer judged in the window
    /// are dropped from the family.
    fn set_channels(&self, health: &[ChannelHealth], degrading_ratio: f64) {
        self.disagreement.clear();
        let mut degrading = 0;
        for h in health {
            let Some(ratio) = h.disagreement_ratio else {
                continue;
            };
            let label = SensorLabel {
                device: h.device.clone(),
                sensor: h.sensor.clone(),
                pollutant: h.pollutant.clone(),
            };
            self.disagreement.get_or_create(&label).set(ratio);
            degrading += i64::from(ratio > degrading_ratio);
        }
        self.degrading.set(degrading);
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
        channels: ChannelRule {
            max_abs: config.channel_max_abs,
            max_relative: config.channel_max_relative,
        },
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

/// Sets the channel disagreement metrics from the checks of the last
/// `config.degrading_window`.
async fn report_channels(
    db: &RollupDb,
    config: &RollupsConfig,
    metrics: &Metrics,
) -> Result<(), SinkError> {
    let window = i64::try_from(config.degrading_window.as_millis()).unwrap_or(i64::MAX);
    let health = db
        .channel_health(aeris_wire::now_ms().saturating_sub(window))
        .await?;
    metrics.set_channels(&health, config.degrading_ratio);
    Ok(())
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
        if result.is_ok() {
            if let Err(e) = report_channels(c, &config, &metrics).await {
                warn!(error = %e, "rollups: channel disagreement not read");
            }
        }
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
