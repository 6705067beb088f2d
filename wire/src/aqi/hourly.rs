//! Hourly means with completeness, daily means and running means, from the
//! samples of one sensor and one pollutant.
//!
//! Invariants:
//! - An hour is labelled by its beginning, in UTC Unix milliseconds
//!   (`hour_start_ms` is a multiple of 3 600 000): the hour 10:00–10:59:59.999
//!   is "10:00". AQS and AirNow label hours by their beginning too.
//! - An hour is valid when it holds at least `min_hour_fraction` (default
//!   75 %) of the samples the sensor's interval promises; only valid hours
//!   feed daily means, running means and the NowCast. An incomplete hour
//!   keeps its statistics (for display and for the rollup) but is marked.
//! - A day is valid with at least `min_valid_hours_per_day` (default 18) of
//!   its 24 hours valid; its mean is the mean of its valid hourly means.
//! - Everything is recomputed from the samples given: late data is merged
//!   into the samples by the caller and the functions run again.
//!
//! Sources: the 75 % rule and 18 of 24 hours for a daily PM value are
//! AirNow-Tech's "Daily and Hourly AQI - PM2.5" and "- PM10"
//! (forum.airnowtech.org/t/171, /t/263); 6 of 8 hours for an 8-hour average
//! is "Daily and Hourly AQI - Ozone" (forum.airnowtech.org/t/170). That the
//! same 75 % applies inside an hour (samples per hour) is our choice: EPA
//! receives hourly values from monitors and does not define it.

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// One sample: UTC Unix milliseconds and a value in the pollutant's unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub ts_ms: i64,
    pub value: f64,
}

/// The completeness rules; the defaults are EPA's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completeness {
    /// Fraction of the expected samples an hour needs to be valid (0.75).
    pub min_hour_fraction: f64,
    /// Valid hours a day needs out of 24 (18, i.e. 75 %).
    pub min_valid_hours_per_day: u32,
    /// Valid hours an 8-hour running mean needs out of 8 (6, i.e. 75 %).
    pub min_valid_hours_per_8h: u32,
}

impl Default for Completeness {
    fn default() -> Self {
        Completeness {
            min_hour_fraction: 0.75,
            min_valid_hours_per_day: 18,
            min_valid_hours_per_8h: 6,
        }
    }
}

/// The statistics of one clock hour of one sensor and pollutant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HourlyMean {
    /// The hour's beginning, UTC Unix milliseconds.
    pub hour_start_ms: i64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Finite samples in the hour.
    pub count: u32,
    /// Samples the sensor's interval promises in an hour.
    pub expected: u32,
    /// `count >= min_hour_fraction × expected`.
    pub valid: bool,
}

impl HourlyMean {
    /// `count / expected`, the hour's completeness (may exceed 1 when a
    /// sensor reports faster than its configured interval).
    pub fn completeness(&self) -> f64 {
        f64::from(self.count) / f64::from(self.expected.max(1))
    }

    /// The mean if the hour is valid.
    pub fn valid_mean(&self) -> Option<f64> {
        self.valid.then_some(self.mean)
    }
}

/// The beginning of the clock hour holding `ts_ms` (UTC, also before 1970).
pub fn hour_start(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// Samples expected in an hour at one sample per `interval_ms`; at least 1.
pub fn expected_per_hour(interval_ms: i64) -> u32 {
    if interval_ms <= 0 {
        return 1;
    }
    u32::try_from((HOUR_MS / interval_ms).max(1)).unwrap_or(u32::MAX)
}

/// The hourly means of one sensor's samples of one pollutant, one per clock
/// hour holding at least one finite sample, in hour order. The samples may
/// come in any order; non-finite values are ignored.
pub fn hourly_means(samples: &[Sample], interval_ms: i64, rules: &Completeness) -> Vec<HourlyMean> {
    let expected = expected_per_hour(interval_ms);
    let mut finite: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.value.is_finite())
        .collect();
    finite.sort_by_key(|s| s.ts_ms);
    finite
        .chunk_by(|a, b| hour_start(a.ts_ms) == hour_start(b.ts_ms))
        .map(|hour| summarize_hour(hour, expected, rules))
        .collect()
}

