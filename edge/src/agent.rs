//! The agent's fixed start-up and shutdown sequence:
//! config → open buffer → spawn ingest and uplink → wait for shutdown →
//! stop ingest (the head) → let the uplink drain within the grace period →
//! close the buffer after its last commit.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::buffer::Buffer;
use crate::config::Config;
use crate::health::Stats;
use crate::infer::models_dir::{Candidate, Loader, ModelCommand, ModelsDir};
use crate::infer::scorer::{Inference, Scorer};
use crate::infer::{Engine, EngineConfig};
use crate::ota::{self, slots::Slots, slots::Trial, trial::Supervised};
use crate::uplink::{self, Identity};
use aeris_wire::{Command, CommandKind, Event, EventKind};
use tokio::sync::mpsc;

/// Runs the agent until `shutdown` is cancelled; returns once buffered work
/// is committed and the uplink has drained or its grace period ended.
///
/// When an update was installed, the pipeline stops the same way, the new
/// version runs on trial as a child (see `ota::trial`), and after a
/// rollback this agent's pipeline starts again.
pub async fn run(
    config: Config,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let slots = Slots::new(&config.ota.root);
    // Outlives the pipeline runs, so the counters keep counting after a
    // rollback.
    let ota_metrics = Arc::new(ota::Metrics::default());
    loop {
        let run = pipeline(
            config.clone(),
            stats.clone(),
            ota_metrics.clone(),
            shutdown.clone(),
        );
        let Some(trial) = run.await? else {
            return Ok(());
        };
        let (deadline, probation) = (config.ota.trial_deadline, config.ota.probation);
        match ota::trial::supervise(&slots, trial, deadline, probation, &shutdown).await {
            Supervised::Confirmed(status) if !status.success() => {
                anyhow::bail!("the updated agent exited: {status}")
            }
            Supervised::Confirmed(_) | Supervised::Shutdown => return Ok(()),
            Supervised::RolledBack => info!("restarting the pipeline after the rollback"),
        }
    }
}

/// One run of the pipeline; returns the trial to start when an update was
/// installed, None after a shutdown.
async fn pipeline(
    config: Arc<Config>,
    stats: Arc<Stats>,
    ota_metrics: Arc<ota::Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<Trial>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // Held until the buffer is closed, at the end of this function.
    let _lock = crate::lock::DataDirLock::acquire(&config.data_dir)?;
    let path = config.buffer_path();
    let (buffer, buffer_thread) = Buffer::open(
        &path,
        crate::buffer::Settings::from_config(&config.buffer, &config.preprocess),
        stats.clone(),
    )
    .with_context(|| format!("cannot open buffer {}", path.display()))?;
    let snapshot = buffer.snapshot().await?;
    // Bad certificate files stop the start, naming the key.
    let tls = uplink::tls::client_config(&config.cloud.tls)?;
    let identity = Identity {
        boot_id: fastrand::u64(..),
        agent_version: ota::running_version(),
    };
    info!(
        device = %config.device_id,
        boot_id = identity.boot_id,
        buffer = %path.display(),
        held = snapshot.depth.readings,
        acked_held = snapshot.depth.acked_held,
        next_seq = snapshot.next_seq,
        budget_bytes = config.buffer.max_bytes,
        "agent starting"
    );

    let health_stop = CancellationToken::new();
    // An agent without /healthz, /readyz and /metrics cannot be watched:
    // a port that cannot be bound (another agent still on it) ends the
    // start with an error, and systemd starts it again.
    let health = if config.health_listen.is_empty() {
        None
    } else {
        let mut registry = crate::health::metrics::registry(&stats);
        ota_metrics.register(&mut registry);
        let (_, task) = crate::health::http::start(
            &config.health_listen,
            stats.clone(),
            Arc::new(registry),
            health_stop.clone(),
        )
        .await
        .with_context(|| {
            format!(
                "cannot serve /healthz and /metrics on health_listen {}",
                config.health_listen
            )
        })?;
        Some(task)
    };
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let loader_stop = CancellationToken::new();
    let (inference, model_commands) = if config.infer.enabled {
        let (inference, commands) =
            start_inference(&config, &stats, event_tx.clone(), loader_stop.clone()).await?;
        (Some(inference), Some(commands))
    } else {
        (None, None)
    };

    let report = ota::Reporter {
        device: config.device_id.clone(),
        tx: event_tx.clone(),
    };
    let ota_stop = CancellationToken::new();
    let slots = Slots::new(&config.ota.root);
    if ota::trial::in_trial() {
        let needs_model = config.infer.enabled && !config.infer.models.is_empty();
        tokio::spawn(ota::trial::confirm_when_working(
            slots,
            stats.clone(),
            needs_model,
            report.clone(),
            ota_stop.clone(),
        ));
    } else {
        ota::report_leftover(&slots, &report, &ota_metrics);
    }
    let (ota_tx, ota_rx) = mpsc::channel(1);
    let mut ota_task = tokio::spawn(ota::serve(
        Arc::new(config.ota.clone()),
        ota_metrics.clone(),
        report,
        ota_rx,
        ota_stop.clone(),
    ));

    let ingest_stop = CancellationToken::new();
    let ingest_settings = crate::ingest::Settings {
        device_id: config.device_id.clone(),
        local: config.local.clone(),
        ingest: config.ingest.clone(),
        sensors: config.sensors.clone(),
        preprocess: config.preprocess.clone(),
    };
    let ingest = tokio::spawn(crate::ingest::run(
        Arc::new(ingest_settings),
        buffer.clone(),
        stats.clone(),
        ingest_stop.clone(),
        inference,
    ));
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    // Ends when the uplink, the only sender, has ended.
    tokio::spawn(route_commands(command_rx, model_commands, ota_tx));
    let uplink_stop = CancellationToken::new();
    let uplink_settings = uplink::Settings {
        device_id: config.device_id.clone(),
        cloud: config.cloud.clone(),
        uplink: config.uplink.clone(),
        shutdown_grace: config.shutdown_grace,
    };
    let uplink = tokio::spawn(uplink::run(
        Arc::new(uplink_settings),
        tls,
        buffer.clone(),
        stats.clone(),
        identity,
        uplink_stop.clone(),
        event_rx,
        command_tx,
    ));

    let notify_stop = CancellationToken::new();
    let probe = buffer.clone();
    let held = move || {
        let buffer = probe.clone();
        async move { buffer.snapshot().await.ok().map(|s| s.depth.readings) }
    };
    tokio::spawn(crate::health::systemd::run(
        stats.clone(),
        held,
        notify_stop.clone(),
    ));

    let trial = tokio::select! {
        _ = shutdown.cancelled() => None,
        t = async { (&mut ota_task).await.ok().flatten() } => t,
    };
    if trial.is_none() {
        crate::health::systemd::stopping();
    }
    ota_stop.cancel();
    notify_stop.cancel();
    ingest_stop.cancel();
    info!("shutting down: stopping ingest");
    ingest.await.context("ingest task failed")?;
    loader_stop.cancel();
    uplink_stop.cancel();
    let result = uplink.await.context("uplink task failed")?;
    drop(buffer);
    // The thread ends after the last handle is gone and its queue is empty.
    tokio::task::spawn_blocking(move || buffer_thread.join())
        .await
        .ok();
    health_stop.cancel();
    // The port is free again before an updated agent on trial binds it.
    if let Some(task) = health {
        task.await.ok();
    }
    info!("agent stopped");
    result.map(|()| trial)
}

