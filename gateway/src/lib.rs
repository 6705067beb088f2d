//! aeris-gateway: the cloud side of the wire protocol.
//!
//! - [`source`]: consumes `up/batch`, `up/status` and `up/event` through
//!   shared subscriptions, decodes, authorizes, writes batches through the
//!   sink and acks after the commit; feeds the live view off the ack path.
//! - [`ownership`]: a device may write only its own data (the payload's
//!   device must be the topic's).
//! - [`api`]: HTTP: health, metrics, sensors, readings, devices, the live
//!   map and its event stream.
//! - [`export`]: the hourly rollups in EPA's AQCSV exchange format.
//! - [`rollout`]: staged agent updates: canary first, outcomes from
//!   `up/event`, halt past a failure threshold; those started over HTTP
//!   are stored and resume after a restart (or on another gateway).
//! - [`fleet_config`]: desired configuration per device and group, sent
//!   to devices and compared with what they report (`up/config`).
//! - [`config`]: layered configuration (defaults, TOML, `AERIS_*`).
//! - [`stats`]: Prometheus metrics and readiness flags; [`opstats`]: the
//!   operations metrics (API refusals, operator actions, per-device fleet
//!   gauges from [`fleet`]).
//! - [`retention`]: daily partitions of the raw readings, dropped whole
//!   when expired; [`rollups`]: the hourly rollups (means, completeness,
//!   NowCast, AQI) recomputed from the hours writes mark.
//! - Operations: [`audit`] (who did what), [`resend`] (fleet re-send after
//!   a restore), [`verify`] (post-deploy check), [`mqtt`] (broker login).
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod config;
pub mod export;
pub mod fleet;
pub mod fleet_config;
pub mod locations;
pub mod mqtt;
pub mod opstats;
pub mod ownership;
pub mod resend;
pub mod retention;
pub mod rollout;
pub mod rollups;
pub mod source;
pub mod stats;
pub mod verify;

use std::sync::Arc;

use aeris_sink::live::{Live, MemoryLive};
use aeris_sink::redis::RedisLive;
use aeris_sink::{PostgisSink, Sink, SqliteSink};
use anyhow::Context;
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

/// The live view: Redis when `redis_url` is set (connected lazily, so a
/// Redis that is down does not stop the gateway), else in memory.
pub fn open_live(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Arc<dyn Live>> {
    Ok(match &config.redis_url {
        Some(url) => RedisLive::new(url, &config.redis.prefix, config.redis.stream_len, shutdown)?,
        None => Arc::new(MemoryLive::default()),
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
    // Background parts (live view, API) stop after the source has drained.
    let background = CancellationToken::new();
    let live = open_live(&config, background.clone())?;
    info!(
        sink = sink.kind(),
        live = live.kind(),
        broker = %format!("{}:{}", config.broker.host, config.broker.port),
        "gateway starting"
    );
    let feed = Arc::new(source::live::LiveFeed::default());
    let updater = tokio::spawn(source::live::run(
        feed.clone(),
        live.clone(),
        stats.clone(),
        background.clone(),
    ));
    let rollouts = rollout::Driver::new(
        sink.clone(),
        config.broker.clone(),
        &config.rollout,
        stats.rollouts.clone(),
        (
            background.clone(),
            Some(fleet_config::staged::runner(
                sink.clone(),
                config.broker.clone(),
            )),
        ),
    );
    let api = serve_api(&config, &sink, &live, &stats, &rollouts, &background).await?;
    let rollouts = tokio::spawn(rollouts.run());
    let fleet = tokio::spawn(fleet::run(
        Arc::new(config.clone()),
        stats.clone(),
        background.clone(),
    ));
    let retention = start_retention(&config, &stats, &background).await;
    let drift = tokio::spawn(fleet_config::service::drift_gauges(
        sink.clone(),
        stats.clone(),
        background.clone(),
    ));
    let rollups = config.database_url.as_ref().map(|url| {
        tokio::spawn(rollups::run(
            config.rollups.clone(),
            url.clone(),
            stats.rollups.clone(),
            background.clone(),
        ))
    });
    let outputs = source::Outputs { sink, live, feed };
    let result = source::run(Arc::new(config), outputs, stats, shutdown).await;
    background.cancel();
    let _ = updater.await;
    let _ = fleet.await;
    let _ = rollouts.await;
    let _ = drift.await;
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    if let Some(rollups) = rollups {
        let _ = rollups.await;
    }
    if let Some(api) = api {
        api.await??;
    }
    result?;
    info!("gateway stopped");
    Ok(())
}

/// A task serving the HTTP API and the live map on `api.listen`, until
/// `background` is cancelled; `None` when `api.listen` is empty.
async fn serve_api(
    config: &Config,
    sink: &Arc<dyn Sink>,
    live: &Arc<dyn Live>,
    stats: &Arc<Stats>,
    rollouts: &Arc<rollout::Driver>,
    background: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    if config.api.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .with_context(|| format!("cannot listen on api.listen = {}", config.api.listen))?;
    let addr = listener.local_addr()?;
    let _ = stats.api_addr.set(addr);
    info!(url = %format!("http://{addr}/"), "HTTP API and live map listening");
    let access = Arc::new(api::auth::Access::new(
        &config.api.auth,
        &config.api.rate_limit,
        &config.api.listen,
        stats.clone(),
    ));
    info!(
        tokens = config.api.auth.tokens.len(),
        open_reads = access.open_reads(),
        "HTTP API access"
    );
    let router = api::router(api::ApiState {
        sink: sink.clone(),
        live: live.clone(),
        stats: stats.clone(),
        tile_url: config.api.tile_url.clone(),
        shutdown: background.clone(),
        access: access.clone(),
        config: Arc::new(config.clone()),
        streams: api::live::Streams::new(config.api.live.clone(), stats.clone()),
        rollouts: rollouts.clone(),
    })
    .merge(api::auth::protect(
        api::rollout::routes(rollouts.clone(), Some((sink.clone(), stats.clone()))),
        access,
        api::auth::Scope::Operate,
    ));
    let stop = background.clone();
    Ok(Some(tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    })))
}

/// With a database: one partition and retention run before the first
/// write (so today's partition exists; bounded, since a failure only
/// delays it), then the scheduled runs until `background` is cancelled.
async fn start_retention(
    config: &Config,
    stats: &Arc<Stats>,
    background: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let url = config.database_url.as_ref()?;
    let first = retention::run_once(&config.retention, url, &stats.retention);
    if tokio::time::timeout(std::time::Duration::from_secs(30), first)
        .await
        .is_err()
    {
        tracing::warn!("partition and retention run at start timed out; retried on schedule");
    }
    Some(tokio::spawn(retention::run(
        config.retention.clone(),
        url.to_string(),
        stats.retention.clone(),
        background.clone(),
    )))
}
