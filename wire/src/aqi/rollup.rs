//! The hourly rollup of one sensor and one pollutant: each hour's
//! statistics with its NowCast and its AQI on the pollutant's averaging
//! time. What the cloud stores per sensor and hour (`readings_hourly`), and
//! what the edge can compute for its own sensors: one implementation.
//!
//! Invariants:
//! - Input is the pollutant's hourly means in the unit readings are stored
//!   in (µg/m³ for every pollutant, gases converted at the edge); the
//!   NowCast and the AQI read the table's unit (µg/m³ for PM, ppm for O3
//!   and CO, ppb for NO2 and SO2), converted at a [`Reference`] (EPA's
//!   25 °C and 1013.25 hPa by default). The conversion is linear, so hourly
//!   means are converted, not samples.
//! - Only hours that hold a mean get a rollup; an hour's NowCast and AQI
//!   depend on the `window_hours(q)` hours ending with it. After late data
//!   for hour `h`, the hours `h ..= h + window_hours(q) − 1` are what
//!   changes ([`affected_until`]).
//! - Incomplete hours count as missing wherever they feed a NowCast, an
//!   8-hour or a 24-hour mean ([`super::hourly`]'s rules).

use super::averaging::{pollutant_aqis, AveragedValue, Averaging, Concentrations, PollutantAqi};
use super::hourly::{
    daily_mean, eight_hour_mean, valid_mean_at, Completeness, HourlyMean, HOUR_MS,
};
use super::nowcast::{NowCastRule, O3_NOWCAST, PM10_NOWCAST, PM25_NOWCAST};
use crate::units::Reference;

/// The quantities the cloud rolls up (the pollutant columns of `readings`).
pub const POLLUTANTS: [&str; 7] = ["pm1", "pm25", "pm10", "no2", "o3", "co", "so2"];

/// One hour of one pollutant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HourRollup {
    /// The hour's statistics, in the stored unit (µg/m³).
    pub hour: HourlyMean,
    /// The NowCast in the table's unit (µg/m³ PM, ppm O3), truncated;
    /// `None` when withheld or for a pollutant without one.
    pub nowcast: Option<f64>,
    /// The pollutant's index on its averaging time at this hour.
    pub aqi: Option<PollutantAqi>,
}

/// The NowCast rule of `quantity`, if it has one.
pub fn nowcast_rule(quantity: &str) -> Option<&'static NowCastRule> {
    match quantity {
        "pm25" => Some(&PM25_NOWCAST),
        "pm10" => Some(&PM10_NOWCAST),
        "o3" => Some(&O3_NOWCAST),
        _ => None,
    }
}

/// Hours (the current one included) an hour's NowCast and AQI of
/// `quantity` depend on: 12 for PM (NowCast), 8 for O3 (NowCast) and CO
/// (8-hour mean), 24 for SO2 (24-hour mean above 304 ppb), 1 otherwise.
pub fn window_hours(quantity: &str) -> i64 {
    match quantity {
        "pm25" | "pm10" => 12,
        "o3" | "co" => 8,
        "so2" => 24,
        _ => 1,
    }
}

/// The last hour whose rollup of `quantity` changes when hour `hour_ms`
/// changes.
pub fn affected_until(quantity: &str, hour_ms: i64) -> i64 {
    hour_ms + (window_hours(quantity) - 1) * HOUR_MS
}

/// The longest [`window_hours`] of all pollutants.
pub const MAX_WINDOW_HOURS: i64 = 24;

/// Table units per stored unit (µg/m³) of `quantity`; `None` for a
/// quantity without an AQI table.
pub(crate) fn table_factor(quantity: &str, r: &Reference) -> Option<f64> {
    match quantity {
        "pm25" | "pm10" => Some(1.0),
        "no2" | "so2" => r.ppb_from_ugm3(quantity, 1.0),
        "o3" | "co" => r.ppb_from_ugm3(quantity, 1.0).map(|ppb| ppb / 1000.0),
        _ => None,
    }
}

/// The rollups of the hours in `hours` (one pollutant `quantity` of one
/// sensor, sorted by hour, in µg/m³) from `first_ms` to `last_ms`
/// inclusive. `hours` must hold the `window_hours(quantity) − 1` hours
/// before `first_ms` too, where there are any, for their NowCasts.
pub fn rollups(
    quantity: &str,
    hours: &[HourlyMean],
    first_ms: i64,
    last_ms: i64,
    r: &Reference,
    rules: &Completeness,
) -> Vec<HourRollup> {
    let factor = table_factor(quantity, r);
    let scaled: Vec<HourlyMean> = match factor {
        Some(f) => hours
            .iter()
            .map(|h| HourlyMean {
                mean: h.mean * f,
                min: h.min * f,
                max: h.max * f,
                ..*h
            })
            .collect(),
        None => Vec::new(),
    };
    hours
        .iter()
        .filter(|h| h.hour_start_ms >= first_ms && h.hour_start_ms <= last_ms)
        .map(|h| {
            let (nowcast, aqi) = match factor {
                Some(_) => hour_aqi(quantity, &scaled, h.hour_start_ms, rules),
                None => (None, None),
            };
            HourRollup {
                hour: *h,
                nowcast,
                aqi,
            }
        })
        .collect()
}

