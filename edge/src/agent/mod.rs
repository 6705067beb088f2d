//! The agent's fixed start-up and shutdown sequence:
//! config → build (buffer, TLS, models, health port) → spawn each stage
//! into its phase → wait for shutdown or an installed update → drain:
//! stop the head (ingest, loader, OTA) → let the uplink drain within
//! `shutdown_grace` → close the buffer after its last commit → stop
//! serving `/healthz`. Each phase is a `CancellationToken` and a
//! `TaskTracker`. The same sequence restarts the pipeline after a rollback
//! and when the cloud's desired configuration changed a key that cannot
//! apply live (`remote`, `live`); the others reach the running stages on
//! their `watch` of their settings. One boot
//! id per agent process: a restart of the pipeline is not a restart of
//! the device.

mod commands;
mod inference;
mod live;
mod metrics;
mod phase;
mod remote;
mod stages;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::buffer::Buffer;
use crate::config::{Config, Layers, Loaded};
use crate::ota::{self, slots::Slots, slots::Trial, trial::Supervised};
use crate::uplink::ConfigState;
use phase::Phases;
use remote::{Configurer, Reconfigure};
pub use telemetry::Telemetry;

/// Runs the agent until `shutdown` is cancelled; returns once buffered work
/// is committed and the uplink has drained or its grace period ended.
///
/// When an update was installed, the pipeline stops the same way, the new
/// version runs on trial as a child (see `ota::trial`), and after a
/// rollback this agent's pipeline starts again. Without a config loader:
/// remote configuration is refused (see [`run_layered`]).
pub async fn run(
    config: Config,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let loaded = Loaded {
        config,
        remote: None,
        remote_error: None,
    };
    run_with(loaded, None, telemetry, shutdown).await
}

/// [`run`] for a configuration loaded from `layers`: a desired
/// configuration from the cloud is checked against them, stored, and the
/// pipeline restarts with it.
pub async fn run_layered(
    layers: Layers,
    loaded: Loaded,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(loaded, Some(layers), telemetry, shutdown).await
}

async fn run_with(
    loaded: Loaded,
    layers: Option<Layers>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(e) = &loaded.remote_error {
        warn!(error = %e, "stored remote configuration left out; running on the file config");
    }
    let applied = loaded.remote.as_ref().map(|r| r.version).unwrap_or(0);
    let (state, _) = watch::channel(ConfigState {
        applied,
        refused: None,
    });
    let (apply, mut reconfigured) = mpsc::channel(4);
    let mut config = Arc::new(loaded.config);
    let boot_id = fastrand::u64(..);
    loop {
        let configurer = Configurer {
            layers: layers.clone(),
            data_dir: config.data_dir.clone(),
            state: state.clone(),
            apply: apply.clone(),
        };
        let cx = (boot_id, configurer, &mut reconfigured);
        let run = pipeline(&mut config, telemetry.clone(), shutdown.clone(), cx);
        let trial = match run.await? {
            Ended::Shutdown => return Ok(()),
            Ended::Trial(trial) => trial,
            Ended::Reconfigured(mut next) => {
                // A newer version stored meanwhile wins.
                while let Ok(newer) = reconfigured.try_recv() {
                    *next = newer;
                }
                info!(
                    version = next.version,
                    "restarting the pipeline with the remote configuration"
                );
                remote::applied(&state, next.version);
                telemetry.agent.pipeline_restarts.inc();
                config = Arc::new(next.config);
                continue;
            }
        };
        let slots = Slots::new(&config.ota.root);
        match ota::trial::supervise(&slots, trial, &config.ota, &shutdown).await {
            Supervised::Confirmed(status) if !status.success() => {
                anyhow::bail!("the updated agent exited: {status}")
            }
            Supervised::Confirmed(_) | Supervised::Shutdown => return Ok(()),
            Supervised::RolledBack => {
                info!("restarting the pipeline after the rollback");
                telemetry.agent.pipeline_restarts.inc();
            }
        }
    }
}

/// Why a run of the pipeline ended.
enum Ended {
    Shutdown,
    /// An update was installed: run it on trial.
    Trial(Trial),
    /// A desired configuration was checked and stored, and a key it
    /// changes cannot apply live: start again with it.
    Reconfigured(Box<Reconfigure>),
}

/// What the spawn step hands to the wait-and-drain step.
struct Running {
    phases: Phases,
    /// Each stage's live settings.
    live: live::Live,
    buffer: Buffer,
    buffer_thread: std::thread::JoinHandle<()>,
    ingest: JoinHandle<()>,
    uplink: JoinHandle<anyhow::Result<()>>,
    ota: JoinHandle<Option<Trial>>,
}

/// One run of the pipeline: build → spawn → wait → drain. A remote
/// configuration whose changes all apply live goes to the stages here and
/// becomes `config`; the run goes on.
async fn pipeline(
    config: &mut Arc<Config>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
    (boot_id, configurer, reconfigured): (u64, Configurer, &mut mpsc::Receiver<Reconfigure>),
) -> anyhow::Result<Ended> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // Held until the buffer is closed, at the end of this function.
    let _lock = crate::lock::DataDirLock::acquire(&config.data_dir)?;
    let state = configurer.state.clone();
    let mut running = stages::spawn(config, &telemetry, boot_id, configurer).await?;
    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ended::Shutdown,
            t = async { (&mut running.ota).await.ok().flatten() } => break match t {
                Some(trial) => Ended::Trial(trial),
                None => Ended::Shutdown,
            },
            Some(next) = reconfigured.recv() => match live::plan(config, &next.config) {
                live::Plan::Live(keys) => {
                    running.live.apply(&next.config).await;
                    info!(version = next.version, ?keys, "remote configuration applied live");
                    telemetry.agent.config_applied_live.inc();
                    remote::applied(&state, next.version);
                    *config = Arc::new(next.config);
                }
                live::Plan::Restart(keys) => {
                    info!(version = next.version, ?keys, "these keys need a restart of the pipeline");
                    break Ended::Reconfigured(Box::new(next));
                }
            },
        }
    };
    if matches!(ended, Ended::Shutdown) {
        crate::health::systemd::stopping();
    }
    let result = drain(running, config.shutdown_grace).await;
    info!("agent stopped");
    result.map(|()| ended)
}

/// Stops the head, lets the uplink drain for up to `grace`, closes the
/// buffer after its last commit, then stops serving `/healthz`.
async fn drain(running: Running, grace: Duration) -> anyhow::Result<()> {
    let Running {
        phases,
        live,
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
    // `live` holds a buffer handle too.
    drop((live, buffer));
    // The thread ends after the last handle is gone and its queue is empty.
    tokio::task::spawn_blocking(move || buffer_thread.join())
        .await
        .ok();
    // The port is free again before an updated agent on trial binds it.
    phases.serving.drain(Instant::now() + grace).await;
    result
}
