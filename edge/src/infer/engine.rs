//! The models a board runs, and the shadow evaluation of their successors.
//!
//! Invariants: a reading gets at most one output per model slot, from the
//! active model; a candidate never writes outputs while in shadow; a
//! candidate replaces the active model only after it agreed with it on
//! `shadow_windows` consecutive windows (every one within the candidate
//! manifest's `shadow_vs_active` tolerance, and on the same side of its
//! decision threshold), or when forced. Loading happens elsewhere: the engine
//! only swaps ready models, so a swap costs ingest nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aeris_wire::{Reading, Value};

use super::features::{Entry, History, Missing};
use super::model::Model;

pub use aeris_wire::flags::FLAG_MODEL_ANOMALY;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Windows a candidate runs in shadow before it is judged.
    pub shadow_windows: u32,
    /// Local time offset for `hour_*` features.
    pub utc_offset_ms: i64,
    /// Spacing of each model's input series, by model name (default 1 h).
    pub cadence_ms: BTreeMap<String, i64>,
}

/// What happened to a model slot; each becomes an `up/event` and a metric.
#[derive(Debug)]
pub enum Change {
    /// A model for a new slot went live at once.
    Installed {
        name: String,
        version: String,
        dir: Option<std::path::PathBuf>,
    },
    ShadowStarted {
        name: String,
        version: String,
        active: String,
    },
    /// The candidate took over; the model it replaced is returned.
    Promoted {
        name: String,
        from: String,
        to: String,
        windows: u32,
        max_diff: f64,
        forced: bool,
        /// The promoted model's folder, to become the slot's active one.
        dir: Option<std::path::PathBuf>,
        replaced: Box<Model>,
    },
    /// The candidate disagreed and was dropped.
    Discarded {
        name: String,
        version: String,
        windows: u32,
        disagreed: u32,
        max_diff: f64,
        dropped: Box<Model>,
    },
}

struct Shadow {
    model: Model,
    windows: u32,
    disagreed: u32,
    max_diff: f64,
}

struct Slot {
    active: Model,
    shadow: Option<Shadow>,
}

/// Counters of inference work.
#[derive(Debug, Default, Clone)]
pub struct InferStats {
    pub runs: u64,
    pub run_time: Duration,
    pub errors: u64,
    pub skipped: BTreeMap<&'static str, u64>,
    pub shadow_agreed: u64,
    pub shadow_disagreed: u64,
    pub promotions: u64,
    pub discards: u64,
}

