//! Agent configuration in layers: built-in defaults, then the TOML file, then
//! `AERIS_*` environment variables (`AERIS_CLOUD__PORT=8883` sets
//! `cloud.port`; `__` separates levels). Unknown keys in the file are errors,
//! so a typo is named instead of silently ignored. The loader is the one
//! both binaries share ([`aeris_runtime::config`]); this module holds the
//! agent's structs and the checks serde cannot express.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Env;
use serde::{Deserialize, Serialize};

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This device's id: its topic level and its key in the cloud database.
    pub device_id: String,
    /// Folder for the buffer database; created if missing.
    pub data_dir: PathBuf,
    /// The board's local broker, where sensors publish.
    pub local: LocalConfig,
    /// The cloud broker the agent syncs to.
    pub cloud: CloudConfig,
    pub ingest: IngestConfig,
    pub preprocess: PreprocessConfig,
    pub uplink: UplinkConfig,
    pub buffer: BufferConfig,
    pub infer: InferConfig,
    pub ota: crate::ota::OtaConfig,
    /// Local HTTP endpoint for /healthz, /readyz and /metrics; empty = off.
    pub health_listen: String,
    /// Fixed positions of sensors without GPS, by sensor id.
    pub sensors: BTreeMap<String, SensorConfig>,
    /// How long SIGTERM may spend flushing in-flight work.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    pub host: String,
    pub port: u16,
    /// Filter the agent subscribes to.
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    pub host: String,
    pub port: u16,
    /// Topic prefix of the wire protocol.
    pub prefix: String,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Heartbeat period of the retained status message.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// TLS to the cloud broker; off while `ca_file` is empty.
    pub tls: TlsConfig,
}

/// Mutual TLS on the cloud link: the broker is checked against `ca_file`,
/// and the device shows `cert_file` (its identity) with `key_file`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM bundle of the CAs that sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM certificate chain of this device (empty = no client certificate).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.ca_file.as_os_str().is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Larger sensor payloads are rejected unread.
    pub max_payload_bytes: usize,
    /// Readings stamped further ahead of the board's clock are rejected.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Readings stamped further in the past are rejected (`too_old`).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Sensor ids accepted; empty = any. Others are rejected (`unknown_sensor`).
    pub allow_list: Vec<String>,
    /// After a reconnect to a broker that kept the session, readings
    /// without their own timestamp that arrive within this window are
    /// flagged as replayed (measured earlier than their arrival stamp).
    #[serde(with = "humantime_serde")]
    pub replay_window: Duration,
}

/// Preprocessing between validation and inference (see `preprocess`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Reference temperature (°C) for ppb/ppm → µg/m³.
    pub reference_temp_c: f64,
    /// Reference pressure (hPa) for ppb/ppm → µg/m³.
    pub reference_pressure_hpa: f64,
    /// A value this many times the recent median away from it is a spike;
    /// 0 = off.
    pub spike_ratio: f64,
    /// ...and at least this far from it, in the quantity's unit.
    pub spike_min_delta: f64,
    /// A value repeated unchanged this many times in a row is stuck; 0 = off.
    pub stuck_count: u32,
    /// Default aggregation window; 0 = off.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Aggregation window by sensor id.
    pub windows: BTreeMap<String, humantime_serde::Serde<Duration>>,
    /// Attach US EPA AQI values (`aqi_<pollutant>`, `aqi`) to readings.
    pub aqi: bool,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            reference_temp_c: 25.0,
            reference_pressure_hpa: 1013.25,
            spike_ratio: 4.0,
            spike_min_delta: 50.0,
            stuck_count: 30,
            window: Duration::from_secs(300),
            windows: BTreeMap::new(),
            aqi: true,
        }
    }
}

