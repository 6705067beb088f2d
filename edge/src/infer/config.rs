//! `[infer]`: which models run and how candidates are checked. Imports
//! nothing from the crate but the key parser ([`crate::keys`], a leaf).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
        crate::keys::parse_keys(&self.trusted_keys)
    }

    /// `cadence` in milliseconds, as the engine takes it.
    pub fn cadence_ms(&self) -> std::collections::BTreeMap<String, i64> {
        self.cadence
            .iter()
            .map(|(k, v)| (k.clone(), v.as_millis().min(i64::MAX as u128) as i64))
            .collect()
    }

    /// Checks serde cannot express; the error names the key within `[infer]`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = self.verifying_keys() {
            return Err(("trusted_keys", e));
        }
        if !(-14.0..=14.0).contains(&self.utc_offset_hours) {
            return Err(("utc_offset_hours", "must be within -14..=14".into()));
        }
        Ok(())
    }
}
