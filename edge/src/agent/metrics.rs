//! The agent's own counters: how often its pipeline restarted inside the
//! process, and how remote configurations were applied.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Ordered restarts of the pipeline (drain, reconnect) without a new
    /// process: a remote configuration that cannot apply live, or a
    /// rollback.
    pub pipeline_restarts: Counter,
    /// Remote configuration versions applied to the running stages.
    pub config_applied_live: Counter,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "aeris_edge_pipeline_restarts",
            "Ordered restarts of the agent's pipeline inside its process (a remote configuration that needs one, a rollback)",
            self.pipeline_restarts.clone(),
        );
        registry.register(
            "aeris_edge_config_applied_live",
            "Remote configuration versions applied to the running stages without a restart",
            self.config_applied_live.clone(),
        );
    }
}