/// One hour's statistics; `hour` is non-empty and within one clock hour.
fn summarize_hour(hour: &[Sample], expected: u32, rules: &Completeness) -> HourlyMean {
    let count = u32::try_from(hour.len()).unwrap_or(u32::MAX);
    let sum: f64 = hour.iter().map(|s| s.value).sum();
    let min = hour.iter().map(|s| s.value).fold(f64::INFINITY, f64::min);
    let max = hour
        .iter()
        .map(|s| s.value)
        .fold(f64::NEG_INFINITY, f64::max);
    let hour_start_ms = hour.first().map_or(0, |s| hour_start(s.ts_ms));
    HourlyMean {
        hour_start_ms,
        mean: sum / hour.len().max(1) as f64,
        min,
        max,
        count,
        expected,
        valid: f64::from(count) >= rules.min_hour_fraction * f64::from(expected),
    }
}

/// The valid hourly mean labelled `hour_start_ms`, if any; `hours` sorted
/// by hour as [`hourly_means`] returns them.
pub fn valid_mean_at(hours: &[HourlyMean], hour_start_ms: i64) -> Option<f64> {
    let i = hours
        .binary_search_by_key(&hour_start_ms, |h| h.hour_start_ms)
        .ok()?;
    hours.get(i)?.valid_mean()
}

/// A day's (24 h) mean from its valid hours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DailyMean {
    /// The day's beginning (UTC midnight, or a local midnight the caller chose).
    pub day_start_ms: i64,
    /// Mean of the valid hourly means; `None` without any valid hour.
    pub mean: Option<f64>,
    pub valid_hours: u32,
    /// At least `min_valid_hours_per_day` valid hours: only then is the
    /// mean a daily value an AQI may be reported from.
    pub valid: bool,
}

impl DailyMean {
    /// The mean if the day is valid: the only daily value an AQI is
    /// reported from.
    pub fn reportable_mean(&self) -> Option<f64> {
        self.mean.filter(|_| self.valid)
    }
}

/// The mean of the 24 hours from `day_start_ms` (EPA's day runs midnight to
/// midnight local standard time: pass that midnight for a local day).
pub fn daily_mean(hours: &[HourlyMean], day_start_ms: i64, rules: &Completeness) -> DailyMean {
    let (mean, valid_hours) = mean_of_valid(hours, day_start_ms, 24);
    DailyMean {
        day_start_ms,
        mean,
        valid_hours,
        valid: valid_hours >= rules.min_valid_hours_per_day,
    }
}

/// The 8-hour running mean ending with the hour `last_hour_start_ms` (the
/// hours `last − 7 h ..= last`), if at least `min_valid_hours_per_8h` of
/// them are valid. The form EPA uses for O3 and CO.
pub fn eight_hour_mean(
    hours: &[HourlyMean],
    last_hour_start_ms: i64,
    rules: &Completeness,
) -> Option<f64> {
    let first = last_hour_start_ms - 7 * HOUR_MS;
    let (mean, valid_hours) = mean_of_valid(hours, first, 8);
    mean.filter(|_| valid_hours >= rules.min_valid_hours_per_8h)
}

/// Mean and number of the valid hourly means among the `n` hours from
/// `first_hour_ms`.
fn mean_of_valid(hours: &[HourlyMean], first_hour_ms: i64, n: i64) -> (Option<f64>, u32) {
    let end = first_hour_ms + n * HOUR_MS;
    let means: Vec<f64> = hours
        .iter()
        .filter(|h| h.hour_start_ms >= first_hour_ms && h.hour_start_ms < end)
        .filter_map(HourlyMean::valid_mean)
        .collect();
    let count = u32::try_from(means.len()).unwrap_or(u32::MAX);
    let mean = (!means.is_empty()).then(|| means.iter().sum::<f64>() / means.len() as f64);
    (mean, count)
}

#[cfg(test)]
mod tests;
