//! The buffer's metrics, registered into the registry the agent hands it.
//! Counters are counted by the buffer thread as things happen; the depth
//! (unsent readings, bytes, oldest age, losses) is the last refresh's
//! snapshot, read at scrape time. Names and help texts are those the
//! dashboards and alert rules use.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use super::Snapshot;

/// A counter per value of one label.
type ByLabel = Family<[(&'static str, &'static str); 1], Counter>;

#[derive(Debug)]
pub struct Metrics {
    /// Failed buffer writes, by kind (full, read_only, io, ...).
    write_errors: ByLabel,
    /// 1 while the buffer file cannot be written (readings wait in memory).
    pub degraded: Gauge,
    /// Readings waiting in memory for the buffer to be writable.
    pub memory_readings: Gauge,
    /// Readings refused because the memory backlog was full (left with the
    /// sensor broker, unacknowledged).
    pub refused: Counter,
    /// Sensor messages the broker delivered again after they were
    /// committed (DUP, same packet id and bytes), recognised and not stored
    /// twice.
    pub duplicates: Counter,
    /// Readings given new seqs because the cloud holds other readings under
    /// their old ones (the buffer was lost or restored from an old image).
    pub renumbered: Counter,
    /// Disk budget: readings evicted, by how (acked_early, downsampled,
    /// dropped), and aggregates written in place of raw readings.
    evicted: ByLabel,
    pub aggregates: Counter,
    /// The last refresh's snapshot, shared with the buffer's handles.
    depth: Arc<Mutex<Snapshot>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            write_errors: ByLabel::default(),
            degraded: Gauge::default(),
            memory_readings: Gauge::default(),
            refused: Counter::default(),
            duplicates: Counter::default(),
            renumbered: Counter::default(),
            evicted: ByLabel::default(),
            aggregates: Counter::default(),
            depth: Arc::default(),
        };
        for how in ["acked_early", "downsampled", "dropped"] {
            let _ = m.evicted.get_or_create(&[("how", how)]);
        }
        m
    }
}

impl Metrics {
    pub fn write_error(&self, kind: &'static str) {
        self.write_errors.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn evicted(&self, how: &'static str, n: u64) {
        self.evicted.get_or_create(&[("how", how)]).inc_by(n);
    }

    /// The cell the buffer thread keeps its last snapshot in: the handles
    /// read it when the thread is busy, `/metrics` reads the depth from it.
    pub(super) fn last_snapshot(&self) -> Arc<Mutex<Snapshot>> {
        self.depth.clone()
    }

    /// Adds the metrics to `registry`; prometheus-client appends the final
    /// period of each help text.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(Depth(self.depth.clone())));
        registry.register(
            "aeris_edge_buffer_degraded",
            "1 while the buffer file cannot be written",
            self.degraded.clone(),
        );
        registry.register(
            "aeris_edge_buffer_memory_readings",
            "Readings waiting in memory for the buffer to be writable",
            self.memory_readings.clone(),
        );
        crate::health::metrics::register_described(
            registry,
            "aeris_edge_buffer_write_errors",
            "Failed buffer writes, by kind.",
            self.write_errors.clone(),
        );
        registry.register(
            "aeris_edge_buffer_refused",
            "Readings refused while the memory backlog was full (left with the sensor broker)",
            self.refused.clone(),
        );
        registry.register(
            "aeris_edge_buffer_duplicates",
            "Sensor messages the broker delivered again after their commit (DUP, same packet id, topic and payload), recognised and not stored twice",
            self.duplicates.clone(),
        );
        registry.register(
            "aeris_edge_buffer_renumbered",
            "Readings moved to new seqs because the cloud holds other readings under their old ones (lost or restored buffer)",
            self.renumbered.clone(),
        );
        registry.register(
            "aeris_edge_buffer_evicted",
            "Disk budget: readings evicted, by how (acked_early, downsampled, dropped)",
            self.evicted.clone(),
        );
        registry.register(
            "aeris_edge_buffer_aggregates_written",
            "Disk budget: window aggregates written in place of raw readings",
            self.aggregates.clone(),
        );
    }
}

/// The depth gauges and the persisted loss counts, from the last snapshot;
/// the oldest reading's age is computed at scrape time.
#[derive(Debug)]
struct Depth(Arc<Mutex<Snapshot>>);

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = ConstGauge::new(v.min(i64::MAX as u64) as i64);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

impl Collector for Depth {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        let d = &s.depth;
        let now = aeris_wire::now_ms();
        let age = d.oldest_ts_ms.map_or(0, |t| (now - t).max(0) / 1000);
        for (name, help, v) in [
            (
                "aeris_edge_buffer_readings",
                "Unsent readings in the buffer.",
                d.readings,
            ),
            (
                "aeris_edge_buffer_bytes",
                "Encoded bytes of the unsent readings in the buffer.",
                d.bytes,
            ),
            (
                "aeris_edge_buffer_oldest_unsent_age_seconds",
                "Age of the oldest unsent reading's timestamp; 0 when none.",
                age as u64,
            ),
            (
                "aeris_edge_buffer_acked_held_readings",
                "Acknowledged readings kept for the grace period.",
                d.acked_held,
            ),
            (
                "aeris_edge_buffer_used_bytes",
                "Bytes of the buffer database file in use.",
                d.used_bytes,
            ),
        ] {
            gauge(&mut enc, name, help, v)?;
        }
        let probe = ConstCounter::new(0u64);
        let mut family = enc.encode_descriptor(
            "aeris_edge_buffer_lost_readings",
            "Readings lost since the buffer was created, by reason (persisted).",
            None,
            probe.metric_type(),
        )?;
        for (reason, n) in &s.losses {
            ConstCounter::new(*n).encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }
        Ok(())
    }
}
