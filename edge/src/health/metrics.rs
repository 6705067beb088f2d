//! The agent's counters in the Prometheus text format, read from [`Stats`]
//! at scrape time. Names are stable; units are in the names.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Stats;

#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = ConstCounter::new(value);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let m = ConstGauge::new(value);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

/// One counter per label value, e.g. rejections by reason.
fn labelled(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let probe = ConstCounter::new(0u64);
    let mut family = enc.encode_descriptor(name, help, None, probe.metric_type())?;
    for (l, v) in values {
        ConstCounter::new(*v).encode(family.encode_family(&[(label, *l)])?)?;
    }
    Ok(())
}

impl Collector for StatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        counter(
            &mut enc,
            "aeris_edge_ingest_accepted",
            "Readings committed to the buffer.",
            g(&s.accepted),
        )?;
        let reasons = s.rejected_by_reason();
        let reasons: Vec<(&str, u64)> = reasons.iter().map(|(k, v)| (*k, *v)).collect();
        labelled(
            &mut enc,
            "aeris_edge_ingest_rejected",
            "Sensor messages rejected, by reason.",
            "reason",
            &reasons,
        )?;
        gauge(
            &mut enc,
            "aeris_edge_ingest_acks_pending",
            "Sensor messages stored or rejected whose ack is not yet written to the local broker.",
            g(&s.ingest_acks_pending) as i64,
        )?;
        labelled(
            &mut enc,
            "aeris_edge_preprocess_flagged",
            "Readings flagged by preprocessing (kept, not dropped), by flag.",
            "flag",
            &[
                ("spike", g(&s.flagged_spike)),
                ("stuck", g(&s.flagged_stuck)),
            ],
        )?;
        counter(
            &mut enc,
            "aeris_edge_preprocess_windows_closed",
            "Aggregation windows closed (mean/min/max/count computed).",
            g(&s.windows_closed),
        )?;
        counter(
            &mut enc,
            "aeris_edge_preprocess_windows_late",
            "Values older than their series' open window, not aggregated.",
            g(&s.windows_late),
        )?;
        counter(
            &mut enc,
            "aeris_edge_buffer_errors",
            "Readings that could not be committed.",
            g(&s.buffer_errors),
        )?;
        let b = s.buffer();
        let now = aeris_wire::now_ms();
        gauge(
            &mut enc,
            "aeris_edge_buffer_readings",
            "Unsent readings in the buffer.",
            b.readings as i64,
        )?;
        gauge(
            &mut enc,
            "aeris_edge_buffer_bytes",
            "Encoded bytes of the unsent readings in the buffer.",
            b.bytes as i64,
        )?;
        gauge(
            &mut enc,
            "aeris_edge_buffer_oldest_unsent_age_seconds",
            "Age of the oldest unsent reading's timestamp; 0 when none.",
            b.oldest_ts_ms.map_or(0, |t| (now - t).max(0) / 1000),
        )?;
        gauge(
            &mut enc,
            "aeris_edge_buffer_acked_held_readings",
            "Acknowledged readings kept for the grace period.",
            b.acked_held as i64,
        )?;
        gauge(
            &mut enc,
            "aeris_edge_buffer_used_bytes",
            "Bytes of the buffer database file in use.",
            b.used_bytes as i64,
        )?;
        gauge(
            &mut enc,
            "aeris_edge_buffer_degraded",
            "1 while the buffer file cannot be written.",
            i64::from(s.buffer_degraded.load(Relaxed)),
        )?;
        gauge(
            &mut enc,
            "aeris_edge_buffer_memory_readings",
            "Readings waiting in memory for the buffer to be writable.",
            g(&s.buffer_memory_readings) as i64,
        )?;
        let kinds = s.buffer_write_errors();
        let kinds: Vec<(&str, u64)> = kinds.iter().map(|(k, v)| (*k, *v)).collect();
        labelled(
            &mut enc,
            "aeris_edge_buffer_write_errors",
            "Failed buffer writes, by kind.",
            "kind",
            &kinds,
        )?;
        counter(
            &mut enc,
            "aeris_edge_buffer_refused",
            "Readings refused while the memory backlog was full (left with the sensor broker).",
            g(&s.buffer_refused),
        )?;
        counter(
            &mut enc,
            "aeris_edge_buffer_duplicates",
            "Sensor messages the broker delivered again after their commit (DUP, same packet id, topic and payload), recognised and not stored twice.",
            g(&s.buffer_duplicates),
        )?;
        counter(
            &mut enc,
            "aeris_edge_buffer_renumbered",
            "Readings moved to new seqs because the cloud holds other readings under their old ones (lost or restored buffer).",
            g(&s.buffer_renumbered),
        )?;
        counter(
            &mut enc,
            "aeris_edge_ingest_arrival_stamped",
            "Readings without a timestamp of their own, stamped with their arrival time (flag bit 4).",
            g(&s.ingest_arrival_stamped),
        )?;
        labelled(
            &mut enc,
            "aeris_edge_buffer_evicted",
            "Disk budget: readings evicted, by how (acked_early, downsampled, dropped).",
            "how",
            &[
                ("acked_early", g(&s.buffer_evicted_acked)),
                ("downsampled", g(&s.buffer_downsampled)),
                ("dropped", g(&s.buffer_dropped)),
            ],
        )?;
        counter(
            &mut enc,
            "aeris_edge_buffer_aggregates_written",
            "Disk budget: window aggregates written in place of raw readings.",
            g(&s.buffer_aggregates),
        )?;
        let losses: Vec<(&str, u64)> = b.losses.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        labelled(
            &mut enc,
            "aeris_edge_buffer_lost_readings",
            "Readings lost since the buffer was created, by reason (persisted).",
            "reason",
            &losses,
        )?;
        counter(
            &mut enc,
            "aeris_edge_uplink_batches",
            "Batches published.",
            g(&s.batches_sent),
        )?;
        counter(
            &mut enc,
            "aeris_edge_uplink_readings_sent",
            "Readings published (resends included).",
            g(&s.readings_sent),
        )?;
        counter(
            &mut enc,
            "aeris_edge_uplink_readings_acked",
            "Readings acknowledged by the cloud and deleted.",
            g(&s.readings_acked),
        )?;
        counter(
            &mut enc,
            "aeris_edge_uplink_connects",
            "Connections to the cloud broker.",
            g(&s.uplink_connects),
        )?;
        counter(
            &mut enc,
            "aeris_edge_uplink_bytes_sent",
            "Payload bytes of the batches published (resends included).",
            g(&s.uplink_bytes_sent),
        )?;
        counter(
            &mut enc,
            "aeris_edge_uplink_backlog_batches",
            "Batches published from the backlog, behind the newest readings.",
            g(&s.backlog_batches_sent),
        )?;
        counter(
            &mut enc,
            "aeris_edge_uplink_disconnects",
            "Established connections to the cloud broker that were lost.",
            g(&s.uplink_disconnects),
        )?;
        let failures = s.connect_failures();
        let failures: Vec<(&str, u64)> = failures.iter().map(|(k, v)| (*k, *v)).collect();
        labelled(
            &mut enc,
            "aeris_edge_uplink_connect_failures",
            "Failed connections to the cloud broker, by reason (tls, refused, rejected, timeout, io).",
            "reason",
            &failures,
        )?;
        s.ack_latency.0.encode(enc.encode_descriptor(
            "aeris_edge_uplink_ack_latency",
            "Time from publishing a batch to the cloud's ack.",
            Some(&prometheus_client::registry::Unit::Seconds),
            s.ack_latency.0.metric_type(),
        )?)?;
        counter(
            &mut enc,
            "aeris_edge_uplink_events_dropped",
            "Events dropped while offline.",
            g(&s.events_dropped),
        )?;
        counter(
            &mut enc,
            "aeris_edge_infer_runs",
            "Model runs.",
            g(&s.infer_runs),
        )?;
        counter(
            &mut enc,
            "aeris_edge_infer_run_microseconds",
            "Time spent in model runs.",
            g(&s.infer_run_micros),
        )?;
        counter(
            &mut enc,
            "aeris_edge_infer_errors",
            "Model runs that failed.",
            g(&s.infer_errors),
        )?;
        counter(
            &mut enc,
            "aeris_edge_infer_skipped",
            "Windows not scored (NaN input, non-finite output).",
            g(&s.infer_skipped),
        )?;
        labelled(
            &mut enc,
            "aeris_edge_model_shadow_windows",
            "Windows a candidate model ran in shadow, by outcome.",
            "outcome",
            &[
                ("agreed", g(&s.shadow_agreed)),
                ("disagreed", g(&s.shadow_disagreed)),
            ],
        )?;
        counter(
            &mut enc,
            "aeris_edge_model_promotions",
            "Candidate models promoted.",
            g(&s.model_promotions),
        )?;
        counter(
            &mut enc,
            "aeris_edge_model_discards",
            "Candidate models discarded after disagreeing.",
            g(&s.model_discards),
        )?;
        counter(
            &mut enc,
            "aeris_edge_model_rejections",
            "Candidate models that failed a check.",
            g(&s.model_rejections),
        )?;
        Ok(())
    }
}

/// A registry holding the counters of [`Stats`]; the agent adds the
/// metrics stages register themselves (`ota::Metrics`) after them.
pub fn registry(stats: &Arc<Stats>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatsCollector(stats.clone())));
    registry
}

/// The exposition text of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