pub struct Engine {
    config: EngineConfig,
    slots: BTreeMap<String, Slot>,
    history: HashMap<String, History>,
    pub stats: InferStats,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            slots: BTreeMap::new(),
            history: HashMap::new(),
            stats: InferStats::default(),
        }
    }

    /// Name and version of each active model.
    /// New spacings of the models' input series; the history stays.
    pub fn set_cadence(&mut self, cadence_ms: BTreeMap<String, i64>) {
        self.config.cadence_ms = cadence_ms;
    }

    pub fn active(&self) -> Vec<(String, String)> {
        self.slots
            .values()
            .map(|s| {
                (
                    s.active.manifest.name.clone(),
                    s.active.manifest.version.clone(),
                )
            })
            .collect()
    }

    /// Offers a loaded model: a new slot goes live, otherwise it enters
    /// shadow (replacing an earlier candidate), or is promoted at once if
    /// `force`.
    pub fn offer(&mut self, model: Model, force: bool) -> Change {
        let name = model.manifest.name.clone();
        let version = model.manifest.version.clone();
        let dir = model.dir.clone();
        let Some(slot) = self.slots.get_mut(&name) else {
            self.slots.insert(
                name.clone(),
                Slot {
                    active: model,
                    shadow: None,
                },
            );
            return Change::Installed { name, version, dir };
        };
        if force {
            let from = slot.active.manifest.version.clone();
            let replaced = std::mem::replace(&mut slot.active, model);
            slot.shadow = None;
            self.stats.promotions += 1;
            return Change::Promoted {
                name,
                from,
                to: version,
                windows: 0,
                max_diff: 0.0,
                forced: true,
                dir,
                replaced: Box::new(replaced),
            };
        }
        let active = slot.active.manifest.version.clone();
        slot.shadow = Some(Shadow {
            model,
            windows: 0,
            disagreed: 0,
            max_diff: 0.0,
        });
        Change::ShadowStarted {
            name,
            version,
            active,
        }
    }

    /// Runs every model whose window is complete for `reading`, appends the
    /// active models' outputs to it, and judges candidates that have seen
    /// enough windows.
    pub fn process(&mut self, reading: &mut Reading) -> Vec<Change> {
        let history = self.history.entry(reading.sensor.clone()).or_default();
        history.push(Entry {
            ts_ms: reading.ts_ms,
            values: reading
                .values
                .iter()
                .map(|v| (v.quantity.clone(), v.value))
                .collect(),
        });
        history.focus(reading.ts_ms);
        let mut changes = Vec::new();
        for (name, slot) in self.slots.iter_mut() {
            let cadence = self
                .config
                .cadence_ms
                .get(name)
                .copied()
                .unwrap_or(3_600_000);
            let own = aeris_wire::message::model_quantity(name, "");
            let row =
                match slot
                    .active
                    .features
                    .row(history, cadence, self.config.utc_offset_ms, &own)
                {
                    Ok(row) => row,
                    Err(Missing::Input) => continue, // not this model's sensor, or a gap
                    Err(m) => {
                        *self.stats.skipped.entry(m.reason()).or_default() += 1;
                        continue;
                    }
                };
            let started = Instant::now();
            let out = slot.active.run(&row);
            self.stats.run_time += started.elapsed();
            self.stats.runs += 1;
            let value = match out.as_deref() {
                Ok([v, ..]) if v.is_finite() => f64::from(*v),
                Ok(_) => {
                    *self.stats.skipped.entry("non_finite_output").or_default() += 1;
                    continue;
                }
                Err(e) => {
                    self.stats.errors += 1;
                    tracing::warn!(model = %name, error = %e, "inference failed");
                    continue;
                }
            };
            let quantity = slot.active.manifest.output_quantity();
            history.annotate_newest(quantity.clone(), value);
            reading.values.push(Value { quantity, value });
            let threshold = slot.active.manifest.threshold();
            if threshold.is_some_and(|t| value > t) {
                reading.flags |= FLAG_MODEL_ANOMALY;
            }
            if let Some(change) = judge_shadow(
                slot,
                &row,
                value,
                &mut self.stats,
                self.config.shadow_windows,
            ) {
                changes.push(change);
            }
        }
        changes
    }
}

/// Runs the slot's candidate on the same row and decides once it has seen
/// enough windows.
fn judge_shadow(
    slot: &mut Slot,
    row: &[f32],
    active_out: f64,
    stats: &mut InferStats,
    needed: u32,
) -> Option<Change> {
    let shadow = slot.shadow.as_mut()?;
    let candidate = match shadow.model.run(row).as_deref() {
        Ok([v, ..]) => f64::from(*v),
        _ => f64::NAN,
    };
    let diff = (candidate - active_out).abs();
    let tolerance = shadow.model.manifest.tolerance.shadow_vs_active.abs;
    let same_side = match shadow.model.manifest.threshold() {
        Some(t) => (candidate > t) == (active_out > t),
        None => true,
    };
    shadow.windows += 1;
    if diff.is_finite() && diff <= tolerance && same_side {
        stats.shadow_agreed += 1;
    } else {
        stats.shadow_disagreed += 1;
        shadow.disagreed += 1;
    }
    shadow.max_diff = shadow.max_diff.max(if diff.is_finite() {
        diff
    } else {
        f64::INFINITY
    });
    if shadow.windows < needed && shadow.disagreed == 0 {
        return None;
    }
    let Shadow {
        model,
        windows,
        disagreed,
        max_diff,
    } = slot.shadow.take()?;
    let name = model.manifest.name.clone();
    if disagreed == 0 {
        stats.promotions += 1;
        let from = slot.active.manifest.version.clone();
        let to = model.manifest.version.clone();
        let dir = model.dir.clone();
        let replaced = std::mem::replace(&mut slot.active, model);
        Some(Change::Promoted {
            name,
            from,
            to,
            windows,
            max_diff,
            forced: false,
            dir,
            replaced: Box::new(replaced),
        })
    } else {
        stats.discards += 1;
        let version = model.manifest.version.clone();
        Some(Change::Discarded {
            name,
            version,
            windows,
            disagreed,
            max_diff,
            dropped: Box::new(model),
        })
    }
}
