//! Gateway configuration: built-in defaults, then the TOML file, then
//! `AERIS_*` environment variables (`__` separates levels, e.g.
//! `AERIS_BROKER__PORT`; the loader both binaries share,
//! [`aeris_runtime::config`]). Unknown keys in the file are errors.
//!
//! A leaf: every section's type is defined here (the broker login in
//! `broker.rs`, the HTTP API's in `api.rs`), and the components import
//! their section from here, never the other way round.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod api;
mod broker;
mod retention;
mod rollups;

pub use api::{ApiConfig, AuthConfig, LiveConfig, RateLimitConfig, Scope, TokenConfig};
pub use broker::{BrokerConfig, BrokerTlsConfig};
pub use retention::{Keep, RetentionConfig};
pub use rollups::RollupsConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerConfig,
    /// PostgreSQL URL (`postgres://user:pass@host/db`); when absent the
    /// embedded SQLite sink at `sqlite_path` is used. Never logged.
    pub database_url: Option<String>,
    pub sqlite_path: PathBuf,
    pub writer: WriterConfig,
    /// Redis URL (`redis://host:6379/0`); when absent the live view is kept
    /// in memory. Never logged.
    pub redis_url: Option<String>,
    pub redis: RedisConfig,
    pub api: ApiConfig,
    /// Partitions of `readings` and how long rows are kept (PostGIS only).
    pub retention: RetentionConfig,
    /// Hourly rollups of the readings (PostGIS only).
    pub rollups: RollupsConfig,
    /// Who drives the stored rollouts started over HTTP.
    pub rollout: RolloutConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// This gateway's name as the owner of the rollouts it drives; empty =
    /// the host name (a pod's name), so a restarted gateway takes its own
    /// rollouts back at once.
    pub instance: String,
    /// How long a gateway owns a rollout without renewing (it renews every
    /// third of it); another gateway takes over an expired one.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            instance: String::new(),
            lease: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Prefix of every key the gateway writes.
    pub prefix: String,
    /// Approximate cap of the live stream.
    pub stream_len: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            prefix: "aeris:".into(),
            stream_len: 10_000,
        }
    }
}

/// Most batches in one transaction: a write holds an advisory lock per
/// distinct device until its commit (cloud-sink `postgis/runs.rs`), and
/// PostgreSQL's shared lock table holds `max_locks_per_transaction` ×
/// `max_connections` locks (6,400 by default) for every session at once.
pub const MAX_BATCHES_PER_COMMIT: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Batches committed in one transaction, at most.
    pub max_batches_per_commit: usize,
    /// Longest wait between retries of a failed write.
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
    /// `/readyz` answers 503 once writes have been failing this long.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// Payload bytes of batches the MQTT loop keeps while the writer's
    /// queue is full; past it a batch is handed back to the broker unstored
    /// (counted as `writer_backlog`) and its device sends it again.
    pub max_waiting_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker: BrokerConfig::default(),
            database_url: None,
            sqlite_path: PathBuf::from("aeris-cloud.db"),
            writer: WriterConfig::default(),
            redis_url: None,
            redis: RedisConfig::default(),
            api: ApiConfig::default(),
            retention: RetentionConfig::default(),
            rollups: RollupsConfig::default(),
            rollout: RolloutConfig::default(),
        }
    }
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batches_per_commit: 64,
            max_retry_delay: Duration::from_secs(10),
            stall_after: Duration::from_secs(5),
            max_waiting_bytes: 32 << 20,
        }
    }
}

