//! `rollups`: how the gateway keeps the hourly rollups (`readings_hourly`,
//! PostGIS only; see [`crate::rollups`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupsConfig {
    /// Hours marked by writes are recomputed this often: the debounce (a
    /// busy hour is recomputed once per period, not once per batch) and
    /// the longest a rollup lags behind its readings when all is well.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Marked hours recomputed per transaction, at most (a round repeats
    /// at once while there are more).
    pub max_hours_per_round: u32,
    /// The interval sensors sample at: an hour expects
    /// `1h / sample_interval` readings and is valid with 75 % of them.
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// Sample interval per sensor id, where it differs.
    pub sensor_intervals: BTreeMap<String, humantime_serde::Serde<Duration>>,
    /// Two-channel sensors (`pm25_a`/`pm25_b`): an hour is invalid when
    /// the channels' means differ by more than this (µg/m³)...
    pub channel_max_abs: f64,
    /// ...and by more than this share of their mean (0.7 = 70 %).
    pub channel_max_relative: f64,
    /// The window the channel disagreement ratio is computed over.
    #[serde(with = "humantime_serde")]
    pub degrading_window: Duration,
    /// A sensor whose channels disagreed in more than this share of the
    /// judged hours of the window is reported as degrading.
    pub degrading_ratio: f64,
}

impl Default for RollupsConfig {
    fn default() -> Self {
        RollupsConfig {
            every: Duration::from_secs(10),
            max_hours_per_round: 1000,
            sample_interval: Duration::from_secs(60),
            sensor_intervals: BTreeMap::new(),
            channel_max_abs: 5.0,
            channel_max_relative: 0.70,
            degrading_window: Duration::from_secs(24 * 3600),
            degrading_ratio: 0.25,
        }
    }
}

impl RollupsConfig {
    /// The checks serde cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.every < Duration::from_secs(1) {
            return Err("invalid `rollups.every`: must be at least 1s".into());
        }
        if self.max_hours_per_round == 0 {
            return Err("invalid `rollups.max_hours_per_round`: must be at least 1".into());
        }
        let bad = |d: &Duration| d.is_zero() || *d > Duration::from_secs(3600);
        if bad(&self.sample_interval) {
            return Err(
                "invalid `rollups.sample_interval`: must be more than 0 and at most 1h".into(),
            );
        }
        if !(self.channel_max_abs >= 0.0 && self.channel_max_relative >= 0.0) {
            return Err(
                "invalid `rollups.channel_max_abs` / `channel_max_relative`: must be >= 0".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.degrading_ratio) {
            return Err("invalid `rollups.degrading_ratio`: must be within 0..=1".into());
        }
        if self.degrading_window < Duration::from_secs(3600) {
            return Err("invalid `rollups.degrading_window`: must be at least 1h".into());
        }
        if let Some((sensor, _)) = self.sensor_intervals.iter().find(|(_, d)| bad(d)) {
            return Err(format!(
                "invalid `rollups.sensor_intervals.{sensor}`: must be more than 0 and at most 1h"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_intervals_read_as_durations_and_bad_ones_name_their_key() {
        let c: RollupsConfig =
            toml::from_str("sample_interval = \"30s\"\nsensor_intervals = { s1 = \"10s\" }\n")
                .unwrap();
        assert_eq!(c.sample_interval, Duration::from_secs(30));
        assert_eq!(*c.sensor_intervals["s1"], Duration::from_secs(10));
        assert!(c.validate().is_ok());
        let bad: RollupsConfig = toml::from_str("sensor_intervals = { s2 = \"2h\" }\n").unwrap();
        let e = bad.validate().unwrap_err();
        assert!(e.contains("rollups.sensor_intervals.s2"), "{e}");
        assert!(RollupsConfig::default().validate().is_ok());
    }
}
