//! The agent's fixed start-up and shutdown sequence:
//! config → build (buffer, TLS, models, health port) → spawn each stage
//! into its phase → wait for shutdown or an installed update → drain:
//! stop the head (ingest, loader, OTA) → let the uplink drain within
//! `shutdown_grace` → close the buffer after its last commit → stop
//! serving `/healthz`. Each phase is a `CancellationToken` and a
//! `TaskTracker`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::buffer::Buffer;
use crate::config::Config;
use crate::health::Probes;
use crate::infer::models_dir::{Candidate, Loader, ModelCommand, ModelsDir};
use crate::infer::scorer::{Inference, Scorer};
use crate::infer::{Engine, EngineConfig};
use crate::ota::{self, slots::Slots, slots::Trial, trial::Supervised};
use crate::uplink::{self, Identity};
use aeris_wire::{Command, CommandKind, Event, EventKind, ModelVersion};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

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
        registry
    }
}

/// Runs the agent until `shutdown` is cancelled; returns once buffered work
/// is committed and the uplink has drained or its grace period ended.
///
/// When an update was installed, the pipeline stops the same way, the new
/// version runs on trial as a child (see `ota::trial`), and after a
/// rollback this agent's pipeline starts again.
pub async fn run(
    config: Config,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let slots = Slots::new(&config.ota.root);
    loop {
        let run = pipeline(config.clone(), telemetry.clone(), shutdown.clone());
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

/// Tasks that stop together: their token is cancelled, then the tracker
/// waits for them, at most until a deadline.
struct Phase {
    name: &'static str,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Phase {
    fn new(name: &'static str) -> Phase {
        Phase {
            name,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Spawns `task`, built from this phase's stop token.
    fn spawn<F>(&self, task: impl FnOnce(CancellationToken) -> F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task(self.stop.clone()))
    }

    /// Stops the phase's tasks and waits for them until `deadline`; a task
    /// still running then is left behind (logged), the sequence goes on.
    async fn drain(&self, deadline: Instant) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                phase = self.name,
                tasks = self.tasks.len(),
                "tasks still running at the end of the shutdown grace; not waiting for them"
            );
        }
    }
}

/// The pipeline's tasks by the order they stop in: the head first (no new
/// readings, no new work), then the uplink drains what the head committed,
/// then the buffer closes; `/healthz` and `/metrics` answer until the end.
struct Phases {
    /// Ingest, the model loader, OTA, the trial check, systemd notify.
    head: Phase,
    /// The uplink and the command router it feeds.
    tail: Phase,
    /// The health and metrics endpoint.
    serving: Phase,
}

/// What the spawn step hands to the wait-and-drain step.
struct Running {
    phases: Phases,
    buffer: Buffer,
    buffer_thread: std::thread::JoinHandle<()>,
    ingest: JoinHandle<()>,
    uplink: JoinHandle<anyhow::Result<()>>,
    ota: JoinHandle<Option<Trial>>,
}

/// One run of the pipeline: build → spawn → wait → drain. Returns the trial
/// to start when an update was installed, None after a shutdown.
async fn pipeline(
    config: Arc<Config>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<Trial>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // Held until the buffer is closed, at the end of this function.
    let _lock = crate::lock::DataDirLock::acquire(&config.data_dir)?;
    let mut running = spawn(&config, &telemetry).await?;
    let trial = tokio::select! {
        _ = shutdown.cancelled() => None,
        t = async { (&mut running.ota).await.ok().flatten() } => t,
    };
    if trial.is_none() {
        crate::health::systemd::stopping();
    }
    let result = drain(running, config.shutdown_grace).await;
    info!("agent stopped");
    result.map(|()| trial)
}

