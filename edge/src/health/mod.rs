//! Counters of what the agent did, shared by its tasks and read by the
//! status heartbeat, the logs, the demo's progress line and `/metrics`.

pub mod http;
pub mod metrics;
pub mod systemd;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Stats {
    /// Readings committed to the buffer.
    pub accepted: AtomicU64,
    /// Sensor messages rejected, all reasons.
    pub rejected: AtomicU64,
    rejected_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    /// Readings preprocessing flagged as spikes / stuck values.
    pub flagged_spike: AtomicU64,
    pub flagged_stuck: AtomicU64,
    /// Aggregation windows closed, and values too late for their window.
    pub windows_closed: AtomicU64,
    pub windows_late: AtomicU64,
    /// Readings that could not be committed (buffer errors).
    pub buffer_errors: AtomicU64,
    /// Readings lost from the buffer (corrupt rows).
    pub lost_corrupt: AtomicU64,
    /// Failed buffer writes, by kind (full, read_only, io, ...).
    buffer_write_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// The buffer file cannot be written; readings wait in memory.
    pub buffer_degraded: AtomicBool,
    /// Readings waiting in memory for the buffer to be writable.
    pub buffer_memory_readings: AtomicU64,
    /// Readings refused because the memory backlog was full (left with the
    /// sensor broker, unacknowledged).
    pub buffer_refused: AtomicU64,
    /// Sensor messages the broker delivered again after they were
    /// committed (DUP, same packet id and bytes), recognised and not stored
    /// twice.
    pub buffer_duplicates: AtomicU64,
    /// Readings given new seqs because the cloud holds other readings under
    /// their old ones (the buffer was lost or restored from an old image).
    pub buffer_renumbered: AtomicU64,
    /// Readings stamped with their arrival time (no timestamp of their own).
    pub ingest_arrival_stamped: AtomicU64,
    /// Disk budget: acked readings deleted before their grace ended, raw
    /// readings replaced by aggregates, aggregates written, rows dropped.
    pub buffer_evicted_acked: AtomicU64,
    pub buffer_downsampled: AtomicU64,
    pub buffer_aggregates: AtomicU64,
    pub buffer_dropped: AtomicU64,
    /// The active models, for the status heartbeat.
    models: Mutex<Vec<aeris_wire::ModelVersion>>,
    /// Last known buffer state (refreshed every second).
    buffer_gauges: Mutex<BufferGauges>,
    pub batches_sent: AtomicU64,
    pub readings_sent: AtomicU64,
    /// Readings the cloud acknowledged and the buffer deleted.
    pub readings_acked: AtomicU64,
    pub uplink_connects: AtomicU64,
    /// Payload bytes of the batches published (resends included).
    pub uplink_bytes_sent: AtomicU64,
    /// Batches published from the backlog lane (after a reconnect).
    pub backlog_batches_sent: AtomicU64,
    /// Established cloud connections that were lost.
    pub uplink_disconnects: AtomicU64,
    uplink_connect_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from publishing a batch to its ack.
    pub ack_latency: AckLatency,
    /// Readings currently unsent in the buffer (last known).
    pub buffered: AtomicU64,
    /// Model runs, their total time, and runs that failed.
    pub infer_runs: AtomicU64,
    pub infer_run_micros: AtomicU64,
    pub infer_errors: AtomicU64,
    /// Windows not scored (NaN inputs, non-finite outputs).
    pub infer_skipped: AtomicU64,
    /// Shadow windows within / outside tolerance.
    pub shadow_agreed: AtomicU64,
    pub shadow_disagreed: AtomicU64,
    pub model_promotions: AtomicU64,
    pub model_discards: AtomicU64,
    /// Candidate models that failed a check (checksum, signature, load).
    pub model_rejections: AtomicU64,
    /// Events dropped because the uplink was down too long.
    pub events_dropped: AtomicU64,
    /// Acks of stored or rejected sensor messages not yet written to the
    /// local broker (last known).
    pub ingest_acks_pending: AtomicU64,
    /// The sensor subscription is acknowledged (readiness).
    pub ingest_subscribed: AtomicBool,
    /// Deadlines the agent's loops promise to turn again by (watchdog).
    pub live: systemd::Liveness,
}

impl Stats {
    pub fn reject(&self, reason: &'static str) {
        self.rejected.fetch_add(1, Relaxed);
        if let Ok(mut m) = self.rejected_by_reason.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Rejections so far, by reason.
    pub fn rejected_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.rejected_by_reason
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Counts a failed attempt to connect to (or stay with) the cloud broker.
    pub fn connect_failed(&self, reason: &'static str) {
        if let Ok(mut m) = self.uplink_connect_failures.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Failed cloud connection attempts so far, by reason.
    pub fn connect_failures(&self) -> BTreeMap<&'static str, u64> {
        self.uplink_connect_failures
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn buffer_write_error(&self, kind: &'static str) {
        if let Ok(mut m) = self.buffer_write_errors.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }

    pub fn buffer_write_errors(&self) -> BTreeMap<&'static str, u64> {
        self.buffer_write_errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn set_buffer(&self, g: BufferGauges) {
        self.buffered.store(g.readings, Relaxed);
        if let Ok(mut m) = self.buffer_gauges.lock() {
            *m = g;
        }
    }

    /// The buffer's gauges as of its last refresh.
    pub fn buffer(&self) -> BufferGauges {
        self.buffer_gauges
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn set_models(&self, models: Vec<aeris_wire::ModelVersion>) {
        if let Ok(mut m) = self.models.lock() {
            *m = models;
        }
    }

    pub fn models(&self) -> Vec<aeris_wire::ModelVersion> {
        self.models.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

/// The buffer's depth as `/metrics` shows it; the buffer fills it in from
/// its snapshot (health sits below the buffer and does not know its types).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BufferGauges {
    /// Unsent readings, their encoded bytes and the oldest one's timestamp.
    pub readings: u64,
    pub bytes: u64,
    pub oldest_ts_ms: Option<i64>,
    /// Acknowledged readings kept for the grace period.
    pub acked_held: u64,
    /// Bytes of the database file in use.
    pub used_bytes: u64,
    /// Readings lost since the buffer was created, by reason.
    pub losses: Vec<(String, u64)>,
}

/// Histogram of ack latencies in seconds, 5 ms to about 40 s.
#[derive(Debug)]
pub struct AckLatency(pub prometheus_client::metrics::histogram::Histogram);

impl Default for AckLatency {
    fn default() -> Self {
        AckLatency(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 14),
        ))
    }
}

impl AckLatency {
    pub fn observe(&self, d: std::time::Duration) {
        self.0.observe(d.as_secs_f64());
    }
}
