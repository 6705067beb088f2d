//! `[local]`, `[ingest]` and `[sensors]`: where sensors publish and what
//! ingest accepts from them. Imports nothing else from the crate.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The board's local broker, where sensors publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    pub host: String,
    pub port: u16,
    /// Filter the agent subscribes to.
    pub topic: String,
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

impl IngestConfig {
    /// Checks serde cannot express; the error names the key within `[ingest]`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for id in &self.allow_list {
            if id.is_empty() || id.contains('/') {
                return Err(("allow_list", format!("{id:?} is not a sensor id")));
            }
        }
        Ok(())
    }
}

/// Fixed position of a sensor without GPS (`[sensors.<id>]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    pub lat: f64,
    pub lon: f64,
}

impl SensorConfig {
    /// The position lies within WGS84.
    pub fn validate(&self) -> Result<(), String> {
        if !(-90.0..=90.0).contains(&self.lat) || !(-180.0..=180.0).contains(&self.lon) {
            return Err("lat/lon outside WGS84".into());
        }
        Ok(())
    }
}
