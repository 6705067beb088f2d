//! Starting on-board inference: the active models, the scorer and the
//! loader of new ones.

use std::sync::{Arc, Mutex};

use aeris_wire::{Event, EventKind, ModelVersion};
use anyhow::Context;
use tokio::sync::mpsc;

use super::phase::Phase;
use crate::config::Config;
use crate::infer::models_dir::{Candidate, Loader, ModelCommand, ModelsDir};
use crate::infer::scorer::{Inference, Scorer};
use crate::infer::{Engine, EngineConfig};

/// Where the scorer reports: its metrics, the active models (for the
/// status heartbeat) and its events.
pub(super) struct Scoring {
    pub(super) metrics: Arc<crate::infer::Metrics>,
    pub(super) active: Arc<Mutex<Vec<ModelVersion>>>,
    pub(super) events: mpsc::UnboundedSender<Event>,
}

/// Loads the active models (seeding empty slots from `infer.models`) and
/// starts the loader that turns dropped folders and model commands into
/// candidates.
pub(super) async fn start_inference(
    config: &Arc<Config>,
    scoring: Scoring,
    phase: &Phase,
) -> anyhow::Result<(Inference, mpsc::Sender<ModelCommand>)> {
    let events = scoring.events;
    let infer = &config.infer;
    let trusted = infer.verifying_keys().map_err(anyhow::Error::msg)?;
    let models_dir = ModelsDir::create(&config.data_dir.join("models"))
        .context("cannot create the models folder")?;
    let (models, failures) = {
        let (dir, seeds, trusted) = (models_dir.clone(), infer.models.clone(), trusted.clone());
        tokio::task::spawn_blocking(move || dir.load_active(&seeds, &trusted)).await?
    };
    for (dir, e) in &failures {
        tracing::error!(model = %dir.display(), reason = e.reason(), error = %e, "model not loaded; running without it");
        let _ = events.send(Event {
            device: config.device_id.clone(),
            ts_ms: aeris_wire::now_ms(),
            kind: EventKind::Model,
            message: format!(
                "model at {} not loaded ({}): {e}",
                dir.display(),
                e.reason()
            ),
        });
    }
    let engine = Engine::new(EngineConfig {
        shadow_windows: infer.shadow_windows,
        utc_offset_ms: (infer.utc_offset_hours * 3_600_000.0) as i64,
        cadence_ms: infer.cadence_ms(),
    });
    let mut scorer = Scorer {
        engine,
        models_dir: models_dir.clone(),
        events,
        device: config.device_id.clone(),
        metrics: scoring.metrics,
        seen: Default::default(),
        active: scoring.active,
    };
    for m in models {
        scorer.offer(Candidate {
            model: m,
            force: false,
        });
    }
    let (cand_tx, candidates) = mpsc::channel(4);
    let (news_tx, news) = mpsc::channel(64);
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let loader = Loader {
        dir: models_dir,
        trusted,
        poll_interval: infer.poll_interval,
        max_model_bytes: infer.max_model_bytes,
        candidates: cand_tx,
        news: news_tx,
    };
    phase.spawn(|stop| loader.run(cmd_rx, stop));
    Ok((
        Inference {
            scorer,
            candidates,
            news,
        },
        cmd_tx,
    ))
}
