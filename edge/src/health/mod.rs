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
    pub batches_sent: AtomicU64,
    pub readings_sent: AtomicU64,
    /// Readings the cloud acknowledged and the buffer deleted.
    pub readings_acked: AtomicU64,
    pub uplink_connects: AtomicU64,
    /// Readings currently held in the buffer (last known).
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
    /// The sensor subscription is acknowledged (readiness).
    pub ingest_subscribed: AtomicBool,
    /// Deadlines the agent's loops promise to turn again by (watchdog).
    pub live: systemd::Liveness,
    /// Over-the-air update counters.
    pub ota: crate::ota::OtaStats,
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

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
