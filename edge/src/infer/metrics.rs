//! The inference stage's metrics, registered into the registry the agent
//! hands it. The engine counts in plain numbers ([`InferStats`]); the
//! scorer adds what changed to these counters after each reading. Names
//! and help texts are those the dashboards and alert rules use.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::InferStats;

#[derive(Debug)]
pub struct Metrics {
    /// Model runs, their total time, and runs that failed.
    pub runs: Counter,
    pub run_micros: Counter,
    pub errors: Counter,
    /// Windows not scored (NaN inputs, non-finite outputs).
    pub skipped: Counter,
    /// Shadow windows within / outside tolerance.
    shadow: Family<[(&'static str, &'static str); 1], Counter>,
    pub promotions: Counter,
    pub discards: Counter,
    /// Candidate models that failed a check (checksum, signature, load).
    pub rejections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            runs: Counter::default(),
            run_micros: Counter::default(),
            errors: Counter::default(),
            skipped: Counter::default(),
            shadow: Family::default(),
            promotions: Counter::default(),
            discards: Counter::default(),
            rejections: Counter::default(),
        };
        for outcome in ["agreed", "disagreed"] {
            let _ = m.shadow.get_or_create(&[("outcome", outcome)]);
        }
        m
    }
}

/// The engine's totals as last added to the counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    runs: u64,
    micros: u64,
    errors: u64,
    skipped: u64,
    agreed: u64,
    disagreed: u64,
}

impl Metrics {
    /// Adds what the engine counted since `seen` and moves `seen` on.
    pub fn add_engine(&self, s: &InferStats, seen: &mut Seen) {
        let now = Seen {
            runs: s.runs,
            micros: s.run_time.as_micros() as u64,
            errors: s.errors,
            skipped: s.skipped.values().sum(),
            agreed: s.shadow_agreed,
            disagreed: s.shadow_disagreed,
        };
        let add = |c: &Counter, new: u64, old: u64| {
            if new > old {
                c.inc_by(new - old);
            }
        };
        add(&self.runs, now.runs, seen.runs);
        add(&self.run_micros, now.micros, seen.micros);
        add(&self.errors, now.errors, seen.errors);
        add(&self.skipped, now.skipped, seen.skipped);
        let shadow = |o| self.shadow.get_or_create(&[("outcome", o)]);
        add(&shadow("agreed"), now.agreed, seen.agreed);
        add(&shadow("disagreed"), now.disagreed, seen.disagreed);
        *seen = now;
    }

    /// Adds the metrics to `registry`; prometheus-client appends the final
    /// period of each help text.
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            ("aeris_edge_infer_runs", "Model runs", &self.runs),
            (
                "aeris_edge_infer_run_microseconds",
                "Time spent in model runs",
                &self.run_micros,
            ),
            (
                "aeris_edge_infer_errors",
                "Model runs that failed",
                &self.errors,
            ),
            (
                "aeris_edge_infer_skipped",
                "Windows not scored (NaN input, non-finite output)",
                &self.skipped,
            ),
            (
                "aeris_edge_model_promotions",
                "Candidate models promoted",
                &self.promotions,
            ),
            (
                "aeris_edge_model_discards",
                "Candidate models discarded after disagreeing",
                &self.discards,
            ),
            (
                "aeris_edge_model_rejections",
                "Candidate models that failed a check",
                &self.rejections,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "aeris_edge_model_shadow_windows",
            "Windows a candidate model ran in shadow, by outcome",
            self.shadow.clone(),
        );
    }
}
