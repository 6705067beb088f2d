//! The config report (issue 18): which desired-configuration version this
//! agent runs and the last one it refused, retained on `up/config` at
//! every (re)connect and whenever it changes. The agent owns the state
//! (it applies fragments); the uplink only publishes it.

use aeris_wire::{encode, now_ms, ConfigReport, Refusal};
use rumqttc::QoS;

use super::Uplink;

/// What the agent runs of the cloud's desired configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigState {
    /// The version applied; 0 = none.
    pub applied: u64,
    /// The last version refused, and why.
    pub refused: Option<Refusal>,
}

impl Uplink {
    pub(super) async fn publish_config_report(&mut self) -> anyhow::Result<()> {
        let state = self.cx.config_state.borrow_and_update().clone();
        let report = ConfigReport {
            device: self.config.device_id.clone(),
            ts_ms: now_ms(),
            groups: self.config.groups.clone(),
            applied: state.applied,
            refused: state.refused,
        };
        self.client
            .publish(
                self.topics.config(&self.config.device_id),
                QoS::AtLeastOnce,
                true,
                encode(&report),
            )
            .await?;
        Ok(())
    }
}
