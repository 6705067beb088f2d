//! EPA's NowCast: a weighted mean of the most recent valid hourly means
//! that follows quick changes and approaches a plain mean when the air is
//! steady.
//!
//! With `c_i` the valid hourly mean `i` hours before the current hour
//! (`i = 0` is the current hour) over the rule's window (12 hours for PM,
//! 8 for O3), and `c_min`, `c_max` the smallest and largest of them:
//!
//! ```text
//! w  = clamp(c_min / c_max, min_weight, 1)      (= 1 − (c_max − c_min)/c_max)
//! NC = Σ w^i c_i / Σ w^i                        (sums over hours with data)
//! ```
//!
//! then truncated (PM2.5 to 0.1 µg/m³, PM10 to 1 µg/m³, O3 to 0.001 ppm).
//! It is withheld (`None`) unless at least two of the three most recent
//! hours (`i = 0, 1, 2`) have data.
//!
//! Sources, number by number:
//! - 12 hours, the steps `range = max − min`, `rate = range / max`,
//!   `w = 1 − rate`, "if w < 0.5 set it to 0.5", the weights `w^(hours ago)`
//!   and the division by their sum: EPA, "PM NowCast" fact sheet
//!   (nepis.epa.gov, Dockey P100X0J6), steps 1–7; the same steps in the
//!   EPA presentation "The NowCast method" that AirNow-Tech links
//!   ("Computing the NowCast").
//! - "2 of the past 3 hourly data points must be valid", "the NowCast uses
//!   the raw hourly concentrations (not truncated or rounded)", "truncated to
//!   1 µg/m³ for PM10 or 0.1 µg/m³ for PM2.5", AQI "rounded to the nearest
//!   whole number": AirNow-Tech, "The NowCast for PM2.5 and PM10"
//!   (<https://forum.airnowtech.org/t/the-nowcast-for-pm2-5-and-pm10/172>).
//! - O3: 8 hours, "there is no minimum weight factor", "a maximum weight
//!   factor of 1", missing data as for PM (2 of the last 3 hours): AirNow-Tech,
//!   "AirNow Updates to Ozone Real-time Reporting and Daily Reporting",
//!   rolled out 21 April 2016 (<https://forum.airnowtech.org/t/151>). Truncation
//!   to 0.001 ppm: the TAD (EPA-454/B-24-002, May 2024) truncates every O3
//!   concentration to 3 decimals before Equation 1.
//!
//! Not implemented: since 1 August 2019 AirNow computes the ozone NowCast
//! by partial least squares on the last 336 hours (two weeks) of hourly data
//! per monitor, falling back to a surrogate regression when fewer than 252
//! hours (75 %) are present (AirNow-Tech, "The Nowcast for Ozone - 2019
//! Update", <https://forum.airnowtech.org/t/356>; code and white paper in
//! <https://github.com/USEPA/O3-Nowcast>). [`O3_NOWCAST`] is the documented
//! 2016 weighted form, which needs only 8 hours and is what this crate can
//! compute identically on the edge and in the cloud.

use super::hourly::{valid_mean_at, HourlyMean, HOUR_MS};

/// The parameters of one pollutant's NowCast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NowCastRule {
    pub quantity: &'static str,
    /// Hours in the window, the current one included.
    pub hours: usize,
    /// Floor of the weight factor (0.5 for PM, 0 for O3).
    pub min_weight: f64,
    /// Decimals the result is truncated to, in the rule's unit.
    pub decimals: u32,
}

/// PM2.5, µg/m³: 12 hours, w ≥ 0.5, truncated to 0.1.
pub const PM25_NOWCAST: NowCastRule = NowCastRule {
    quantity: "pm25",
    hours: 12,
    min_weight: 0.5,
    decimals: 1,
};

/// PM10, µg/m³: 12 hours, w ≥ 0.5, truncated to 1.
pub const PM10_NOWCAST: NowCastRule = NowCastRule {
    quantity: "pm10",
    hours: 12,
    min_weight: 0.5,
    decimals: 0,
};

/// O3, ppm: 8 hours, no floor on w, truncated to 0.001 (AirNow's 2016 form).
pub const O3_NOWCAST: NowCastRule = NowCastRule {
    quantity: "o3",
    hours: 8,
    min_weight: 0.0,
    decimals: 3,
};

/// Hours among the most recent three that must have data.
const RECENT_HOURS_NEEDED: usize = 2;

impl NowCastRule {
    /// The NowCast, truncated, of `recent[i]` = the hourly mean `i` hours
    /// ago (`None` when missing or incomplete); entries beyond the rule's
    /// window are ignored. `None` when withheld.
    pub fn nowcast(&self, recent: &[Option<f64>]) -> Option<f64> {
        self.nowcast_raw(recent).map(|c| truncate(c, self.decimals))
    }

