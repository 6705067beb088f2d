//! Agent configuration in layers: built-in defaults, then the TOML file,
//! then the remote fragment the cloud set (`crate::fragment`, only the keys
//! an operator may change remotely), then `AERIS_*` environment variables (`AERIS_CLOUD__PORT=8883` sets
//! `cloud.port`; `__` separates levels). Unknown keys in the file are errors,
//! so a typo is named instead of silently ignored. The loader is the one
//! both binaries share ([`aeris_runtime::config`]). Each stage owns its
//! section (`ingest::config`, `uplink::config`, ...) and checks it; this
//! module only assembles them, with the few keys of the agent as a whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Env;
use serde::{Deserialize, Serialize};

pub use crate::buffer::config::BufferConfig;
pub use crate::fragment::{Fragment, Stored};
pub use crate::infer::config::InferConfig;
pub use crate::ingest::config::{IngestConfig, LocalConfig, SensorConfig};
pub use crate::keys::parse_keys;
pub use crate::ota::OtaConfig;
pub use crate::preprocess::config::PreprocessConfig;
pub use crate::uplink::config::{BatchEncoding, CloudConfig, TlsConfig, UplinkConfig};

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This device's id: its topic level and its key in the cloud database.
    pub device_id: String,
    /// The fleet groups this device is in: the cloud merges their desired
    /// configuration fragments under the device's own (issue 18).
    pub groups: Vec<String>,
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
    pub ota: OtaConfig,
    /// Local HTTP endpoint for /healthz, /readyz and /metrics; empty = off.
    pub health_listen: String,
    /// Fixed positions of sensors without GPS, by sensor id.
    pub sensors: BTreeMap<String, SensorConfig>,
    /// How long SIGTERM may spend flushing in-flight work.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device_id: "aeris-edge".into(),
            groups: Vec::new(),
            data_dir: PathBuf::from("/var/lib/aeris"),
            local: LocalConfig::default(),
            cloud: CloudConfig::default(),
            ingest: IngestConfig::default(),
            preprocess: PreprocessConfig::default(),
            uplink: UplinkConfig::default(),
            buffer: BufferConfig::default(),
            infer: InferConfig::default(),
            ota: OtaConfig::default(),
            health_listen: "127.0.0.1:9750".into(),
            sensors: BTreeMap::new(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Every key, its environment variable and what it means; `--help` prints
/// this and a test checks that it names every key the struct has.
pub const KEYS_HELP: &str = "\
CONFIG KEYS (TOML file; each also settable as AERIS_<KEY>, with '.' written as '__'):
  device_id                     this device's id, [A-Za-z0-9._-]{1,64} [aeris-edge]
  groups                        fleet groups of this device, each like a device id; the cloud's
                                desired config of each applies under the device's own []
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
  preprocess.window             window the disk budget aggregates old readings into [5m]
  preprocess.windows.<sensor>   that window for one sensor []
  preprocess.aqi                attach US EPA AQI values aqi_<pollutant> and aqi [true]
  preprocess.correction         PM2.5 correction of sensors not listed below: none,
                                epa-barkjohn-2021, epa-barkjohn-2022 [none]
  preprocess.corrections.<sensor>  that correction for one sensor []
  preprocess.sample_interval     the interval sensors sample at, for the local hourly AQI:
                                an hour is valid with 75 % of 1h / interval readings [1m]
  preprocess.correction_rh_max_age  a reading without rh uses its sensor's latest rh
                                this far apart at most; else withheld, raw kept [5m]
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
  ota.trial_deadline            a new version must do real work (sensor data taken, a batch acked,
                                a model run) within this, else rollback [45s]
  ota.ready_deadline            ...and say READY=1 (buffer open, models loaded, sensors
                                subscribed) within this, else rollback [30s]
  ota.trial_watchdog            ...and once ready, not go this long without a watchdog ping
                                (it pings every half of it while its loops answer) [20s]
  ota.probation                 after that, it runs this long before `current` switches to it;
                                a watchdog kill, crash or restart meanwhile boots the old slot [10m]
  ota.stop_grace                a stop during a trial or probation gives the new version this long
                                after SIGTERM, then SIGKILL; the old slot runs next [5s]
  ota.max_package_bytes         largest update package accepted [134217728]
  sensors.<id>.lat, .lon        fixed position of a sensor without GPS

REMOTE CONFIGURATION: the cloud may set sensors.*, ingest.allow_list, preprocess.*,
uplink.batch_max_readings, uplink.batch_max_age, infer.cadence.*, cloud.status_interval
and cloud.keep_alive; the agent keeps what it applied in <data_dir>/remote-config.toml.
All but cloud.keep_alive apply to the running stages; cloud.keep_alive restarts the
pipeline (drain, reconnect). Precedence: defaults < file < remote < environment.
";

/// A configuration that could not be loaded; the message names the key and
/// the file.
pub use aeris_runtime::config::ConfigError;

/// Where the agent's configuration comes from: the file and the
/// environment, with the remote fragment between them. Kept by the agent
/// so that a fragment from the cloud is checked exactly as the file is.
#[derive(Debug, Clone)]
pub struct Layers {
    file: Option<PathBuf>,
    /// The environment variables' prefix (`AERIS_`); a figment `Env` is
    /// not `Send`, so it is built for each load.
    env_prefix: String,
}

/// The configuration in effect and the remote fragment it includes.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The stored fragment, when it is part of `config`.
    pub remote: Option<Stored>,
    /// Why a stored fragment was left out (unreadable, or the file or
    /// environment changed so that it no longer validates): the agent runs
    /// on the file alone and reports it.
    pub remote_error: Option<String>,
}

