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
//! - [`window`]: tumbling windows per sensor and quantity yielding mean,
//!   min, max and count when they close.
//! - [`aqi`]: US EPA AQI per pollutant (`aqi_pm25`, ...) and overall (`aqi`),
//!   attached to the reading as values.

pub mod aqi;
pub mod config;
pub mod quality;
pub mod units;
pub mod window;

use std::time::Duration;

use aeris_wire::{Reading, Value};

pub use config::PreprocessConfig;
pub use quality::{Quality, Thresholds, Verdict};
pub use window::{Added, Aggregate, Windows};

pub use aeris_wire::flags::{FLAG_SPIKE, FLAG_STUCK};

/// What preprocessing one reading produced besides changing it.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Windows this reading closed.
    pub aggregates: Vec<Aggregate>,
    /// Values older than their series' open window (not aggregated).
    pub late: u64,
}

/// Preprocessing state of the agent's ingest task.
#[derive(Debug)]
pub struct Preprocessor {
    config: PreprocessConfig,
    quality: Quality,
    windows: Windows,
}

impl Preprocessor {
    pub fn new(config: PreprocessConfig) -> Preprocessor {
        Preprocessor {
            config,
            quality: Quality::default(),
            windows: Windows::default(),
        }
    }

    fn window_len(&self, sensor: &str) -> Duration {
        self.config
            .windows
            .get(sensor)
            .map(|d| **d)
            .unwrap_or(self.config.window)
    }

    /// Flags, aggregates and attaches AQI values to `r`, whose values are
    /// measurements in canonical units.
    pub fn process(&mut self, r: &mut Reading) -> Outcome {
        let c = &self.config;
        let t = Thresholds {
            spike_ratio: c.spike_ratio,
            spike_min_delta: c.spike_min_delta,
            stuck_count: c.stuck_count,
        };
        let len_ms = self.window_len(&r.sensor).as_millis() as i64;
        let mut out = Outcome::default();
        for v in &r.values {
            let verdict = self.quality.check(&t, &r.sensor, &v.quantity, v.value);
            if verdict.spike {
                r.flags |= FLAG_SPIKE;
            }
            if verdict.stuck {
                r.flags |= FLAG_STUCK;
            }
            if len_ms <= 0 {
                continue;
            }
            let flagged = verdict.spike || verdict.stuck;
            match self
                .windows
                .add(&r.sensor, &v.quantity, len_ms, r.ts_ms, v.value, flagged)
            {
                Added::Open => {}
                Added::Closed(a) => out.aggregates.push(a),
                Added::Late => out.late += 1,
            }
        }
        if self.config.aqi {
            let reference = self.config.reference();
            let values = r.values.iter().map(|v| (v.quantity.as_str(), v.value));
            for (quantity, index) in aqi::indices(values, &reference) {
                if r.values.len() < aeris_wire::message::MAX_VALUES_PER_READING {
                    r.values.push(Value {
                        quantity,
                        value: f64::from(index),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn per_sensor_window_overrides_the_default_and_closes_with_aggregates() {
        let mut c = config();
        c.windows
            .insert("s1".into(), Duration::from_secs(10).into());
        let mut p = Preprocessor::new(c);
        let t0 = 1_700_000_000_000;
        for (dt, v) in [(0, 1.0), (5_000, 3.0)] {
            assert!(p.process(&mut reading(t0 + dt, v)).aggregates.is_empty());
        }
        let out = p.process(&mut reading(t0 + 10_000, 7.0));
        let a = &out.aggregates[0];
        assert_eq!((a.count, a.mean, a.min, a.max), (2, 2.0, 1.0, 3.0));
        assert_eq!(a.end_ms - a.start_ms, 10_000);
        assert_eq!(p.process(&mut reading(t0 - 60_000, 7.0)).late, 1);
    }
}
