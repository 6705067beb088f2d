//! Metrics of the operations side: refused API requests, operator actions,
//! the writer's backlog and ack latency, and the fleet's per-device state as
//! the gateway sees it in `up/status` and `up/event` ([`crate::fleet`]).
//! Names are stable: the alert rules and the dashboard in `deploy/` use them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    pub device: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceReasonLabel {
    pub device: String,
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceKindLabel {
    pub device: String,
    pub kind: &'static str,
}

#[derive(Debug)]
pub struct OpsStats {
    api_refused: Family<ReasonLabel, Counter>,
    actions: Family<ActionLabel, Counter>,
    pub audit_errors: Counter,
    /// Batches received and waiting for the writer.
    pub backlog: Gauge,
    /// Receipt of a batch to its ack, seconds.
    pub ack_latency: Histogram,
    pub device_online: Family<DeviceLabel, Gauge>,
    pub device_last_status: Family<DeviceLabel, Gauge>,
    pub device_queued_readings: Family<DeviceLabel, Gauge>,
    pub device_queued_bytes: Family<DeviceLabel, Gauge>,
    pub device_oldest_unsent: Family<DeviceLabel, Gauge>,
    pub device_last_seq: Family<DeviceLabel, Gauge>,
    pub device_drain_eta: Family<DeviceLabel, Gauge>,
    pub device_lost: Family<DeviceReasonLabel, Gauge>,
    pub device_ota_failures: Family<DeviceLabel, Counter>,
    pub device_events: Family<DeviceKindLabel, Counter>,
    /// Statuses with another boot id than the device's previous one.
    pub device_restarts: Family<DeviceLabel, Counter>,
    /// 1 while a device has not converged on its desired configuration.
    pub device_config_drift: Family<DeviceLabel, Gauge>,
    /// The boot id of each device's last status, to count restarts.
    pub device_boot_ids: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl OpsStats {
    pub fn register(registry: &mut Registry) -> OpsStats {
        fn reg<M: prometheus_client::registry::Metric + Clone>(
            r: &mut Registry,
            name: &str,
            help: &str,
            m: M,
        ) -> M {
            r.register(name, help, m.clone());
            m
        }
        let r = registry;
        let ops = OpsStats {
            api_refused: reg(r, "aeris_gateway_api_refused", "HTTP API requests refused, by reason (no_token, bad_token, forbidden, rate_limited).", Family::default()),
            actions: reg(r, "aeris_gateway_operator_actions", "Operator actions, by action and outcome (ok, error).", Family::default()),
            audit_errors: reg(r, "aeris_gateway_audit_errors", "Operator actions whose audit row could not be written.", Counter::default()),
            backlog: reg(r, "aeris_gateway_backlog_batches", "Batches received and not yet taken by the writer.", Gauge::default()),
            ack_latency: reg(r, "aeris_gateway_ack_latency_seconds", "From a batch's receipt to its ack (commit included).", Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])),
            device_online: reg(r, "aeris_gateway_device_online", "1 when the device's last status says online, 0 when offline (last will).", Family::default()),
            device_last_status: reg(r, "aeris_gateway_device_last_status_timestamp_seconds", "Device clock time of the device's last status.", Family::default()),
            device_queued_readings: reg(r, "aeris_gateway_device_queued_readings", "Readings held on the device, not yet acked (data debt).", Family::default()),
            device_queued_bytes: reg(r, "aeris_gateway_device_queued_bytes", "Bytes of readings held on the device, not yet acked.", Family::default()),
            device_oldest_unsent: reg(r, "aeris_gateway_device_oldest_unsent_timestamp_seconds", "Time of the device's oldest unacked reading; 0 when nothing is owed.", Family::default()),
            device_last_seq: reg(r, "aeris_gateway_device_last_seq", "Highest seq the device has assigned.", Family::default()),
            device_drain_eta: reg(r, "aeris_gateway_device_drain_eta_seconds", "Seconds until the device's queue is empty at its current drain rate; -1 while it is not shrinking.", Family::default()),
            device_lost: reg(r, "aeris_gateway_device_readings_lost", "Readings the device reports lost, by reason (dropped, downsampled, corrupt), since its buffer was created.", Family::default()),
            device_ota_failures: reg(r, "aeris_gateway_device_ota_failures", "OTA events from the device reporting a failure or rollback.", Family::default()),
            device_events: reg(r, "aeris_gateway_device_events", "Events received from devices, by kind.", Family::default()),
            device_restarts: reg(r, "aeris_gateway_device_restarts", "Agent restarts seen by this gateway: statuses whose boot id differs from the device's previous one.", Family::default()),
            device_config_drift: reg(r, "aeris_gateway_device_config_drift", "1 while the configuration version the device reports differs from its desired one (pending or refused), 0 once it converged; devices with a desired configuration only, read from the database every 15 s.", Family::default()),
            device_boot_ids: Default::default(),
        };
        // Known label values start at 0, so rates and alerts see the series
        // before the first event.
        for reason in ["no_token", "bad_token", "forbidden", "rate_limited"] {
            let _ = ops.api_refused.get_or_create(&ReasonLabel { reason });
        }
        for outcome in ["ok", "error"] {
            let _ = ops.actions.get_or_create(&ActionLabel {
                action: "resend".into(),
                outcome,
            });
        }
        ops
    }

    pub fn api_refused(&self, reason: &'static str) {
        self.api_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn action(&self, action: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.actions
            .get_or_create(&ActionLabel {
                action: action.to_owned(),
                outcome,
            })
            .inc();
    }
}
