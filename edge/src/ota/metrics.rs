//! The OTA stage's metrics, registered into the registry the agent hands
//! it (`/metrics` encodes that registry). Names and help texts are those of
//! the earlier hand-written exposition; the dashboards and alert rules use
//! them.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// OTA counters. Shared by the pipeline runs of one agent process, so
/// they keep counting across a rollback.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Package bytes downloaded.
    pub bytes_downloaded: Counter,
    pub installed: Counter,
    pub rollbacks: Counter,
    /// Updates refused or failed, by reason.
    refused: Family<[(&'static str, &'static str); 1], Counter>,
}

impl Metrics {
    /// Counts an update refused or failed before its trial.
    pub fn failed(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// Adds the metrics to `registry`; prometheus-client appends the final
    /// period of each help text.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "aeris_edge_ota_downloaded_bytes",
            "Update package bytes downloaded (progress of a running download)",
            self.bytes_downloaded.clone(),
        );
        registry.register(
            "aeris_edge_ota_installed",
            "Updates installed into the inactive slot and put on trial",
            self.installed.clone(),
        );
        registry.register(
            "aeris_edge_ota_rollbacks",
            "Updates rolled back (trial failed or interrupted)",
            self.rollbacks.clone(),
        );
        registry.register(
            "aeris_edge_ota_refused",
            "Updates refused or failed before their trial, by reason",
            self.refused.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_help_are_those_the_dashboards_use() {
        let m = Metrics::default();
        m.installed.inc();
        m.failed("signature");
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# HELP aeris_edge_ota_downloaded_bytes Update package bytes downloaded (progress of a running download).",
            "# TYPE aeris_edge_ota_downloaded_bytes counter",
            "aeris_edge_ota_installed_total 1",
            "aeris_edge_ota_rollbacks_total 0",
            "# HELP aeris_edge_ota_refused Updates refused or failed before their trial, by reason.",
            "aeris_edge_ota_refused_total{reason=\"signature\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }
}
