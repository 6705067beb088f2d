//! What the gateway did, as Prometheus metrics (served on `/metrics`) and
//! the readiness flags of `/readyz`. Metric names are stable: dashboards and
//! alerts use them.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Stats {
    pub batches_received: Counter,
    pub readings_inserted: Counter,
    pub readings_duplicate: Counter,
    /// Readings not stored because their seq holds another reading.
    pub seq_collisions: Counter,
    /// Batches the database refused, set aside and acked.
    pub dead_letters: Counter,
    pub acks_sent: Counter,
    pub write_errors: Counter,
    pub statuses_received: Counter,
    pub live_errors: Counter,
    /// Sensors whose latest reading still waits for the live view (Redis).
    pub live_pending: Gauge,
    /// Open `/api/live` event streams.
    pub live_streams: Gauge,
    live_streams_refused: Family<Reason, Counter>,
    broker_connect_failures: Family<Reason, Counter>,
    /// Operations metrics: API refusals, operator actions, fleet gauges.
    pub ops: crate::opstats::OpsStats,
    /// Partitions created and dropped by retention.
    pub retention: std::sync::Arc<crate::retention::Metrics>,
    /// Hourly rollups: marks pending, lag, recomputes.
    pub rollups: std::sync::Arc<crate::rollups::Metrics>,
    /// Stored rollouts by state, and those this gateway drives.
    pub rollouts: std::sync::Arc<crate::rollout::Metrics>,
    rejected: Family<Reason, Counter>,
    registry: Registry,
    /// Connected to the broker with the subscriptions queued.
    pub broker_connected: AtomicBool,
    /// The last write or ping of the sink succeeded.
    pub sink_ok: AtomicBool,
    /// Whether the writer makes progress (for `/readyz`).
    pub progress: Progress,
    /// Where the HTTP API listens, once it does.
    pub api_addr: OnceLock<SocketAddr>,
}

impl Default for Stats {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let batches_received = counter(
            "aeris_gateway_batches_received",
            "Batches decoded and authorized.",
        );
        let readings_inserted = counter(
            "aeris_gateway_readings_inserted",
            "Readings newly committed to the database.",
        );
        let readings_duplicate = counter(
            "aeris_gateway_readings_duplicate",
            "Readings received again that were already stored.",
        );
        let seq_collisions = counter(
            "aeris_gateway_seq_collisions",
            "Readings refused because their (device, seq) holds another reading; the device is asked to renumber them.",
        );
        let dead_letters = counter(
            "aeris_gateway_dead_letters",
            "Batches the database refused, set aside in dead_letters and acked.",
        );
        let acks_sent = counter("aeris_gateway_acks_sent", "Acks published after a commit.");
        let write_errors = counter(
            "aeris_gateway_write_errors",
            "Failed database writes (retried, acks held).",
        );
        let statuses_received = counter(
            "aeris_gateway_statuses_received",
            "Device status messages accepted.",
        );
        let live_errors = counter(
            "aeris_gateway_live_errors",
            "Failed updates of the live view (Redis), retried.",
        );
        let live_pending = Gauge::default();
        registry.register(
            "aeris_gateway_live_pending_sensors",
            "Sensors whose latest reading waits for the live view.",
            live_pending.clone(),
        );
        let live_streams = Gauge::default();
        registry.register(
            "aeris_gateway_live_streams",
            "Open /api/live event streams.",
            live_streams.clone(),
        );
        let live_streams_refused = Family::<Reason, Counter>::default();
        registry.register(
            "aeris_gateway_live_streams_refused",
            "/api/live event streams refused with 503, by cap (total, per_client).",
            live_streams_refused.clone(),
        );
        for reason in ["total", "per_client"] {
            let _ = live_streams_refused.get_or_create(&Reason { reason });
        }
        let broker_connect_failures = Family::<Reason, Counter>::default();
        registry.register(
            "aeris_gateway_broker_connect_failures",
            "Failed connection attempts to the broker, by reason (tls, refused, rejected, timeout, io).",
            broker_connect_failures.clone(),
        );
        for reason in ["tls", "refused", "rejected", "timeout", "io"] {
            let _ = broker_connect_failures.get_or_create(&Reason { reason });
        }
        let rejected = Family::<Reason, Counter>::default();
        registry.register(
            "aeris_gateway_messages_rejected",
            "Messages dropped unstored, by reason.",
            rejected.clone(),
        );
        let ops = crate::opstats::OpsStats::register(&mut registry);
        let retention = std::sync::Arc::new(crate::retention::Metrics::register(&mut registry));
        let rollups = std::sync::Arc::new(crate::rollups::Metrics::register(&mut registry));
        let rollouts = std::sync::Arc::new(crate::rollout::Metrics::register(&mut registry));
        Stats {
            ops,
            retention,
            rollups,
            rollouts,
            batches_received,
            readings_inserted,
            readings_duplicate,
            seq_collisions,
            dead_letters,
            acks_sent,
            write_errors,
            statuses_received,
            live_errors,
            live_pending,
            live_streams,
            live_streams_refused,
            broker_connect_failures,
            rejected,
            registry,
            broker_connected: AtomicBool::new(false),
            sink_ok: AtomicBool::new(true),
            progress: Progress::default(),
            api_addr: OnceLock::new(),
        }
    }
}

impl Stats {
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    pub fn live_stream_refused(&self, reason: &'static str) {
        self.live_streams_refused
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub fn broker_connect_failure(&self, reason: &'static str) {
        self.broker_connect_failures
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&Reason { reason }).get()
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Since when the writer's current write has been failing (transport or
/// server errors, retried); `None` while it makes progress. A refused
/// batch is progress: it is set aside, not retried.
#[derive(Debug, Default)]
pub struct Progress {
    failing_since: Mutex<Option<Instant>>,
}

impl Progress {
    /// A write failed and will be retried; the first failure starts the clock.
    pub fn failing(&self) {
        if let Ok(mut since) = self.failing_since.lock() {
            since.get_or_insert_with(Instant::now);
        }
    }

    /// A write went through (committed or refused for its data).
    pub fn ok(&self) {
        if let Ok(mut since) = self.failing_since.lock() {
            *since = None;
        }
    }

    /// How long the writer has been failing.
    pub fn stalled_for(&self) -> Option<Duration> {
        self.failing_since
            .lock()
            .ok()
            .and_then(|s| s.map(|t| t.elapsed()))
    }
}
