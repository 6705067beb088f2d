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
//! - Dual-channel sensors: a reading with `pm25_a`/`pm25_b` and no `pm25`
//!   gets their mean ([`aeris_wire::aqi::channels::fill_mean`]); the
//!   channels stay for the cloud's hourly A/B check.
//! - Correction: a sensor configured for one (`preprocess.correction`,
//!   `preprocess.corrections`) has its PM2.5 corrected after the quality
//!   checks (which judge what the sensor sent) and before the AQI (which
//!   reads the corrected value), the raw value kept beside it
//!   ([`aeris_wire::correction`]). Relative humidity comes from the same
//!   reading, else from the sensor's latest `rh` within
//!   `correction_rh_max_age`; without one the PM2.5 is withheld.
//! - [`aqi`]: US EPA AQI per pollutant (`aqi_pm25`, ...) and overall (`aqi`),
//!   attached to the reading as values.
//! - [`local_aqi`]: the agent's own hourly means and NowCast AQI per
//!   sensor (its local status), from the cloud's code in
//!   `aeris_wire::aqi`.

pub mod alerts;
pub mod aqi;
pub mod config;
pub mod local_aqi;
pub mod quality;
pub mod units;

use std::collections::HashMap;

use aeris_wire::aqi::channels;
use aeris_wire::correction::{self, Outcome};
use aeris_wire::{Event, Reading, Value};
pub use local_aqi::{HourAqi, LocalAqi};
use tokio::sync::mpsc::UnboundedSender;

pub use config::PreprocessConfig;
pub use quality::{Quality, Thresholds, Verdict};

pub use aeris_wire::flags::{FLAG_SPIKE, FLAG_STUCK};

/// Preprocessing state of the agent's ingest task.
#[derive(Debug)]
pub struct Preprocessor {
    config: PreprocessConfig,
    quality: Quality,
    /// Each corrected sensor's latest relative humidity: (ts_ms, %).
    last_rh: HashMap<String, (i64, f64)>,
    /// Hourly means and NowCast per sensor, when `aqi` is on.
    local: Option<LocalAqi>,
    /// Where a change of a sensor's local AQI category goes (`up/event`).
    alerts: Option<alerts::CategoryAlerts>,
}

/// The local hourly AQI tracker `config` asks for.
fn local_aqi(config: &PreprocessConfig) -> Option<LocalAqi> {
    config.aqi.then(|| {
        let interval = i64::try_from(config.sample_interval.as_millis()).unwrap_or(60_000);
        LocalAqi::new(interval.max(1), config.reference())
    })
}

/// What preprocessing found besides the reading's own changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Processed {
    /// What the correction did, for a sensor configured for one.
    pub correction: Option<Outcome>,
    /// The index of the sensor's hour this reading closed.
    pub hour: Option<HourAqi>,
}

impl Preprocessor {
    pub fn new(config: PreprocessConfig) -> Preprocessor {
        Preprocessor {
            quality: Quality::default(),
            last_rh: HashMap::new(),
            local: local_aqi(&config),
            alerts: None,
            config,
        }
    }

    /// Sends an `Alert` event on `tx` when a sensor's local AQI changes
    /// category ([`alerts`]).
    pub fn with_alerts(mut self, device: String, tx: UnboundedSender<Event>) -> Preprocessor {
        self.alerts = Some(alerts::CategoryAlerts::new(device, tx));
        self
    }

    /// New thresholds, corrections and references; the tracks of recent
    /// values stay, and so do the local hourly means unless what they are
    /// computed with (`aqi`, `sample_interval`, the reference) changed.
    pub fn reconfigure(&mut self, config: PreprocessConfig) {
        let c = &self.config;
        if (
            c.aqi,
            c.sample_interval,
            c.reference_temp_c,
            c.reference_pressure_hpa,
        ) != (
            config.aqi,
            config.sample_interval,
            config.reference_temp_c,
            config.reference_pressure_hpa,
        ) {
            self.local = local_aqi(&config);
        }
        self.config = config;
    }

