//! The agent's fixed start-up and shutdown sequence:
//! config → open buffer → spawn ingest and uplink → wait for shutdown →
//! stop ingest (the head) → let the uplink drain within the grace period →
//! close the buffer after its last commit.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::buffer::Buffer;
use crate::config::Config;
use crate::health::Stats;
use crate::uplink::{self, Identity};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the agent until `shutdown` is cancelled; returns once buffered work
/// is committed and the uplink has drained or its grace period ended.
pub async fn run(
    config: Config,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let path = config.buffer_path();
    let (buffer, buffer_thread) =
        Buffer::open(&path).with_context(|| format!("cannot open buffer {}", path.display()))?;
    let (depth, next_seq) = buffer.depth().await?;
    let identity = Identity {
        boot_id: fastrand::u64(..),
        agent_version: AGENT_VERSION.to_owned(),
    };
    info!(
        device = %config.device_id,
        boot_id = identity.boot_id,
        buffer = %path.display(),
        held = depth.readings,
        next_seq,
        "agent starting"
    );

    let ingest_stop = shutdown.child_token();
    let ingest = tokio::spawn(crate::ingest::run(
        config.clone(),
        buffer.clone(),
        stats.clone(),
        ingest_stop,
    ));
    let uplink_stop = CancellationToken::new();
    let uplink = tokio::spawn(uplink::run(
        config.clone(),
        buffer.clone(),
        stats.clone(),
        identity,
        uplink_stop.clone(),
    ));

    shutdown.cancelled().await;
    info!("shutting down: stopping ingest");
    ingest.await.context("ingest task failed")?;
    uplink_stop.cancel();
    let result = uplink.await.context("uplink task failed")?;
    drop(buffer);
    // The thread ends after the last handle is gone and its queue is empty.
    tokio::task::spawn_blocking(move || buffer_thread.join())
        .await
        .ok();
    info!("agent stopped");
    result
}
