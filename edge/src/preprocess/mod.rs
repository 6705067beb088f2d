//! Preprocessing of each accepted reading, between ingest's validation and
//! inference.
//!
//! - [`units`]: every known quantity in one canonical unit (gases from
//!   ppb/ppm to µg/m³ at a stated reference temperature and pressure); the
//!   parsers call it before the physical-range check.
//! - [`quality`]: spike and stuck-sensor detection. Invariant: a suspect
//!   reading is flagged, never dropped: bit [`FLAG_SPIKE`] or
//!   [`FLAG_STUCK`] of `Reading::flags` (bit 0 is
//!   [`aeris_wire::flags::FLAG_MODEL_ANOMALY`]).
//! - [`aqi`]: US EPA AQI per pollutant (`aqi_pm25`, ...) and overall (`aqi`),
//!   attached to the reading as values.

pub mod aqi;
pub mod config;
pub mod quality;
pub mod units;

use aeris_wire::{Reading, Value};

pub use config::PreprocessConfig;
pub use quality::{Quality, Thresholds, Verdict};

pub use aeris_wire::flags::{FLAG_SPIKE, FLAG_STUCK};

/// Preprocessing state of the agent's ingest task.
#[derive(Debug)]
pub struct Preprocessor {
    config: PreprocessConfig,
    quality: Quality,
}

impl Preprocessor {
    pub fn new(config: PreprocessConfig) -> Preprocessor {
        Preprocessor {
            config,
            quality: Quality::default(),
        }
    }

    /// New thresholds and references; the tracks of recent values stay.
    pub fn reconfigure(&mut self, config: PreprocessConfig) {
        self.config = config;
    }

    /// Flags and attaches AQI values to `r`, whose values are measurements
    /// in canonical units.
    pub fn process(&mut self, r: &mut Reading) {
        let c = &self.config;
        let t = Thresholds {
            spike_ratio: c.spike_ratio,
            spike_min_delta: c.spike_min_delta,
            stuck_count: c.stuck_count,
        };
        let mut tracks = self.quality.sensor(&r.sensor);
        for v in &r.values {
            let verdict = tracks.check(&t, &v.quantity, v.value);
            if verdict.spike {
                r.flags |= FLAG_SPIKE;
            }
            if verdict.stuck {
                r.flags |= FLAG_STUCK;
            }
        }
        if self.config.aqi {
            let reference = self.config.reference();
            let values = r.values.iter().map(|v| (v.quantity.as_str(), v.value));
            let indices = aqi::indices(values, &reference);
            r.values.reserve(indices.len());
            for (quantity, index) in indices {
                if r.values.len() < aeris_wire::message::MAX_VALUES_PER_READING {
                    r.values.push(Value {
                        quantity,
                        value: f64::from(index),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reading(ts_ms: i64, pm25: f64) -> Reading {
        Reading {
            sensor: "s1".into(),
            ts_ms,
            lat: 1.0,
            lon: 2.0,
            flags: 0,
            values: vec![Value {
                quantity: "pm25".into(),
                value: pm25,
            }],
        }
    }

    fn config() -> PreprocessConfig {
        PreprocessConfig {
            stuck_count: 2,
            window: Duration::from_secs(60),
            ..PreprocessConfig::default()
        }
    }

    #[test]
    fn suspect_readings_are_flagged_and_kept_with_their_aqi() {
        let mut p = Preprocessor::new(config());
        let t0 = 1_700_000_040_000;
        let mut flags = vec![];
        for (i, v) in [10.0, 11.0, 12.0, 500.0, 12.0, 12.0, 12.0]
            .iter()
            .enumerate()
        {
            let mut r = reading(t0 + i as i64 * 1000, *v);
            p.process(&mut r);
            assert_eq!(r.values[0].value, *v, "value kept");
            let aqi: Vec<_> = r.values.iter().map(|v| v.quantity.as_str()).collect();
            assert_eq!(aqi, ["pm25", "aqi_pm25", "aqi"]);
            flags.push(r.flags);
        }
        assert_eq!(flags, [0, 0, 0, FLAG_SPIKE, 0, 0, FLAG_STUCK]);
    }
}
