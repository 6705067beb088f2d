//! aeris-gateway: the cloud side of the wire protocol.
//!
//! - [`source`]: consumes `up/batch` through a shared subscription, decodes,
//!   authorizes, writes through the sink and acks after the commit.
//! - [`auth`]: a device may write only its own data.
//! - [`config`]: layered configuration (defaults, TOML, `AERIS_*`).
//! - [`stats`], counters.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod source;
pub mod stats;

use std::sync::Arc;

use aeris_sink::{PostgisSink, Sink, SqliteSink};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use stats::Stats;

/// Opens the configured sink: PostGIS when `database_url` is set, else the
/// embedded SQLite file.
pub async fn open_sink(config: &Config) -> anyhow::Result<Arc<dyn Sink>> {
    Ok(match &config.database_url {
        Some(url) => Arc::new(PostgisSink::connect(url).await?),
        None => Arc::new(SqliteSink::open(&config.sqlite_path)?),
    })
}

/// Runs the gateway until `shutdown`; batches being written when it fires
/// are committed and acked before this returns.
pub async fn run(
    config: Config,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sink = open_sink(&config).await?;
    info!(sink = sink.kind(), broker = %format!("{}:{}", config.broker.host, config.broker.port), "gateway starting");
    source::run(Arc::new(config), sink, stats, shutdown).await?;
    info!("gateway stopped");
    Ok(())
}