impl Layers {
    /// `file` (if given; it must exist) and the process environment.
    pub fn new(file: Option<PathBuf>) -> Layers {
        Layers {
            file,
            env_prefix: aeris_runtime::config::ENV_PREFIX.to_owned(),
        }
    }

    /// Defaults, the file, `fragment`, the environment; validated.
    pub fn load(&self, fragment: Option<&Fragment>) -> Result<Config, ConfigError> {
        let config: Config = aeris_runtime::config::load_layered(
            self.file.as_deref(),
            fragment.map(Fragment::text),
            Some(Env::prefixed(&self.env_prefix)),
        )?;
        config.validate()?;
        Ok(config)
    }

    /// Checks `fragment` as the configuration the agent would run: over
    /// the defaults alone (so that a bad value is refused even where the
    /// environment overrides it on this board, and would surface as soon
    /// as the variable goes), then with the file and the environment.
    pub fn check(&self, fragment: &Fragment) -> Result<Config, ConfigError> {
        let alone: Config = aeris_runtime::config::load_layered(None, Some(fragment.text()), None)?;
        alone.validate()?;
        self.load(Some(fragment))
    }

    /// The configuration with the fragment stored in its data_dir, if any
    /// and if it still validates.
    pub fn load_current(&self) -> Result<Loaded, ConfigError> {
        let base = self.load(None)?;
        let (remote, remote_error) = match Stored::read(&base.data_dir) {
            Ok(None) => (None, None),
            Ok(Some(stored)) => match self.load(Some(&stored.fragment)) {
                Ok(config) => {
                    return Ok(Loaded {
                        config,
                        remote: Some(stored),
                        remote_error: None,
                    })
                }
                Err(e) => (
                    None,
                    Some(format!("stored remote version {}: {e}", stored.version)),
                ),
            },
            Err(e) => (None, Some(e)),
        };
        Ok(Loaded {
            config: base,
            remote,
            remote_error,
        })
    }
}

