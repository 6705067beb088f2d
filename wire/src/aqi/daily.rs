//! A day's value of one pollutant and its index: what EPA's daily AQI
//! reports for a site, from the same hourly means as the rollups.
//!
//! The daily value per pollutant (TAD 2024, "daily AQI"):
//! - PM2.5, PM10: the 24-hour mean, midnight to midnight; valid with 18 of
//!   24 valid hours ([`super::hourly::daily_mean`]).
//! - O3: the daily maximum 8-hour average: the highest of the 17 8-hour
//!   averages that *begin* 07:00 … 23:00 (the last one reaches 06:59 of the
//!   next day), each valid with 6 of its 8 hours. The day is valid with 13
//!   of the 17 averages (75 %), or with fewer when its maximum is above the
//!   standard's 0.070 ppm (40 CFR Part 50, Appendix U, 3(b)). The 1-hour
//!   table applies from 0.125 ppm to the day's highest valid hour, the
//!   larger index reported, as for an hour.
//! - CO: the daily maximum 8-hour average over the same 17 periods, valid
//!   with 13 of them (our choice: 40 CFR 50 Appendix C defines running
//!   averages without a day; one rule for both 8-hour pollutants).
//! - NO2, SO2: the day's highest valid hourly mean; SO2 above 304 ppb takes
//!   the 24-hour mean's index ([`super::averaging::so2_aqi`]). Valid with 18
//!   of 24 valid hours, as a PM day (our choice).
//!
//! Invariants: input is hourly means in the stored unit (µg/m³), sorted by
//! hour, covering the day and, for O3 and CO, the next day's first 7 hours;
//! `day_start_ms` is the day's midnight (UTC, or the local standard midnight
//! the caller chose). An index is given only for a valid day; the value is
//! given whenever there is one, flagged by `valid`.

use super::averaging::{o3_aqi, pollutant_aqis, AveragedValue, Averaging, Concentrations};
use super::averaging::{so2_aqi, PollutantAqi};
use super::hourly::{daily_mean, eight_hour_mean, Completeness, HourlyMean, HOUR_MS};
use super::rollup::table_factor;
use crate::units::Reference;

/// 8-hour averages a day has: those beginning 07:00 … 23:00.
pub const EIGHT_HOUR_PERIODS: u32 = 17;
/// Of them, a day needs 13 (75 %) to be valid.
pub const MIN_EIGHT_HOUR_PERIODS: u32 = 13;
/// The 2015 O3 standard, ppm: a day whose maximum 8-hour average is above
/// it is valid however few averages it has.
pub const O3_STANDARD_PPM: f64 = 0.070;

/// One pollutant's day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DayRollup {
    pub day_start_ms: i64,
    /// The daily value in the table's unit (µg/m³ PM, ppm O3 and CO, ppb
    /// NO2 and SO2; µg/m³ for a quantity without a table), untruncated.
    pub value: Option<f64>,
    /// What `value` is: `24h` (mean), `8h` (maximum 8-hour average) or
    /// `1h` (maximum hourly mean).
    pub averaging: Averaging,
    /// Valid parts found: hours (24 h, 1 h) or 8-hour averages.
    pub observed: u32,
    /// Parts a day has: 24 or [`EIGHT_HOUR_PERIODS`].
    pub expected: u32,
    pub valid: bool,
    /// The index on the daily value, for a valid day only.
    pub aqi: Option<PollutantAqi>,
}

/// The day of `quantity` beginning `day_start_ms`; `None` for a day
/// without any valid hour.
pub fn day_rollup(
    quantity: &str,
    hours: &[HourlyMean],
    day_start_ms: i64,
    r: &Reference,
    rules: &Completeness,
) -> Option<DayRollup> {
    let factor = table_factor(quantity, r).unwrap_or(1.0);
    let hours: Vec<HourlyMean> = hours
        .iter()
        .map(|h| HourlyMean {
            mean: h.mean * factor,
            min: h.min * factor,
            max: h.max * factor,
            ..*h
        })
        .collect();
    let day = daily_mean(&hours, day_start_ms, rules);
    let (value, averaging, observed, expected, valid, aqi) = match quantity {
        "o3" | "co" => {
            let (max, n) = max_eight_hour(&hours, day_start_ms, rules);
            let above = quantity == "o3" && max.is_some_and(|m| m > O3_STANDARD_PPM);
            let valid = n >= MIN_EIGHT_HOUR_PERIODS || above;
            let reported = max.filter(|_| valid);
            let aqi = if quantity == "o3" {
                let eight = reported.map(|concentration| AveragedValue {
                    concentration,
                    averaging: Averaging::EightHour,
                });
                o3_aqi(eight, max_hour(&hours, day_start_ms).0.filter(|_| valid))
            } else {
                index_of(Concentrations {
                    co_8h: reported,
                    ..Default::default()
                })
            };
            (max, Averaging::EightHour, n, EIGHT_HOUR_PERIODS, valid, aqi)
        }
        "no2" | "so2" => {
            let (max, n) = max_hour(&hours, day_start_ms);
            let reported = max.filter(|_| day.valid);
            let aqi = if quantity == "so2" {
                so2_aqi(reported, day.reportable_mean()).filter(|_| day.valid)
            } else {
                index_of(Concentrations {
                    no2_1h: reported,
                    ..Default::default()
                })
            };
            (max, Averaging::OneHour, n, 24, day.valid, aqi)
        }
        _ => {
            let as_24h = day.reportable_mean().map(|concentration| AveragedValue {
                concentration,
                averaging: Averaging::TwentyFourHour,
            });
            let aqi = match quantity {
                "pm25" => index_of(Concentrations {
                    pm25: as_24h,
                    ..Default::default()
                }),
                "pm10" => index_of(Concentrations {
                    pm10: as_24h,
                    ..Default::default()
                }),
                _ => None,
            };
            let n = day.valid_hours;
            (day.mean, Averaging::TwentyFourHour, n, 24, day.valid, aqi)
        }
    };
    Some(DayRollup {
        day_start_ms,
        value: Some(value?),
        averaging,
        observed,
        expected,
        valid,
        aqi,
    })
}

/// The index of the one pollutant set in `c`.
fn index_of(c: Concentrations) -> Option<PollutantAqi> {
    pollutant_aqis(&c).into_iter().next()
}

/// The highest valid 8-hour average of the 17 beginning 07:00 … 23:00 of
/// the day, and how many of them are valid.
fn max_eight_hour(
    hours: &[HourlyMean],
    day_start_ms: i64,
    rules: &Completeness,
) -> (Option<f64>, u32) {
    let averages: Vec<f64> = (7..7 + i64::from(EIGHT_HOUR_PERIODS))
        .filter_map(|begin| eight_hour_mean(hours, day_start_ms + (begin + 7) * HOUR_MS, rules))
        .collect();
    let n = u32::try_from(averages.len()).unwrap_or(u32::MAX);
    (averages.into_iter().reduce(f64::max), n)
}

/// The highest valid hourly mean of the day and the number of valid hours.
fn max_hour(hours: &[HourlyMean], day_start_ms: i64) -> (Option<f64>, u32) {
    let end = day_start_ms + 24 * HOUR_MS;
    let means: Vec<f64> = hours
        .iter()
        .filter(|h| h.hour_start_ms >= day_start_ms && h.hour_start_ms < end)
        .filter_map(HourlyMean::valid_mean)
        .collect();
    let n = u32::try_from(means.len()).unwrap_or(u32::MAX);
    (means.into_iter().reduce(f64::max), n)
}

#[cfg(test)]
mod tests;