pub const KEYS_HELP: &str = "\
CONFIG KEYS (TOML file; each also settable as AERIS_<KEY>, with '.' written as '__'):
  broker.host, broker.port          the cloud broker [127.0.0.1:1883]
  broker.prefix                     wire-protocol topic prefix [aeris/v1]
  broker.client_id                  MQTT client id [aeris-gateway-<random>]
  broker.username, broker.password  broker login; empty = anonymous
  broker.share_group                shared-subscription group of all gateways [aeris]
  broker.keep_alive                 MQTT keep-alive [30s]
  broker.tls.ca_file                TLS to the broker: PEM CAs its certificate must chain to (it must
                                    also name broker.host); empty = plain MQTT
  broker.tls.cert_file, broker.tls.key_file
                                    the gateway's client certificate and key (PEM) for mutual TLS;
                                    empty = none
  database_url                      PostgreSQL+PostGIS URL; unset = embedded SQLite
  sqlite_path                       embedded sink file when database_url is unset [aeris-cloud.db]
  writer.max_batches_per_commit     batches per transaction, at most (1..=1024) [64]
  writer.max_retry_delay            longest wait between retries of a failed write [10s]
  writer.stall_after                /readyz says 503 once writes have failed for this long [5s]
  writer.max_waiting_bytes          batches kept while the writer is behind, in payload bytes; past
                                    it a batch is left to its device's re-send, counted [33554432]
  redis_url                         Redis URL for the live view; unset = kept in memory
  redis.prefix                      prefix of the Redis keys [aeris:]
  redis.stream_len                  approximate cap of the live stream [10000]
  api.listen                        HTTP API and map address; port 0 = any, empty = off [127.0.0.1:8080]
  api.tile_url                      map tile URL template; empty = no base layer
  api.auth.tokens                   API clients: [[api.auth.tokens]] name, sha256 (hex SHA-256 of the
                                    bearer token), scopes: read, operate (operate includes read)
  api.auth.open_reads               serve /api/* reads without a token; unset = only when no token is
                                    configured and api.listen is a loopback address. Open reads are
                                    for a loopback listener with no proxy in front: a reverse proxy on
                                    the same host makes every client look local, so configure tokens
                                    (the map page takes ?token=) before putting a proxy in front
  api.rate_limit.per_second         sustained API requests/s per client (token, else address); 0 = off [20]
  api.rate_limit.burst              requests a client may make at once [60]
  api.live.max_streams              open /api/live event streams, in all; more get 503 [512]
  api.live.max_streams_per_client   open event streams per client (token, else address) [16]
  api.live.idle_timeout             close an event stream that sent no reading for this long; the
                                    browser reconnects, through the caps again [5m]
  retention.readings                how long raw readings are kept, whole UTC days: a duration or
                                    \"forever\" [400d]; their daily partitions are dropped whole. Every
                                    other table (devices, audit log, dead letters, rollups) is kept
                                    forever. PostGIS only; `aeris-gateway retention run` runs it now
  retention.every                   how often partitions are created and retention applied; also at
                                    start [1h]
  retention.partitions_ahead_days   daily partitions of readings created this far ahead [7]
  retention.max_backfill_days       days moved out of the default partition per run, at most [32]
  retention.lock_timeout            longest wait for a table lock per step; retried next run [5s]
  rollups.every                     how often hours marked by writes are recomputed (hourly rollups,
                                    NowCast, AQI; PostGIS only) [10s]
  rollups.max_hours_per_round       marked hours recomputed per transaction [1000]
  rollups.sample_interval           the interval sensors sample at: an hour expects 1h / interval
                                    readings and is valid with 75 % of them [1m]
  rollups.sensor_intervals          per sensor id where it differs: { \"s1\" = \"10s\" }
  rollups.channel_max_abs           two-channel sensors (pm25_a/pm25_b): an hour is invalid when
                                    the channel means differ by more than this, ug/m3 [5]
  rollups.channel_max_relative      ...and by more than this share of their mean [0.7]
  rollups.degrading_window          window of the channel disagreement ratio [24h]
  rollups.degrading_ratio           a sensor disagreeing in more than this share of its judged
                                    hours is reported as degrading [0.25]
  rollout.instance                  this gateway's name as the owner of the rollouts it drives
                                    (POST /api/rollouts, stored in the database); empty = host name
  rollout.lease                     a gateway drives a stored rollout while it holds its lease,
                                    renewed every third of it; another gateway resumes a rollout
                                    whose lease expired, the same instance at its next start [30s]
";

/// A configuration that could not be loaded; the message names the key and
/// the file.
pub use aeris_runtime::config::ConfigError;

impl Config {
    /// Defaults, then `file` (if given; it must exist), then `AERIS_*`
    /// ([`aeris_runtime::config`]), then the checks serde cannot express.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = aeris_runtime::config::load(file, aeris_runtime::config::env())?;
        if let Err(e) = aeris_wire::Topics::new(&config.broker.prefix) {
            return Err(ConfigError(format!("invalid `broker.prefix`: {e}")));
        }
        if let Err(e) = config.api.auth.validate() {
            return Err(ConfigError(e));
        }
        if let Err(e) = config.broker.tls.client_config() {
            return Err(ConfigError(format!("invalid {e}")));
        }
        if let Err(e) = config.api.live.validate() {
            return Err(ConfigError(e));
        }
        if let Err(e) = config.retention.validate() {
            return Err(ConfigError(e));
        }
        if let Err(e) = config.rollups.validate() {
            return Err(ConfigError(e));
        }
        if !(1..=MAX_BATCHES_PER_COMMIT).contains(&config.writer.max_batches_per_commit) {
            return Err(ConfigError(format!(
                "invalid `writer.max_batches_per_commit`: must be 1 to {MAX_BATCHES_PER_COMMIT} \
                 (each batch's device holds a PostgreSQL lock until the commit)"
            )));
        }
        Ok(config)
    }
}