impl PreprocessConfig {
    pub fn reference(&self) -> crate::preprocess::units::Reference {
        crate::preprocess::units::Reference {
            temp_c: self.reference_temp_c,
            pressure_hpa: self.reference_pressure_hpa,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// A batch is closed when it holds this many readings...
    pub batch_max_readings: usize,
    /// ...or when its oldest reading has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_max_age: Duration,
    /// Batches sent and not yet acked, at most.
    pub max_inflight_batches: usize,
    /// A batch not acked within this time is sent again.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Share of the in-flight window the backlog may take after a
    /// reconnect; the rest is kept for the newest readings.
    pub backlog_share: f64,
    /// Batch layout on the wire.
    pub encoding: BatchEncoding,
}

/// How batches are encoded (see `aeris_wire::columnar`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchEncoding {
    /// Format version 2: columnar, delta-coded, zstd; the default.
    Columnar,
    /// Format version 1: plain postcard, for gateways older than version 2.
    Postcard,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferConfig {
    /// Run models at all.
    pub enabled: bool,
    /// Model folders (model.onnx + manifest.json) installed when their slot
    /// has no active model yet, e.g. the ones shipped with the agent.
    pub models: Vec<PathBuf>,
    /// Windows a candidate runs in shadow before it can be promoted.
    pub shadow_windows: u32,
    /// Local time offset of the board, for hour-of-day features.
    pub utc_offset_hours: f64,
    /// Spacing of each model's input series, by model name.
    pub cadence: BTreeMap<String, humantime_serde::Serde<Duration>>,
    /// Hex ed25519 public keys; when any is set, models must be signed by one.
    pub trusted_keys: Vec<String>,
    /// How often the drop folder is checked.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Largest model file accepted.
    pub max_model_bytes: u64,
}

impl Default for InferConfig {
    fn default() -> Self {
        let cadence = [("pm25_nowcast", 3600), ("pm_anomaly", 86_400)]
            .into_iter()
            .map(|(n, s)| (n.to_owned(), Duration::from_secs(s).into()))
            .collect();
        InferConfig {
            enabled: true,
            models: Vec::new(),
            shadow_windows: 24,
            utc_offset_hours: 0.0,
            cadence,
            trusted_keys: Vec::new(),
            poll_interval: Duration::from_secs(5),
            max_model_bytes: 16 << 20,
        }
    }
}

impl InferConfig {
    /// The trusted keys, parsed (`validate` has checked them).
    pub fn verifying_keys(&self) -> Result<Vec<ed25519_dalek::VerifyingKey>, String> {
        parse_keys(&self.trusted_keys)
    }
}

/// Hex ed25519 public keys, parsed.
pub fn parse_keys(keys: &[String]) -> Result<Vec<ed25519_dalek::VerifyingKey>, String> {
    keys.iter()
        .map(|k| {
            let bytes: [u8; 32] = hex::decode(k.trim())
                .map_err(|e| e.to_string())?
                .try_into()
                .map_err(|_| "an ed25519 public key is 32 bytes (64 hex digits)".to_owned())?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    pub lat: f64,
    pub lon: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device_id: "aeris-edge".into(),
            data_dir: PathBuf::from("/var/lib/aeris"),
            local: LocalConfig::default(),
            cloud: CloudConfig::default(),
            ingest: IngestConfig::default(),
            preprocess: PreprocessConfig::default(),
            uplink: UplinkConfig::default(),
            buffer: BufferConfig::default(),
            infer: InferConfig::default(),
            ota: crate::ota::OtaConfig::default(),
            health_listen: "127.0.0.1:9750".into(),
            sensors: BTreeMap::new(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            topic: "sensors/#".into(),
        }
    }
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            prefix: "aeris/v1".into(),
            keep_alive: Duration::from_secs(30),
            status_interval: Duration::from_secs(10),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_payload_bytes: 4096,
            max_future: Duration::from_secs(300),
            replay_window: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 86_400),
            allow_list: Vec::new(),
        }
    }
}