    /// The NowCast before truncation.
    pub fn nowcast_raw(&self, recent: &[Option<f64>]) -> Option<f64> {
        let window = recent.get(..self.hours.min(recent.len()))?;
        let present_recent = window.iter().take(3).filter(|c| c.is_some()).count();
        if present_recent < RECENT_HOURS_NEEDED {
            return None;
        }
        let w = self.weight_factor(window)?;
        let (num, den) = window
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|c| (i, c)))
            .fold((0.0, 0.0), |(num, den), (i, c)| {
                let wi = w.powi(i as i32);
                (num + wi * c, den + wi)
            });
        (den > 0.0).then(|| num / den)
    }

    /// `w = clamp(min/max, min_weight, 1)` over the hours with data. When
    /// the maximum is not positive (all zero, or a sensor's negative
    /// offsets) there is no rate of change to scale: w = 1, a plain mean.
    /// For O3 (no floor) an hour at 0 makes w = 0: the NowCast is the
    /// current hour alone, and withheld when that hour is missing (0/0).
    fn weight_factor(&self, window: &[Option<f64>]) -> Option<f64> {
        let present = window.iter().flatten();
        let min = present.clone().copied().reduce(f64::min)?;
        let max = present.copied().reduce(f64::max)?;
        if max <= 0.0 {
            return Some(1.0);
        }
        Some((min / max).clamp(self.min_weight, 1.0))
    }

    /// The rule's window ending with the hour `hour_start_ms`, from hourly
    /// means sorted by hour: element `i` is the valid mean `i` hours earlier.
    pub fn window_at(&self, hours: &[HourlyMean], hour_start_ms: i64) -> Vec<Option<f64>> {
        (0..self.hours as i64)
            .map(|i| valid_mean_at(hours, hour_start_ms - i * HOUR_MS))
            .collect()
    }

    /// The NowCast for the hour `hour_start_ms`, from hourly means.
    pub fn nowcast_at(&self, hours: &[HourlyMean], hour_start_ms: i64) -> Option<f64> {
        self.nowcast(&self.window_at(hours, hour_start_ms))
    }

    /// The hours whose NowCast uses the hour `hour_start_ms`: it and the
    /// `hours − 1` after it. What a late sample for that hour invalidates.
    pub fn affected_hours(&self, hour_start_ms: i64) -> (i64, i64) {
        let last = hour_start_ms + (self.hours as i64 - 1) * HOUR_MS;
        (hour_start_ms, last)
    }
}

/// One hour's NowCast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HourlyNowCast {
    pub hour_start_ms: i64,
    /// Truncated; `None` when withheld.
    pub nowcast: Option<f64>,
}

/// The NowCast of every hour from `first_hour_ms` to `last_hour_ms`
/// (inclusive, hour-beginning labels), recomputed from the hourly means:
/// after late data, recompute the means and call this for the rule's
/// [`NowCastRule::affected_hours`].
pub fn nowcast_series(
    rule: &NowCastRule,
    hours: &[HourlyMean],
    first_hour_ms: i64,
    last_hour_ms: i64,
) -> Vec<HourlyNowCast> {
    let first = super::hourly::hour_start(first_hour_ms);
    let n = (last_hour_ms - first).div_euclid(HOUR_MS) + 1;
    (0..n.max(0))
        .map(|k| first + k * HOUR_MS)
        .map(|hour_start_ms| HourlyNowCast {
            hour_start_ms,
            nowcast: rule.nowcast_at(hours, hour_start_ms),
        })
        .collect()
}

/// PM2.5 NowCast (µg/m³, truncated to 0.1) of `recent[i]` = hourly mean `i`
/// hours ago.
pub fn nowcast_pm25(recent: &[Option<f64>]) -> Option<f64> {
    PM25_NOWCAST.nowcast(recent)
}

/// PM10 NowCast (µg/m³, truncated to 1).
pub fn nowcast_pm10(recent: &[Option<f64>]) -> Option<f64> {
    PM10_NOWCAST.nowcast(recent)
}

/// O3 NowCast (ppm, truncated to 0.001), AirNow's 2016 8-hour form.
pub fn nowcast_o3(recent: &[Option<f64>]) -> Option<f64> {
    O3_NOWCAST.nowcast(recent)
}

/// `c` truncated toward zero to `decimals` decimals. The epsilon keeps a
/// value stored as 35.39999… at 35.4, as [`super::Table::index`] does.
pub fn truncate(c: f64, decimals: u32) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    (c * scale + 1e-6).trunc() / scale
}

#[cfg(test)]
mod tests;