impl Config {
    /// Defaults, then `file` (if given; it must exist), then `AERIS_*`;
    /// without the remote fragment (see [`Layers::load_current`]).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, aeris_runtime::config::ENV_PREFIX)
    }

    fn load_with_env(file: Option<&Path>, env_prefix: &str) -> Result<Config, ConfigError> {
        Layers {
            file: file.map(Path::to_path_buf),
            env_prefix: env_prefix.to_owned(),
        }
        .load(None)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("invalid `{key}`: {why}")));
        if let Err(e) = aeris_wire::validate_device_id(&self.device_id) {
            return bad("device_id", e.to_string());
        }
        if self.groups.len() > aeris_wire::config_report::MAX_GROUPS {
            let most = aeris_wire::config_report::MAX_GROUPS;
            return bad("groups", format!("at most {most}"));
        }
        for g in &self.groups {
            if let Err(e) = aeris_wire::validate_device_id(g) {
                return bad("groups", e.to_string().replace("device id", "group"));
            }
        }
        let sections = [
            ("cloud", self.cloud.validate()),
            ("uplink", self.uplink.validate()),
            ("buffer", self.buffer.validate()),
            ("infer", self.infer.validate()),
            ("ota", self.ota.validate()),
            ("preprocess", self.preprocess.validate()),
            ("ingest", self.ingest.validate()),
        ];
        for (section, checked) in sections {
            if let Err((key, why)) = checked {
                return bad(&format!("{section}.{key}"), why);
            }
        }
        if let Err(why) = crate::health::config::validate_listen(&self.health_listen) {
            return bad("health_listen", why);
        }
        for (id, s) in &self.sensors {
            if let Err(why) = s.validate() {
                return bad(&format!("sensors.{id}"), why);
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
        Config::load_with_env(Some(f.path()), "AERIS_TEST_NONE_")
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
        // Zero would panic tokio's interval in the uplink; rumqttc refuses
        // a keep-alive under a second.
        for (text, key) in [
            (
                "[cloud]\nstatus_interval = \"0s\"\n",
                "cloud.status_interval",
            ),
            ("[cloud]\nkeep_alive = \"500ms\"\n", "cloud.keep_alive"),
            ("[cloud]\nkeep_alive = \"70000s\"\n", "cloud.keep_alive"),
            ("[ota]\nstop_grace = \"1m\"\n", "ota.stop_grace"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(load("[cloud]\nkeep_alive = \"0s\"\n").is_ok(), "0 = off");
        let e = load("health_listen = \"9750\"\n").unwrap_err().to_string();
        assert!(e.contains("health_listen") && e.contains("port"), "{e}");
    }

    #[test]
    fn environment_overrides_file() {
        let f = file("[cloud]\nport = 1884\n");
        // Env reads the process environment; a unique prefix keeps this test
        // independent of the others.
        std::env::set_var("AERIS_CFGTEST_CLOUD__PORT", "8883");
        std::env::set_var("AERIS_CFGTEST_DEVICE_ID", "from-env");
        std::env::set_var("AERIS_CFGTEST_UNRELATED_THING", "ignored");
        let c = Config::load_with_env(Some(f.path()), "AERIS_CFGTEST_").unwrap();
        assert_eq!(c.cloud.port, 8883);
        assert_eq!(c.device_id, "from-env");
    }

    /// Every key of the structs, as `section.key` (nested sections
    /// recursed; maps by id or name are written `<...>` in the help).
    fn keys(prefix: &str, table: &toml::value::Table, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = format!("{prefix}{k}");
            match v.as_table() {
                Some(t) if !["sensors", "cadence", "windows"].contains(&k.as_str()) => {
                    keys(&format!("{key}."), t, out)
                }
                _ => out.push(key),
            }
        }
    }

    #[test]
    fn help_names_every_key() {
        let value = toml::Value::try_from(Config::default()).unwrap();
        let mut all = vec![];
        keys("", value.as_table().unwrap(), &mut all);
        assert!(all.contains(&"cloud.tls.key_file".to_owned()), "{all:?}");
        let missing: Vec<_> = all
            .iter()
            .filter(|k| !KEYS_HELP.contains(k.as_str()))
            .collect();
        assert!(missing.is_empty(), "not in --help: {missing:?}");
    }

    /// File < remote fragment < environment; a fragment with a bad value
    /// fails the whole load, naming the key, as the file would.
    #[test]
    fn remote_fragment_sits_between_file_and_environment() {
        let f = file("[sensors.s1]\nlat = 1.0\nlon = 2.0\n[preprocess]\nspike_ratio = 2.0\n[uplink]\nbatch_max_readings = 10\n");
        std::env::set_var("AERIS_REMOTETEST_UPLINK__BATCH_MAX_READINGS", "20");
        let layers = Layers {
            file: Some(f.path().to_path_buf()),
            env_prefix: "AERIS_REMOTETEST_".into(),
        };
        let fragment = Fragment::parse(
            "[sensors.s1]\nlat = 5.0\nlon = 6.0\n[uplink]\nbatch_max_readings = 15\n",
        )
        .unwrap();
        let c = layers.load(Some(&fragment)).unwrap();
        assert_eq!((c.sensors["s1"].lat, c.sensors["s1"].lon), (5.0, 6.0));
        assert_eq!(
            c.preprocess.spike_ratio, 2.0,
            "file keys the fragment lacks stay"
        );
        assert_eq!(c.uplink.batch_max_readings, 20, "the environment wins");
        let bad = Fragment::parse("[sensors.s1]\nlat = 95.0\nlon = 6.0\n").unwrap();
        let e = layers.load(Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("sensors.s1"), "{e}");
        let bad = Fragment::parse("[uplink]\nbatch_max_age = \"soon\"\n").unwrap();
        let e = layers.load(Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("uplink.batch_max_age"), "{e}");
        // Refused even where the environment hides the bad value.
        let hidden = Fragment::parse("[uplink]\nbatch_max_readings = 0\n").unwrap();
        assert!(layers.load(Some(&hidden)).is_ok());
        let e = layers.check(&hidden).unwrap_err().to_string();
        assert!(e.contains("uplink.batch_max_readings"), "{e}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/edge.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/edge.toml"));
    }
}
