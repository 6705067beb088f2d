//! The engine as the ingest task uses it: outputs attached to each reading,
//! candidates offered as the loader delivers them, and every change to a
//! model slot persisted in the models folder, counted, and reported on
//! `up/event`.

use std::sync::{Arc, Mutex};

use aeris_wire::{now_ms, Event, EventKind, ModelVersion, Reading};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::engine::{Change, Engine};
use super::metrics::{Metrics, Seen};
use super::models_dir::{Candidate, LoaderNews, ModelsDir};

/// Scores each reading with the active models (their outputs attached to
/// it) and handles the candidates the loader delivers.
pub struct Scorer {
    pub engine: Engine,
    pub models_dir: ModelsDir,
    pub events: mpsc::UnboundedSender<Event>,
    pub device: String,
    pub metrics: Arc<Metrics>,
    /// The engine's totals already added to `metrics`.
    pub seen: Seen,
    /// The active models, as the status heartbeat reports them.
    pub active: Arc<Mutex<Vec<ModelVersion>>>,
}

impl Scorer {
    pub fn process(&mut self, reading: &mut Reading) {
        for change in self.engine.process(reading) {
            self.apply(change);
        }
        self.metrics.add_engine(&self.engine.stats, &mut self.seen);
    }

    pub fn offer(&mut self, c: Candidate) {
        let change = self.engine.offer(c.model, c.force);
        self.apply(change);
    }

    pub fn on_news(&mut self, news: LoaderNews) {
        match news {
            LoaderNews::Loaded {
                name,
                version,
                source,
            } => {
                self.event(format!(
                    "model {name}@{version} received from {source}, checks passed"
                ));
            }
            LoaderNews::Rejected {
                source,
                reason,
                error,
            } => {
                self.metrics.rejections.inc();
                self.event(format!(
                    "model from {source} rejected ({reason}): {error}; active model kept"
                ));
            }
        }
    }

    fn event(&self, message: String) {
        let _ = self.events.send(Event {
            device: self.device.clone(),
            ts_ms: now_ms(),
            kind: EventKind::Model,
            message,
        });
    }

    fn install(&self, name: &str, dir: Option<&std::path::Path>) {
        if let Some(dir) = dir {
            if let Err(e) = self.models_dir.install(name, dir) {
                warn!(model = %name, error = %e, "cannot persist the active model; it runs until restart");
            }
        }
    }

    /// Shares the active models after `change`, then acts on it: installs
    /// what went live, rejects what was discarded, and reports it.
    fn apply(&mut self, change: Change) {
        self.share_active();
        match change {
            Change::Installed { name, version, dir } => {
                info!(model = %name, %version, "model active");
                self.install(&name, dir.as_deref());
                self.event(format!("model {name}@{version} active"));
            }
            Change::ShadowStarted {
                name,
                version,
                active,
            } => {
                info!(model = %name, %version, %active, "candidate in shadow");
                self.event(format!("model {name}@{version} in shadow beside {active}"));
            }
            Change::Promoted {
                name,
                from,
                to,
                windows,
                max_diff,
                forced,
                dir,
                ..
            } => {
                self.metrics.promotions.inc();
                info!(model = %name, %from, %to, windows, max_diff, forced, "model promoted");
                self.install(&name, dir.as_deref());
                let how = promotion_reason(forced, windows, max_diff);
                self.event(format!("model {name} promoted {from} -> {to} ({how})"));
            }
            Change::Discarded {
                name,
                version,
                windows,
                disagreed,
                max_diff,
                dropped,
            } => {
                self.metrics.discards.inc();
                warn!(model = %name, %version, windows, disagreed, max_diff, "candidate disagreed; discarded");
                if let Some(dir) = &dropped.dir {
                    self.models_dir.reject(dir);
                }
                self.event(format!(
                    "model {name}@{version} discarded: disagreed on {disagreed} of {windows} windows (max diff {max_diff:.3})"
                ));
            }
        }
    }

    /// Makes the engine's active models what the status heartbeat reports.
    fn share_active(&self) {
        let active = self
            .engine
            .active()
            .into_iter()
            .map(|(name, version)| aeris_wire::ModelVersion { name, version })
            .collect();
        if let Ok(mut m) = self.active.lock() {
            *m = active;
        }
    }
}

/// Why a candidate was promoted, for the event.
fn promotion_reason(forced: bool, windows: u32, max_diff: f64) -> String {
    if forced {
        "forced".to_owned()
    } else {
        format!("agreed on {windows} windows, max diff {max_diff:.3}")
    }
}

/// The scorer and the channels the loader feeds it through.
pub struct Inference {
    pub scorer: Scorer,
    pub candidates: mpsc::Receiver<Candidate>,
    pub news: mpsc::Receiver<LoaderNews>,
}