/// Builds every stage from its settings and spawns it into its phase. Bad
/// settings (certificates, models folder, health port) end the start here,
/// before any task runs.
async fn spawn(config: &Arc<Config>, t: &Telemetry) -> anyhow::Result<Running> {
    let path = config.buffer_path();
    let (buffer, buffer_thread) = Buffer::open(
        &path,
        crate::buffer::Settings::from_config(&config.buffer, &config.preprocess),
        t.buffer.clone(),
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
    let phases = Phases {
        head: Phase::new("head"),
        tail: Phase::new("tail"),
        serving: Phase::new("serving"),
    };
    // An agent without /healthz, /readyz and /metrics cannot be watched:
    // a port that cannot be bound (another agent still on it) ends the
    // start with an error, and systemd starts it again.
    if !config.health_listen.is_empty() {
        let listener = crate::health::http::bind(&config.health_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot serve /healthz and /metrics on health_listen {}",
                    config.health_listen
                )
            })?;
        let (probes, registry) = (t.probes.clone(), Arc::new(t.registry()));
        phases
            .serving
            .spawn(|stop| crate::health::http::serve(listener, probes, registry, stop));
    }
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let active_models = Arc::new(Mutex::new(Vec::new()));
    let (inference, model_commands) = if config.infer.enabled {
        let (inference, commands) = start_inference(
            config,
            Scoring {
                metrics: t.infer.clone(),
                active: active_models.clone(),
                events: event_tx.clone(),
            },
            &phases.head,
        )
        .await?;
        (Some(inference), Some(commands))
    } else {
        (None, None)
    };
    let report = ota::Reporter {
        device: config.device_id.clone(),
        tx: event_tx,
    };
    let slots = Slots::new(&config.ota.root);
    if ota::trial::in_trial() {
        let needs_model = config.infer.enabled && !config.infer.models.is_empty();
        let t2 = t.clone();
        let work = move || ota::trial::Work {
            subscribed: t2.probes.ready(),
            acked: t2.uplink.readings_acked.get() > 0,
            model_ran: t2.infer.runs.get() > 0,
        };
        let report = report.clone();
        phases
            .head
            .spawn(|stop| ota::trial::confirm_when_working(slots, work, needs_model, report, stop));
    } else {
        ota::report_leftover(&slots, &report, &t.ota);
    }
    let (ota_tx, ota_rx) = mpsc::channel(1);
    let ota = {
        let (config, metrics) = (Arc::new(config.ota.clone()), t.ota.clone());
        phases
            .head
            .spawn(|stop| ota::serve(config, metrics, report, ota_rx, stop))
    };
    let ingest_settings = Arc::new(crate::ingest::Settings {
        device_id: config.device_id.clone(),
        local: config.local.clone(),
        ingest: config.ingest.clone(),
        sensors: config.sensors.clone(),
        preprocess: config.preprocess.clone(),
    });
    let ingest = {
        let (buffer, metrics, probes) = (buffer.clone(), t.ingest.clone(), t.probes.clone());
        phases.head.spawn(|stop| {
            crate::ingest::run(ingest_settings, buffer, metrics, probes, stop, inference)
        })
    };
    {
        let probe = buffer.clone();
        let held = move || {
            let buffer = probe.clone();
            async move { buffer.snapshot().await.ok().map(|s| s.depth.readings) }
        };
        let t2 = t.clone();
        let counts = move || crate::health::systemd::Counts {
            accepted: t2.ingest.accepted.get(),
            acked: t2.uplink.readings_acked.get(),
            rejected: t2.ingest.rejected(),
        };
        let probes = t.probes.clone();
        phases
            .head
            .spawn(|stop| crate::health::systemd::run(probes, held, counts, stop));
    }
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    // Ends when the uplink, the only sender, has ended.
    phases
        .tail
        .spawn(|_| route_commands(command_rx, model_commands, ota_tx));
    let uplink_settings = Arc::new(uplink::Settings {
        device_id: config.device_id.clone(),
        cloud: config.cloud.clone(),
        uplink: config.uplink.clone(),
        shutdown_grace: config.shutdown_grace,
    });
    let cx = uplink::Context {
        metrics: t.uplink.clone(),
        probes: t.probes.clone(),
        models: Arc::new(move || active_models.lock().map(|m| m.clone()).unwrap_or_default()),
    };
    let uplink = {
        let buffer = buffer.clone();
        phases.tail.spawn(|stop| {
            uplink::run(
                uplink_settings,
                tls,
                buffer,
                cx,
                identity,
                stop,
                event_rx,
                command_tx,
            )
        })
    };
    Ok(Running {
        phases,
        buffer,
        buffer_thread,
        ingest,
        uplink,
        ota,
    })
}

/// Stops the head, lets the uplink drain for up to `grace`, closes the
/// buffer after its last commit, then stops serving `/healthz`.
async fn drain(running: Running, grace: Duration) -> anyhow::Result<()> {
    let Running {
        phases,
        buffer,
        buffer_thread,
        ingest,
        uplink,
        ota: _,
    } = running;
    let deadline = Instant::now() + grace;
    info!("shutting down: stopping ingest");
    phases.head.drain(deadline).await;
    if ingest.is_finished() {
        ingest.await.context("ingest task failed")?;
    }
    // The uplink spends up to `grace` from its stop on the drain, then
    // publishes its offline status and disconnects (about a second).
    phases
        .tail
        .drain(Instant::now() + grace + Duration::from_secs(3))
        .await;
    let result = if uplink.is_finished() {
        uplink.await.context("uplink task failed")?
    } else {
        Ok(())
    };
    drop(buffer);
    // The thread ends after the last handle is gone and its queue is empty.
    tokio::task::spawn_blocking(move || buffer_thread.join())
        .await
        .ok();
    // The port is free again before an updated agent on trial binds it.
    phases.serving.drain(Instant::now() + grace).await;
    result
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

/// Where the scorer reports: its metrics, the active models (for the
/// status heartbeat) and its events.
struct Scoring {
    metrics: Arc<crate::infer::Metrics>,
    active: Arc<Mutex<Vec<ModelVersion>>>,
    events: mpsc::UnboundedSender<Event>,
}

/// Loads the active models (seeding empty slots from `infer.models`) and
/// starts the loader that turns dropped folders and model commands into
/// candidates.
async fn start_inference(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_phase_waits_for_its_tasks_and_leaves_a_stuck_one_at_the_deadline() {
        let phase = Phase::new("test");
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stopped.clone();
        phase.spawn(|stop| async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // Ignores its token.
        phase.spawn(|_| std::future::pending::<()>());
        let start = Instant::now();
        phase.drain(start + Duration::from_secs(5)).await;
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(phase.tasks.len(), 1, "the stuck task is left running");

        let quick = Phase::new("quick");
        quick.spawn(|stop| async move { stop.cancelled().await });
        let start = Instant::now();
        quick.drain(start + Duration::from_secs(5)).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no wait once every task ended"
        );
        assert!(quick.tasks.is_empty());
    }
}
