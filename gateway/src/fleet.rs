//! The fleet as Prometheus gauges, per device: online, last status time,
//! data debt (queued readings and bytes, oldest unsent), drain estimate,
//! last seq, losses by reason, restarts (a new boot id), and event counts
//! (OTA failures among them).
//!
//! Batches are split between gateways by the shared subscription, and so
//! are statuses; for metrics every gateway instead follows every device's
//! `up/status` and `up/event` on a plain (non-shared) subscription of its
//! own. The retained statuses arrive at once on subscribing, so a
//! restarted gateway knows the whole fleet immediately, and every replica
//! exports the same values: dashboards and alert rules aggregate with
//! `max by (device)`.

use std::sync::Arc;
use std::time::Duration;

use aeris_runtime::Backoff;
use aeris_wire::{decode, Channel, DeviceState, Event as DeviceEvent, EventKind, Status, Topics};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::opstats::{DeviceKindLabel, DeviceLabel, DeviceReasonLabel, OpsStats};
use crate::stats::Stats;

/// Follows statuses and events until `shutdown`; reconnects with backoff.
pub async fn run(config: Arc<Config>, stats: Arc<Stats>, shutdown: CancellationToken) {
    let Ok(topics) = Topics::new(&config.broker.prefix) else {
        return;
    };
    let id = format!("aeris-gateway-fleet-{:08x}", crate::mqtt::random_suffix());
    let mut opts = match crate::mqtt::options(&config.broker, &id) {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "fleet metrics: cannot reach the broker");
            return;
        }
    };
    opts.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let filters = [Channel::UpStatus, Channel::UpEvent]
        .map(|c| SubscribeFilter::new(topics.all_devices(c), QoS::AtMostOnce));
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    warn!(error = %e, "fleet metrics: cannot queue subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => match topics.parse(&p.topic) {
                Ok((device, Channel::UpStatus)) => match decode::<Status>(&p.payload) {
                    Ok(s) if s.device == device => record_status(&stats.ops, &s),
                    Ok(_) | Err(_) => debug!(topic = %p.topic, "fleet metrics: status ignored"),
                },
                Ok((device, Channel::UpEvent)) => match decode::<DeviceEvent>(&p.payload) {
                    Ok(e) if e.device == device => record_event(&stats.ops, &e),
                    Ok(_) | Err(_) => debug!(topic = %p.topic, "fleet metrics: event ignored"),
                },
                _ => {}
            },
            Ok(_) => {}
            Err(e) => {
                let backoff = backoff.next_delay();
                debug!(error = %e, retry_in = ?backoff, "fleet metrics: broker connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

fn label(device: &str) -> DeviceLabel {
    DeviceLabel {
        device: device.to_owned(),
    }
}

/// Sets the device's gauges from its status. A status older than the one
/// already seen (a late retained copy) is ignored.
pub fn record_status(ops: &OpsStats, s: &Status) {
    let l = label(&s.device);
    let ts_s = s.ts_ms / 1000;
    let last = ops.device_last_status.get_or_create(&l);
    if ts_s < last.get() {
        return;
    }
    last.set(ts_s);
    count_restart(ops, s);
    let online = i64::from(s.state == DeviceState::Online);
    ops.device_online.get_or_create(&l).set(online);
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ops.device_queued_readings
        .get_or_create(&l)
        .set(clamp(s.queued_readings));
    ops.device_queued_bytes
        .get_or_create(&l)
        .set(clamp(s.queued_bytes));
    ops.device_oldest_unsent
        .get_or_create(&l)
        .set(s.oldest_unsent_ms.map(|ms| ms / 1000).unwrap_or(0));
    ops.device_last_seq.get_or_create(&l).set(clamp(s.last_seq));
    // -1: the queue is not shrinking.
    ops.device_drain_eta
        .get_or_create(&l)
        .set(s.drain_eta_s.map(clamp).unwrap_or(-1));
    for loss in &s.losses {
        ops.device_lost
            .get_or_create(&DeviceReasonLabel {
                device: s.device.clone(),
                reason: loss.reason.clone(),
            })
            .set(clamp(loss.count));
    }
}

/// Counts a restart when the boot id differs from the one of the device's
/// previous status. The first status this gateway sees of a device only
/// creates the series at 0, so `increase()` sees the first restart.
fn count_restart(ops: &OpsStats, s: &Status) {
    let restarts = ops.device_restarts.get_or_create(&label(&s.device));
    let previous = match ops.device_boot_ids.lock() {
        Ok(mut ids) => ids.insert(s.device.clone(), s.boot_id),
        // A panic while holding the map only loses restart counts.
        Err(_) => return,
    };
    if previous.is_some_and(|b| b != s.boot_id) {
        restarts.inc();
    }
}

/// Counts the event by kind; an OTA event that reports a failure or a
/// rollback also counts as an OTA failure.
pub fn record_event(ops: &OpsStats, e: &DeviceEvent) {
    let kind = match e.kind {
        EventKind::Alert => "alert",
        EventKind::SensorFault => "sensor_fault",
        EventKind::Ota => "ota",
        EventKind::Model => "model",
        EventKind::Agent => "agent",
    };
    ops.device_events
        .get_or_create(&DeviceKindLabel {
            device: e.device.clone(),
            kind,
        })
        .inc();
    let msg = e.message.to_ascii_lowercase();
    if e.kind == EventKind::Ota
        && ["fail", "rolled back", "rollback", "rejected"]
            .iter()
            .any(|w| msg.contains(w))
    {
        ops.device_ota_failures
            .get_or_create(&label(&e.device))
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;
    use aeris_wire::Loss;

    fn status(ts_ms: i64, state: DeviceState, queued: u64) -> Status {
        Status {
            device: "d1".into(),
            boot_id: 1,
            ts_ms,
            state,
            agent_version: "1".into(),
            last_seq: 90,
            queued_readings: queued,
            queued_bytes: queued * 50,
            oldest_unsent_ms: Some(1_700_000_000_000),
            losses: vec![Loss {
                reason: "dropped".into(),
                count: 12,
            }],
            models: vec![],
            drain_eta_s: Some(40),
        }
    }

    #[test]
    fn statuses_and_events_become_device_gauges() {
        let stats = Stats::default();
        record_status(&stats.ops, &status(2_000_000, DeviceState::Online, 7));
        // A late, older copy changes nothing.
        record_status(&stats.ops, &status(1_000_000, DeviceState::Offline, 0));
        let text = stats.encode();
        for line in [
            "aeris_gateway_device_online{device=\"d1\"} 1",
            "aeris_gateway_device_queued_readings{device=\"d1\"} 7",
            "aeris_gateway_device_queued_bytes{device=\"d1\"} 350",
            "aeris_gateway_device_oldest_unsent_timestamp_seconds{device=\"d1\"} 1700000000",
            "aeris_gateway_device_last_status_timestamp_seconds{device=\"d1\"} 2000",
            "aeris_gateway_device_readings_lost{device=\"d1\",reason=\"dropped\"} 12",
            "aeris_gateway_device_drain_eta_seconds{device=\"d1\"} 40",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(
            text.contains("aeris_gateway_device_restarts_total{device=\"d1\"} 0"),
            "{text}"
        );
        // The same boot id again is no restart; a new one is.
        record_status(&stats.ops, &status(2_500_000, DeviceState::Online, 7));
        let mut rebooted = status(2_600_000, DeviceState::Online, 7);
        rebooted.boot_id = 2;
        record_status(&stats.ops, &rebooted);
        assert!(
            stats
                .encode()
                .contains("aeris_gateway_device_restarts_total{device=\"d1\"} 1"),
            "{}",
            stats.encode()
        );
        record_status(&stats.ops, &status(3_000_000, DeviceState::Offline, 0));
        record_event(
            &stats.ops,
            &DeviceEvent {
                device: "d1".into(),
                ts_ms: 1,
                kind: EventKind::Ota,
                message: "update 1.2.0 failed its health check; rolled back to 1.1.0".into(),
            },
        );
        record_event(
            &stats.ops,
            &DeviceEvent {
                device: "d1".into(),
                ts_ms: 2,
                kind: EventKind::Ota,
                message: "update 1.2.0 installed".into(),
            },
        );
        let text = stats.encode();
        assert!(
            text.contains("aeris_gateway_device_online{device=\"d1\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("aeris_gateway_device_ota_failures_total{device=\"d1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("aeris_gateway_device_events_total{device=\"d1\",kind=\"ota\"} 2"),
            "{text}"
        );
    }
}
