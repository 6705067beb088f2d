//! Every stage's metrics in one place for the agent process.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::health::Probes;
use crate::{ota, uplink};

/// Every stage's metrics and the health probes. Created once per agent
/// process, so counters keep counting across pipeline runs (a rollback
/// starts the pipeline again); each run registers them into a fresh
/// registry for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    pub probes: Arc<Probes>,
    pub ingest: Arc<crate::ingest::Metrics>,
    pub buffer: Arc<crate::buffer::Metrics>,
    pub uplink: Arc<uplink::Metrics>,
    pub infer: Arc<crate::infer::Metrics>,
    pub ota: Arc<ota::Metrics>,
    pub agent: Arc<super::metrics::Metrics>,
}

impl Telemetry {
    /// A registry every stage registered its metrics into.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        self.ingest.register(&mut registry);
        self.buffer.register(&mut registry);
        self.uplink.register(&mut registry);
        self.infer.register(&mut registry);
        self.ota.register(&mut registry);
        self.agent.register(&mut registry);
        registry
    }
}
