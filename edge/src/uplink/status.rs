//! The status heartbeat: what the cloud learns about this device (retained
//! on its status topic, and as the last will when the link drops).

use std::time::Instant;

use aeris_wire::{encode, now_ms, DeviceState, Loss, ModelVersion, Status};
use rumqttc::QoS;

use super::{Identity, Uplink};
use crate::buffer::Snapshot;

/// The status of `device` in `state`; `snapshot` `None` reports an empty
/// buffer (the last will, built before the buffer is asked).
pub(super) fn status(
    device: &str,
    id: &Identity,
    state: DeviceState,
    snapshot: Option<&Snapshot>,
    models: Vec<ModelVersion>,
    drain_eta_s: Option<u64>,
) -> Status {
    let s = snapshot.cloned().unwrap_or_default();
    Status {
        device: device.to_owned(),
        boot_id: id.boot_id,
        ts_ms: now_ms(),
        state,
        agent_version: id.agent_version.clone(),
        last_seq: s.next_seq.saturating_sub(1),
        queued_readings: s.depth.readings,
        queued_bytes: s.depth.bytes,
        oldest_unsent_ms: s.depth.oldest_ts_ms,
        losses: s
            .losses
            .into_iter()
            .map(|(reason, count)| Loss { reason, count })
            .collect(),
        models,
        drain_eta_s,
    }
}

impl Uplink {
    pub(super) async fn publish_status(&mut self, state: DeviceState) -> anyhow::Result<()> {
        let snapshot = match self.buffer.snapshot().await {
            Ok(s) => s,
            // The last known state, when the buffer cannot answer.
            Err(_) => self.buffer.last_snapshot(),
        };
        let eta = self.drain.observe(Instant::now(), snapshot.depth.readings);
        let s = status(
            &self.config.device_id,
            &self.identity,
            state,
            Some(&snapshot),
            (self.cx.models)(),
            eta,
        );
        self.client
            .publish(
                self.topics.status(&self.config.device_id),
                QoS::AtLeastOnce,
                true,
                encode(&s),
            )
            .await?;
        Ok(())
    }
}