/// The on-disk buffer's budget and retention (see `buffer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Most bytes the buffer database may use; beyond it the oldest raw
    /// readings are replaced by their window aggregates, then dropped.
    pub max_bytes: u64,
    /// Acknowledged readings are kept this long, so the cloud can ask for
    /// them again (restore from backup); 0s deletes them on the ack.
    #[serde(with = "humantime_serde")]
    pub acked_grace: Duration,
    /// Readings held in memory while the buffer file cannot be written
    /// (full disk, read-only file), at most.
    pub memory_readings: usize,
    /// How often a failed buffer write is retried.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_bytes: 1 << 30,
            acked_grace: Duration::from_secs(3600),
            memory_readings: 10_000,
            retry_interval: Duration::from_secs(1),
        }
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            // Measured: 2,000 per batch moves 25-40 % more readings per
            // second than 500 (fewer acks and buffer transactions), and
            // is about 6 KB on the wire in the columnar layout.
            batch_max_readings: 2000,
            batch_max_age: Duration::from_secs(1),
            max_inflight_batches: 8,
            ack_timeout: Duration::from_secs(15),
            backlog_share: 0.5,
            encoding: BatchEncoding::Columnar,
        }
    }
}

/// Every key, its environment variable and what it means; `--help` prints
/// this and a test checks that it names every key the struct has.
pub const KEYS_HELP: &str = "\
CONFIG KEYS (TOML file; each also settable as AERIS_<KEY>, with '.' written as '__'):
  device_id                     this device's id, [A-Za-z0-9._-]{1,64} [aeris-edge]
  data_dir                      folder of the buffer database [/var/lib/aeris]
  shutdown_grace                time SIGTERM may spend flushing, e.g. \"5s\" [5s]
  health_listen                 address of /healthz, /readyz, /metrics; \"\" = off [127.0.0.1:9750]
  local.host, local.port        the board's sensor broker [127.0.0.1:1883]
  local.topic                   filter sensors publish under [sensors/#]
  cloud.host, cloud.port        the cloud broker [127.0.0.1:1883]
  cloud.prefix                  wire-protocol topic prefix [aeris/v1]
  cloud.keep_alive              MQTT keep-alive [30s]
  cloud.status_interval         heartbeat period of up/status [10s]
  cloud.tls.ca_file             PEM CA bundle the cloud broker's certificate must chain to;
                                set = TLS on the cloud link, \"\" = plain MQTT []
  cloud.tls.cert_file           PEM certificate (chain) of this device, for mutual TLS []
  cloud.tls.key_file            PEM private key of cloud.tls.cert_file []
  ingest.max_payload_bytes      larger sensor payloads are rejected [4096]
  ingest.max_future             readings stamped further ahead are rejected [5m]
  ingest.retention              readings stamped further back are rejected [7d]
  ingest.allow_list             sensor ids accepted; [] = any, else others rejected []
  ingest.replay_window          after a reconnect with a kept session, readings without their
                                own ts arriving this soon are flagged replayed (bit 5) [10s]
  preprocess.reference_temp_c   reference temperature for ppb/ppm to ug/m3, degC [25]
  preprocess.reference_pressure_hpa  reference pressure for ppb/ppm to ug/m3 [1013.25]
  preprocess.spike_ratio        spike: this many times the recent median away; 0 = off [4]
  preprocess.spike_min_delta    ...and at least this far from it, in its unit [50]
  preprocess.stuck_count        stuck: value repeated unchanged this many times; 0 = off [30]
  preprocess.window             aggregation window (mean/min/max/count); 0s = off [5m]
  preprocess.windows.<sensor>   aggregation window of one sensor []
  preprocess.aqi                attach US EPA AQI values aqi_<pollutant> and aqi [true]
  uplink.batch_max_readings     readings per batch, at most [2000]
  uplink.batch_max_age          a partial batch leaves after this wait [1s]
  uplink.max_inflight_batches   batches sent but not acked, at most [8]
  uplink.ack_timeout            an unacked batch is sent again after [15s]
  uplink.backlog_share          after a reconnect the newest readings go first; the backlog
                                drains behind them in at most this share of the in-flight
                                window (at least one batch), 0 < share <= 1 [0.5]
  uplink.encoding               batch layout: \"columnar\" (version 2, compact) or \"postcard\"
                                (version 1, for gateways that cannot read version 2) [columnar]
  buffer.max_bytes              disk budget of the buffer database; beyond it the oldest
                                raw readings become window aggregates, then are dropped [1073741824]
  buffer.acked_grace            acked readings kept this long for cloud re-send requests; 0s = none [1h]
  buffer.memory_readings        readings held in memory while the buffer cannot be written [10000]
  buffer.retry_interval         how often a failed buffer write is retried [1s]
  infer.enabled                 run models on the board [true]
  infer.models                  model folders installed when their slot is empty []
  infer.shadow_windows          windows a candidate model runs in shadow [24]
  infer.utc_offset_hours        board's local time offset, for hour features [0]
  infer.cadence.<model>         spacing of a model's input series [pm25_nowcast 1h, pm_anomaly 1d]
  infer.trusted_keys            hex ed25519 keys; when set, models must be signed []
  infer.poll_interval           how often <data_dir>/models/incoming is checked [5s]
  infer.max_model_bytes         largest model file accepted [16777216]
  ota.root                      folder of the A/B slots and the `current` link [/var/lib/aeris-edge]
  ota.trusted_keys              hex ed25519 keys an update must be signed by; none = refuse all []
  ota.trial_deadline            a new version must do real work within this, else rollback [5m]
  ota.probation                 after that, it runs this long before `current` switches to it;
                                a watchdog kill, crash or restart meanwhile boots the old slot [10m]
  ota.max_package_bytes         largest update package accepted [134217728]
  sensors.<id>.lat, .lon        fixed position of a sensor without GPS
";

/// A configuration that could not be loaded; the message names the key and
/// the file.
pub use aeris_runtime::config::ConfigError;

impl Config {
    /// Defaults, then `file` (if given; it must exist), then `AERIS_*`.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, aeris_runtime::config::env())
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let config: Config = aeris_runtime::config::load(file, env)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("invalid `{key}`: {why}")));
        if let Err(e) = aeris_wire::validate_device_id(&self.device_id) {
            return bad("device_id", e.to_string());
        }
        if let Err(e) = aeris_wire::Topics::new(&self.cloud.prefix) {
            return bad("cloud.prefix", e.to_string());
        }
        let u = &self.uplink;
        if u.batch_max_readings == 0
            || u.batch_max_readings > aeris_wire::message::MAX_BATCH_READINGS
        {
            return bad(
                "uplink.batch_max_readings",
                format!("must be 1..={}", aeris_wire::message::MAX_BATCH_READINGS),
            );
        }
        if !(u.backlog_share > 0.0 && u.backlog_share <= 1.0) {
            return bad("uplink.backlog_share", "must be > 0 and <= 1".into());
        }
        let tls = &self.cloud.tls;
        let has_identity =
            !tls.cert_file.as_os_str().is_empty() || !tls.key_file.as_os_str().is_empty();
        if has_identity && !tls.enabled() {
            return bad(
                "cloud.tls.ca_file",
                "must be set when a device certificate or key is".into(),
            );
        }
        if tls.cert_file.as_os_str().is_empty() != tls.key_file.as_os_str().is_empty() {
            return bad(
                "cloud.tls.key_file",
                "cert_file and key_file go together".into(),
            );
        }
        if u.max_inflight_batches == 0 {
            return bad("uplink.max_inflight_batches", "must be at least 1".into());
        }
        if self.buffer.max_bytes < 1 << 20 {
            return bad(
                "buffer.max_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            );
        }
        if self.buffer.memory_readings == 0 {
            return bad("buffer.memory_readings", "must be at least 1".into());
        }
        if self.buffer.retry_interval.is_zero() {
            return bad("buffer.retry_interval", "must be more than 0s".into());
        }
        if let Err(e) = self.infer.verifying_keys() {
            return bad("infer.trusted_keys", e);
        }
        if let Err(e) = parse_keys(&self.ota.trusted_keys) {
            return bad("ota.trusted_keys", e);
        }
        if !(-14.0..=14.0).contains(&self.infer.utc_offset_hours) {
            return bad("infer.utc_offset_hours", "must be within -14..=14".into());
        }
        let p = &self.preprocess;
        if !(-60.0..=60.0).contains(&p.reference_temp_c) {
            return bad(
                "preprocess.reference_temp_c",
                "must be within -60..=60".into(),
            );
        }
        if !(500.0..=1100.0).contains(&p.reference_pressure_hpa) {
            return bad(
                "preprocess.reference_pressure_hpa",
                "must be within 500..=1100".into(),
            );
        }
        if !(p.spike_ratio >= 0.0 && p.spike_min_delta >= 0.0) {
            return bad("preprocess.spike_ratio", "thresholds must be >= 0".into());
        }
        for id in &self.ingest.allow_list {
            if id.is_empty() || id.contains('/') {
                return bad("ingest.allow_list", format!("{id:?} is not a sensor id"));
            }
        }
        for (id, s) in &self.sensors {
            if !(-90.0..=90.0).contains(&s.lat) || !(-180.0..=180.0).contains(&s.lon) {
                return bad(&format!("sensors.{id}"), "lat/lon outside WGS84".into());
            }
        }
        Ok(())
    }

    /// The buffer database inside `data_dir`.
    pub fn buffer_path(&self) -> PathBuf {
        self.data_dir.join("buffer.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        let f = file(text);
        Config::load_with_env(Some(f.path()), Env::prefixed("AERIS_TEST_NONE_"))
    }

    #[test]
    fn file_overrides_defaults_and_parses_durations() {
        let c = load(
            "device_id = \"lamp-7\"\n[uplink]\nbatch_max_age = \"250ms\"\n[sensors.s1]\nlat = 52.5\nlon = 13.4\n",
        )
        .unwrap();
        assert_eq!(c.device_id, "lamp-7");
        assert_eq!(c.uplink.batch_max_age, Duration::from_millis(250));
        assert_eq!(c.uplink.batch_max_readings, 2000);
        assert_eq!(c.sensors["s1"].lat, 52.5);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load("[cloud]\nport = \"eighty\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cloud.port"), "{e}");
        let e = load("[uplink]\nbatch_max_age = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("uplink.batch_max_age"), "{e}");
        let e = load("[cloud]\nprot = 1\n").unwrap_err().to_string();
        assert!(e.contains("prot"), "{e}");
        let e = load("device_id = \"a/b\"\n").unwrap_err().to_string();
        assert!(e.contains("device_id"), "{e}");
        let e = load("[uplink]\nbatch_max_readings = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("uplink.batch_max_readings"), "{e}");
    }

    #[test]
    fn environment_overrides_file() {
        let f = file("[cloud]\nport = 1884\n");
        // Env reads the process environment; a unique prefix keeps this test
        // independent of the others.
        std::env::set_var("AERIS_CFGTEST_CLOUD__PORT", "8883");
        std::env::set_var("AERIS_CFGTEST_DEVICE_ID", "from-env");
        std::env::set_var("AERIS_CFGTEST_UNRELATED_THING", "ignored");
        let c = Config::load_with_env(Some(f.path()), Env::prefixed("AERIS_CFGTEST_")).unwrap();
        assert_eq!(c.cloud.port, 8883);
        assert_eq!(c.device_id, "from-env");
    }

    #[test]
    fn help_names_every_key() {
        let value = toml::Value::try_from(Config::default()).unwrap();
        let mut missing = vec![];
        for (k, v) in value.as_table().unwrap() {
            match v.as_table() {
                Some(t) if k != "sensors" => {
                    for sub in t.keys().filter(|s| *s != "cadence") {
                        if !KEYS_HELP.contains(&format!("{k}.{sub}")) {
                            missing.push(format!("{k}.{sub}"));
                        }
                    }
                }
                _ => {
                    if !KEYS_HELP.contains(k.as_str()) {
                        missing.push(k.clone());
                    }
                }
            }
        }
        assert!(missing.is_empty(), "not in --help: {missing:?}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/edge.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/edge.toml"));
    }
}