/// Hands the `down/cmd` commands the uplink passed on to the stage that
/// acts on them: model updates to the loader (when inference runs), agent
/// updates to the OTA installer. A stage still busy with the previous one
/// drops the new command (the cloud may send it again).
async fn route_commands(
    mut commands: mpsc::UnboundedReceiver<Command>,
    models: Option<mpsc::Sender<ModelCommand>>,
    ota: mpsc::Sender<ota::OtaCommand>,
) {
    while let Some(Command { id, kind }) = commands.recv().await {
        match kind {
            CommandKind::Model {
                name,
                version,
                url,
                sha256,
                signature,
                force,
            } => match &models {
                Some(tx) => {
                    info!(id, model = %name, %version, "model update requested");
                    let cmd = ModelCommand {
                        id,
                        name,
                        version,
                        url,
                        sha256,
                        signature,
                        force,
                    };
                    if tx.try_send(cmd).is_err() {
                        warn!(
                            id,
                            "model loader busy; update dropped, the cloud may send it again"
                        );
                    }
                }
                None => warn!(id, "model update ignored: inference is disabled"),
            },
            CommandKind::Ota { manifest } => {
                info!(id, "agent update offered");
                let cmd = ota::OtaCommand {
                    id,
                    payload: manifest,
                };
                if ota.try_send(cmd).is_err() {
                    warn!(id, "an update is in progress; this one is dropped");
                }
            }
            _ => warn!(id, "command not supported by this agent version"),
        }
    }
}

/// Loads the active models (seeding empty slots from `infer.models`) and
/// starts the loader that turns dropped folders and model commands into
/// candidates.
async fn start_inference(
    config: &Arc<Config>,
    stats: &Arc<Stats>,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
) -> anyhow::Result<(Inference, mpsc::Sender<ModelCommand>)> {
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
        cadence_ms: infer
            .cadence
            .iter()
            .map(|(k, v)| (k.clone(), v.as_millis() as i64))
            .collect(),
    });
    let mut scorer = Scorer {
        engine,
        models_dir: models_dir.clone(),
        events,
        device: config.device_id.clone(),
        stats: stats.clone(),
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
    tokio::spawn(loader.run(cmd_rx, stop));
    Ok((
        Inference {
            scorer,
            candidates,
            news,
        },
        cmd_tx,
    ))
}
