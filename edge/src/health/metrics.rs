//! The `/metrics` text: every metric the stages registered into the
//! agent's registry, in the OpenMetrics text format.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::registry::Registry;

/// The exposition text of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// A labelled family exported with its `# HELP` and `# TYPE` lines even
/// before its first sample (a registered family is left out while empty),
/// so dashboards and alert rules find it on a fresh agent.
#[derive(Debug)]
struct Described<M> {
    name: &'static str,
    help: &'static str,
    metric: M,
}

impl<M> Collector for Described<M>
where
    M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static,
{
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let e = enc.encode_descriptor(self.name, self.help, None, self.metric.metric_type())?;
        self.metric.encode(e)
    }
}

/// Registers `metric` as `Described`; `help` ends with its period.
pub fn register_described<M>(
    registry: &mut Registry,
    name: &'static str,
    help: &'static str,
    metric: M,
) where
    M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static,
{
    registry.register_collector(Box::new(Described { name, help, metric }));
}