    /// Flags, corrects and attaches AQI values to `r`, whose values are
    /// measurements in canonical units; then feeds the local hourly AQI.
    pub fn process(&mut self, r: &mut Reading) -> Processed {
        channels::fill_mean(r);
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
        let outcome = self.correct(r);
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
        let hour = self.local.as_mut().and_then(|l| l.record(r));
        if let (Some(h), Some(a)) = (&hour, self.alerts.as_mut()) {
            a.observe(h);
        }
        Processed {
            correction: outcome,
            hour,
        }
    }

    fn correct(&mut self, r: &mut Reading) -> Option<Outcome> {
        let formula = self.config.correction_of(&r.sensor)?;
        if let Some(rh) = r.values.iter().find(|v| v.quantity == "rh") {
            let newer = self
                .last_rh
                .get(&r.sensor)
                .is_none_or(|(ts, _)| *ts <= r.ts_ms);
            if newer {
                self.last_rh.insert(r.sensor.clone(), (r.ts_ms, rh.value));
            }
        }
        let max_age =
            i64::try_from(self.config.correction_rh_max_age.as_millis()).unwrap_or(i64::MAX);
        let rh = self
            .last_rh
            .get(&r.sensor)
            .filter(|(ts, _)| (r.ts_ms - ts).abs() <= max_age)
            .map(|(_, rh)| *rh);
        Some(correction::correct(r, &formula, rh))
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

    #[test]
    fn a_configured_sensor_is_corrected_with_its_recent_humidity() {
        let mut config = config();
        config.stuck_count = 0;
        config.corrections = [("s1".to_owned(), "epa-barkjohn-2021".to_owned())].into();
        let mut p = Preprocessor::new(config.clone());
        let t0 = 1_700_000_040_000;
        // PM2.5 before any humidity: withheld, raw kept, no PM2.5 AQI.
        let mut r = reading(t0, 100.0);
        assert!(matches!(
            p.process(&mut r).correction,
            Some(Outcome::Withheld(_))
        ));
        assert!(r
            .values
            .iter()
            .all(|v| v.quantity != "pm25" && v.quantity != "aqi_pm25"));
        // Humidity alone, then PM2.5 a minute later: corrected with it.
        let mut rh = reading(t0 + 1000, 0.0);
        rh.values[0].quantity = "rh".into();
        rh.values[0].value = 30.0;
        assert_eq!(p.process(&mut rh).correction, Some(Outcome::NotApplicable));
        let mut r = reading(t0 + 61_000, 100.0);
        let want = 0.524 * 100.0 - 0.0862 * 30.0 + 5.75;
        assert_eq!(
            p.process(&mut r).correction,
            Some(Outcome::Corrected {
                raw: 100.0,
                corrected: want
            })
        );
        // The AQI reads the corrected value: 55.564 → 151 (2024 rows).
        let aqi = r.values.iter().find(|v| v.quantity == "aqi_pm25");
        assert_eq!(aqi.map(|v| v.value), Some(151.0));
        // Older than correction_rh_max_age (60 s here): withheld again.
        config.correction_rh_max_age = Duration::from_secs(60);
        let mut p2 = Preprocessor::new(config);
        p2.process(&mut rh.clone());
        let mut r = reading(t0 + 62_000, 100.0);
        assert!(matches!(
            p2.process(&mut r).correction,
            Some(Outcome::Withheld(_))
        ));
        // Another sensor is left alone.
        let mut other = reading(t0, 100.0);
        other.sensor = "s2".into();
        assert_eq!(p.process(&mut other).correction, None);
        assert_eq!(other.values[0].value, 100.0);
    }

    #[test]
    fn an_unknown_correction_is_refused_by_its_key() {
        let c = PreprocessConfig {
            corrections: [("pa".to_owned(), "epa-2099".to_owned())].into(),
            ..PreprocessConfig::default()
        };
        let (key, msg) = c.validate().unwrap_err();
        assert_eq!(key, "corrections");
        assert!(
            msg.contains("epa-2099") && msg.contains("epa-barkjohn-2022"),
            "{msg}"
        );
        assert!(PreprocessConfig::default().validate().is_ok());
    }
}
