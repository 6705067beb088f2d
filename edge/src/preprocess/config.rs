//! `[preprocess]`: unit references, quality thresholds, windows and AQI.
//! Imports nothing else from the crate.

use std::collections::BTreeMap;
use std::time::Duration;

use aeris_wire::correction::Formula;
use serde::{Deserialize, Serialize};

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
    /// The window the disk budget aggregates the oldest raw readings into
    /// (mean, min, max, count); 0 = its 5-minute default.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// That window by sensor id.
    pub windows: BTreeMap<String, humantime_serde::Serde<Duration>>,
    /// Attach US EPA AQI values (`aqi_<pollutant>`, `aqi`) to readings.
    pub aqi: bool,
    /// The PM2.5 correction of sensors not listed in `corrections`:
    /// `"none"`, `"epa-barkjohn-2021"` or `"epa-barkjohn-2022"`
    /// (`aeris_wire::correction`).
    pub correction: String,
    /// The correction by sensor id, where it differs.
    pub corrections: BTreeMap<String, String>,
    /// A reading without its own `rh` is corrected with its sensor's
    /// latest `rh` from another message if that is at most this far
    /// apart in time; else its PM2.5 is withheld (raw kept).
    #[serde(with = "humantime_serde")]
    pub correction_rh_max_age: Duration,
    /// The interval sensors sample at, for the local hourly AQI: an hour
    /// expects `1h / sample_interval` readings and is valid with 75 %
    /// (the gateway's `rollups.sample_interval`).
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
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
            correction: "none".into(),
            corrections: BTreeMap::new(),
            correction_rh_max_age: Duration::from_secs(300),
            sample_interval: Duration::from_secs(60),
        }
    }
}

impl PreprocessConfig {
    /// Checks serde cannot express; the error names the key within
    /// `[preprocess]`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(-60.0..=60.0).contains(&self.reference_temp_c) {
            return Err(("reference_temp_c", "must be within -60..=60".into()));
        }
        if !(500.0..=1100.0).contains(&self.reference_pressure_hpa) {
            return Err(("reference_pressure_hpa", "must be within 500..=1100".into()));
        }
        if !(self.spike_ratio >= 0.0 && self.spike_min_delta >= 0.0) {
            return Err(("spike_ratio", "thresholds must be >= 0".into()));
        }
        if self.sample_interval.is_zero() || self.sample_interval > Duration::from_secs(3600) {
            return Err((
                "sample_interval",
                "must be more than 0 and at most 1h".into(),
            ));
        }
        let known = |name: &str| name == "none" || Formula::parse(name).is_some();
        let names = std::iter::once(&self.correction).chain(self.corrections.values());
        if let Some(bad) = names.into_iter().find(|n| !known(n)) {
            let all: Vec<&str> = Formula::ALL.iter().map(|f| f.name()).collect();
            return Err((
                "corrections",
                format!(
                    "unknown correction {bad:?} (known: none, {})",
                    all.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The correction configured for `sensor`, if any.
    pub fn correction_of(&self, sensor: &str) -> Option<Formula> {
        let name = self.corrections.get(sensor).unwrap_or(&self.correction);
        Formula::parse(name)
    }
}