/// The NowCast and the index of `quantity` at `hour_ms`, from hourly means
/// in the table's unit.
fn hour_aqi(
    quantity: &str,
    hours: &[HourlyMean],
    hour_ms: i64,
    rules: &Completeness,
) -> (Option<f64>, Option<PollutantAqi>) {
    let nowcast = nowcast_rule(quantity).and_then(|rule| rule.nowcast_at(hours, hour_ms));
    let as_nowcast = nowcast.map(|c| AveragedValue {
        concentration: c,
        averaging: Averaging::NowCast,
    });
    let one_hour = valid_mean_at(hours, hour_ms);
    let mut c = Concentrations::default();
    match quantity {
        "pm25" => c.pm25 = as_nowcast,
        "pm10" => c.pm10 = as_nowcast,
        "o3" => {
            c.o3_8h = as_nowcast;
            c.o3_1h = one_hour;
        }
        "co" => c.co_8h = eight_hour_mean(hours, hour_ms, rules),
        "no2" => c.no2_1h = one_hour,
        "so2" => {
            c.so2_1h = one_hour;
            c.so2_24h = daily_mean(hours, hour_ms - 23 * HOUR_MS, rules).reportable_mean();
        }
        _ => {}
    }
    (nowcast, pollutant_aqis(&c).into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aqi::hourly::{hourly_means, Sample};

    fn hour(h: i64, mean: f64, valid: bool) -> HourlyMean {
        HourlyMean {
            hour_start_ms: h * HOUR_MS,
            mean,
            min: mean,
            max: mean,
            count: if valid { 60 } else { 10 },
            expected: 60,
            valid,
        }
    }

    #[test]
    fn pm25_rollup_carries_the_epa_example_nowcast_and_its_aqi() {
        // EPA's example, oldest first: NowCast 17.4 µg/m³, AQI 66 (2024 rows).
        let means = [50., 80., 75., 90., 82., 53., 64., 74., 21., 10., 16., 13.];
        let hours: Vec<HourlyMean> = (0..12).map(|i| hour(i, means[i as usize], true)).collect();
        let out = rollups(
            "pm25",
            &hours,
            11 * HOUR_MS,
            11 * HOUR_MS,
            &Reference::default(),
            &Completeness::default(),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].nowcast, Some(17.4));
        let aqi = out[0].aqi.unwrap();
        assert_eq!((aqi.aqi, aqi.averaging), (66, Averaging::NowCast));
    }

    #[test]
    fn incomplete_hours_count_as_missing_and_o3_reads_ppm() {
        // Current and previous hour incomplete: NowCast withheld.
        let hours = vec![
            hour(0, 20.0, true),
            hour(1, 20.0, false),
            hour(2, 20.0, false),
        ];
        let r = Reference::default();
        let out = rollups("pm25", &hours, 0, 2 * HOUR_MS, &r, &Completeness::default());
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].nowcast, None);
        assert_eq!(out[2].aqi, None);
        // 100 ppb O3 as µg/m³ for three hours: NowCast 0.100 ppm.
        let ugm3 = r.ugm3_from_ppb("o3", 100.0).unwrap();
        let samples: Vec<Sample> = (0..180)
            .map(|i| Sample {
                ts_ms: i * 60_000,
                value: ugm3,
            })
            .collect();
        let hours = hourly_means(&samples, 60_000, &Completeness::default());
        let out = rollups("o3", &hours, 0, 2 * HOUR_MS, &r, &Completeness::default());
        assert_eq!(out[2].nowcast, Some(0.1));
        assert!((out[2].hour.mean - ugm3).abs() < 1e-9, "stored unit kept");
        assert!(out[2].aqi.is_some());
        assert_eq!(
            rollups("pm1", &hours, 0, 2 * HOUR_MS, &r, &Completeness::default())[2].aqi,
            None
        );
    }

    #[test]
    fn a_changed_hour_affects_the_window_after_it() {
        assert_eq!(affected_until("pm25", 0), 11 * HOUR_MS);
        assert_eq!(affected_until("o3", HOUR_MS), 8 * HOUR_MS);
        assert_eq!(affected_until("no2", HOUR_MS), HOUR_MS);
        assert!(POLLUTANTS
            .iter()
            .all(|q| window_hours(q) <= MAX_WINDOW_HOURS));
    }
}
