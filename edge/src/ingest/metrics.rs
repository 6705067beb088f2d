//! The ingest stage's metrics (and preprocessing's, which runs inside it),
//! registered into the registry the agent hands it. Names and help texts
//! are those the dashboards and alert rules use.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A counter per value of one label.
type ByLabel = Family<[(&'static str, &'static str); 1], Counter>;

#[derive(Debug)]
pub struct Metrics {
    /// Readings committed to the buffer.
    pub accepted: Counter,
    /// Sensor messages rejected, by reason.
    rejected: ByLabel,
    /// All rejections, for the systemd status line.
    rejected_all: AtomicU64,
    /// Acks of stored or rejected sensor messages not yet written to the
    /// local broker.
    pub acks_pending: Gauge,
    /// Readings stamped with their arrival time (no timestamp of their own).
    pub arrival_stamped: Counter,
    /// Readings that could not be committed (buffer errors).
    pub buffer_errors: Counter,
    /// Readings preprocessing flagged, by flag (spike, stuck).
    flagged: ByLabel,
    /// Readings of sensors configured for a PM2.5 correction, by outcome
    /// (corrected, or the reason it was withheld).
    corrections: ByLabel,
    /// Each sensor's index of its last closed hour (the local NowCast).
    sensor_aqi: Family<[(&'static str, String); 1], Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            accepted: Counter::default(),
            rejected: ByLabel::default(),
            rejected_all: AtomicU64::new(0),
            acks_pending: Gauge::default(),
            arrival_stamped: Counter::default(),
            buffer_errors: Counter::default(),
            flagged: ByLabel::default(),
            corrections: ByLabel::default(),
            sensor_aqi: Family::default(),
        };
        // Both flags are shown from the start, at 0.
        for flag in ["spike", "stuck"] {
            let _ = m.flagged.get_or_create(&[("flag", flag)]);
        }
        m
    }
}

impl Metrics {
    pub fn reject(&self, reason: &'static str) {
        self.rejected_all.fetch_add(1, Relaxed);
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    /// Sensor messages rejected so far, all reasons.
    pub fn rejected(&self) -> u64 {
        self.rejected_all.load(Relaxed)
    }

    pub fn corrected(&self, outcome: &'static str) {
        self.corrections
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// Sets the sensor's local hourly AQI; a withheld one removes it.
    pub fn local_aqi(&self, hour: &crate::preprocess::HourAqi) {
        let label = [("sensor", hour.sensor.clone())];
        match hour.aqi {
            Some(a) => {
                self.sensor_aqi.get_or_create(&label).set(i64::from(a.aqi));
            }
            None => {
                self.sensor_aqi.remove(&label);
            }
        }
    }

    pub fn flagged(&self, flag: &'static str) {
        self.flagged.get_or_create(&[("flag", flag)]).inc();
    }

    /// Adds the metrics to `registry`; prometheus-client appends the final
    /// period of each help text.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "aeris_edge_ingest_accepted",
            "Readings committed to the buffer",
            self.accepted.clone(),
        );
        crate::health::metrics::register_described(
            registry,
            "aeris_edge_ingest_rejected",
            "Sensor messages rejected, by reason.",
            self.rejected.clone(),
        );
        registry.register(
            "aeris_edge_ingest_acks_pending",
            "Sensor messages stored or rejected whose ack is not yet written to the local broker",
            self.acks_pending.clone(),
        );
        registry.register(
            "aeris_edge_ingest_arrival_stamped",
            "Readings without a timestamp of their own, stamped with their arrival time (flag bit 4)",
            self.arrival_stamped.clone(),
        );
        registry.register(
            "aeris_edge_buffer_errors",
            "Readings that could not be committed",
            self.buffer_errors.clone(),
        );
        registry.register(
            "aeris_edge_preprocess_flagged",
            "Readings flagged by preprocessing (kept, not dropped), by flag",
            self.flagged.clone(),
        );
        registry.register(
            "aeris_edge_preprocess_corrections",
            "Readings of sensors configured for a PM2.5 correction, by outcome (corrected; no_rh, rh_out_of_range, bad_input, no_room: withheld, raw kept)",
            self.corrections.clone(),
        );
        registry.register(
            "aeris_edge_sensor_aqi",
            "Each sensor's AQI of its last complete hour, computed on the agent with aeris_wire::aqi (NowCast for PM and O3, highest pollutant); absent while withheld",
            self.sensor_aqi.clone(),
        );
    }
}
