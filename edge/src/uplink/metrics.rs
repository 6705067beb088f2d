//! The uplink's metrics, registered into the registry the agent hands it.
//! Names and help texts are those the dashboards and alert rules use.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug)]
pub struct Metrics {
    pub batches_sent: Counter,
    /// Readings published (resends included).
    pub readings_sent: Counter,
    /// Readings the cloud acknowledged and the buffer deleted.
    pub readings_acked: Counter,
    pub connects: Counter,
    /// Payload bytes of the batches published (resends included).
    pub bytes_sent: Counter,
    /// Batches published from the backlog lane (after a reconnect).
    pub backlog_batches_sent: Counter,
    /// Established cloud connections that were lost.
    pub disconnects: Counter,
    /// Failed connection attempts, by reason.
    connect_failures: Family<[(&'static str, &'static str); 1], Counter>,
    /// Time from publishing a batch to its ack, in seconds (5 ms to ~40 s).
    pub ack_latency: Histogram,
    /// Events dropped because the uplink was down too long.
    pub events_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            batches_sent: Counter::default(),
            readings_sent: Counter::default(),
            readings_acked: Counter::default(),
            connects: Counter::default(),
            bytes_sent: Counter::default(),
            backlog_batches_sent: Counter::default(),
            disconnects: Counter::default(),
            connect_failures: Family::default(),
            ack_latency: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            events_dropped: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts a failed attempt to connect to (or stay with) the cloud broker.
    pub fn connect_failed(&self, reason: &'static str) {
        self.connect_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Adds the metrics to `registry`; prometheus-client appends the final
    /// period of each help text.
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "aeris_edge_uplink_batches",
                "Batches published",
                &self.batches_sent,
            ),
            (
                "aeris_edge_uplink_readings_sent",
                "Readings published (resends included)",
                &self.readings_sent,
            ),
            (
                "aeris_edge_uplink_readings_acked",
                "Readings acknowledged by the cloud and deleted",
                &self.readings_acked,
            ),
            (
                "aeris_edge_uplink_connects",
                "Connections to the cloud broker",
                &self.connects,
            ),
            (
                "aeris_edge_uplink_bytes_sent",
                "Payload bytes of the batches published (resends included)",
                &self.bytes_sent,
            ),
            (
                "aeris_edge_uplink_backlog_batches",
                "Batches published from the backlog, behind the newest readings",
                &self.backlog_batches_sent,
            ),
            (
                "aeris_edge_uplink_disconnects",
                "Established connections to the cloud broker that were lost",
                &self.disconnects,
            ),
            (
                "aeris_edge_uplink_events_dropped",
                "Events dropped while offline",
                &self.events_dropped,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        crate::health::metrics::register_described(
            registry,
            "aeris_edge_uplink_connect_failures",
            "Failed connections to the cloud broker, by reason (tls, refused, rejected, timeout, io).",
            self.connect_failures.clone(),
        );
        registry.register_with_unit(
            "aeris_edge_uplink_ack_latency",
            "Time from publishing a batch to the cloud's ack",
            Unit::Seconds,
            self.ack_latency.clone(),
        );
    }
}
