//! The agent's fixed start-up and shutdown sequence:
//! config → build (buffer, TLS, models, health port) → spawn each stage
//! into its phase → wait for shutdown or an installed update → drain:
//! stop the head (ingest, loader, OTA) → let the uplink drain within
//! `shutdown_grace` → close the buffer after its last commit → stop
//! serving `/healthz`. Each phase is a `CancellationToken` and a
//! `TaskTracker`.

mod commands;
mod inference;
mod phase;
mod stages;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::buffer::Buffer;
use crate::config::Config;
use crate::ota::{self, slots::Slots, slots::Trial, trial::Supervised};
use phase::Phases;
pub use telemetry::Telemetry;

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
        match ota::trial::supervise(&slots, trial, &config.ota, &shutdown).await {
            Supervised::Confirmed(status) if !status.success() => {
                anyhow::bail!("the updated agent exited: {status}")
            }
            Supervised::Confirmed(_) | Supervised::Shutdown => return Ok(()),
            Supervised::RolledBack => info!("restarting the pipeline after the rollback"),
        }
    }
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
    let mut running = stages::spawn(&config, &telemetry).await?;
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
