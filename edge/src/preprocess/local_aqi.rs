//! The agent's own hourly means and NowCast AQI per sensor, for its local
//! status (`aeris_edge_sensor_aqi`) while the link to the cloud is down.
//! The cloud stays the source of truth (it sees every late reading); this
//! is the same computation from the same code, `aeris_wire::aqi`:
//! [`hourly_means`] with EPA's completeness, then [`rollup::rollups`] (the
//! NowCast for PM2.5, PM10 and O3, the other pollutants on their averaging
//! times) and [`highest`] for the overall index, exactly as the gateway's
//! rollups call them.
//!
//! Invariants:
//! - An hour is closed when a reading of a later hour arrives for the
//!   sensor; its index is computed then, once. A reading of an hour
//!   already closed is not used here (it reaches the cloud, whose rollups
//!   recompute that hour); [`LocalAqi::late`] counts them.
//! - Memory is bounded per sensor: the current hour's samples (at most
//!   [`MAX_SAMPLES_PER_HOUR`] per pollutant) and the hourly means of the
//!   last [`MAX_WINDOW_HOURS`] hours.
//! - The hour the agent starts in is partial, so it is incomplete; the
//!   NowCast (two of the last three hours valid) is withheld until two
//!   full hours have passed, as the cloud's would be for the same data.

use std::collections::{HashMap, VecDeque};

use aeris_wire::aqi::averaging::{highest, PollutantAqi};
use aeris_wire::aqi::hourly::{
    hour_start, hourly_means, Completeness, HourlyMean, Sample, HOUR_MS,
};
use aeris_wire::aqi::rollup::{self, MAX_WINDOW_HOURS, POLLUTANTS};
use aeris_wire::units::Reference;
use aeris_wire::Reading;

/// Samples kept per sensor, pollutant and hour (10 per second); more are
/// not counted.
pub const MAX_SAMPLES_PER_HOUR: usize = 36_000;

/// The index of one sensor's hour, computed when the hour closed.
#[derive(Debug, Clone, PartialEq)]
pub struct HourAqi {
    pub sensor: String,
    /// The hour's beginning, UTC ms.
    pub hour_ms: i64,
    /// The highest pollutant index on its averaging time (NowCast for PM
    /// and O3); `None` while withheld (too few valid hours).
    pub aqi: Option<PollutantAqi>,
    /// The PM2.5 NowCast, µg/m³, when there is one.
    pub nowcast_pm25: Option<f64>,
}

#[derive(Debug, Default)]
struct Series {
    samples: Vec<Sample>,
    closed: VecDeque<HourlyMean>,
}

#[derive(Debug, Default)]
struct SensorState {
    hour_ms: Option<i64>,
    series: HashMap<&'static str, Series>,
}

/// Per-sensor hourly state; no I/O, no clock: driven by readings.
#[derive(Debug)]
pub struct LocalAqi {
    interval_ms: i64,
    rules: Completeness,
    reference: Reference,
    sensors: HashMap<String, SensorState>,
    late: u64,
}

impl LocalAqi {
    /// Hours expect one sample per `interval_ms`; gases are read back to
    /// ppb/ppm at `reference`.
    pub fn new(interval_ms: i64, reference: Reference) -> LocalAqi {
        LocalAqi {
            interval_ms,
            rules: Completeness::default(),
            reference,
            sensors: HashMap::new(),
            late: 0,
        }
    }

    /// Readings of hours already closed, not used here.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Records `r`'s pollutant values (µg/m³); when `r` is its sensor's
    /// first reading of a later hour, returns the index of the hour that
    /// closed.
    pub fn record(&mut self, r: &Reading) -> Option<HourAqi> {
        let hour = hour_start(r.ts_ms);
        let state = self.sensors.entry(r.sensor.clone()).or_default();
        let mut closed = None;
        match state.hour_ms {
            Some(current) if hour < current => {
                self.late += 1;
                return None;
            }
            Some(current) if hour > current => {
                let (interval, rules, reference) = (self.interval_ms, &self.rules, &self.reference);
                closed = Some(close(state, current, interval, rules, reference, &r.sensor));
                state.hour_ms = Some(hour);
            }
            Some(_) => {}
            None => state.hour_ms = Some(hour),
        }
        for v in &r.values {
            let Some(q) = POLLUTANTS.iter().find(|q| **q == v.quantity) else {
                continue;
            };
            let s = state.series.entry(q).or_default();
            if s.samples.len() < MAX_SAMPLES_PER_HOUR {
                s.samples.push(Sample {
                    ts_ms: r.ts_ms,
                    value: v.value,
                });
            }
        }
        closed
    }
}

/// Closes `state`'s hour `hour`: its means join the series, and its index
/// is computed over the windows that end with it.
fn close(
    state: &mut SensorState,
    hour: i64,
    interval_ms: i64,
    rules: &Completeness,
    reference: &Reference,
    sensor: &str,
) -> HourAqi {
    let mut aqis = Vec::new();
    let mut nowcast_pm25 = None;
    let oldest = hour - (MAX_WINDOW_HOURS - 1) * HOUR_MS;
    for (q, s) in state.series.iter_mut() {
        s.closed
            .extend(hourly_means(&s.samples, interval_ms, rules));
        s.samples.clear();
        while s.closed.front().is_some_and(|h| h.hour_start_ms < oldest) {
            s.closed.pop_front();
        }
        let hours: Vec<HourlyMean> = s.closed.iter().copied().collect();
        for r in rollup::rollups(q, &hours, hour, hour, reference, rules) {
            if *q == "pm25" {
                nowcast_pm25 = r.nowcast;
            }
            aqis.extend(r.aqi);
        }
    }
    HourAqi {
        sensor: sensor.to_owned(),
        hour_ms: hour,
        aqi: highest(aqis),
        nowcast_pm25,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aeris_wire::aqi::averaging::{Averaging, Pollutant};
    use aeris_wire::Value;

    /// 2024-03-01T00:00:00Z.
    const T0: i64 = 1_709_251_200_000;

    fn reading(sensor: &str, ts_ms: i64, pm25: f64) -> Reading {
        Reading {
            sensor: sensor.into(),
            ts_ms,
            lat: 0.0,
            lon: 0.0,
            flags: 0,
            values: vec![Value {
                quantity: "pm25".into(),
                value: pm25,
            }],
        }
    }

    #[test]
    fn the_agent_reproduces_epas_worked_nowcast_example() {
        // EPA's example, oldest hour first: NowCast 17.4 µg/m³, AQI 66
        // with the 2024 rows (the cloud's rollup test uses the same hours).
        let means = [50., 80., 75., 90., 82., 53., 64., 74., 21., 10., 16., 13.];
        let mut local = LocalAqi::new(60_000, Reference::default());
        let mut closed = Vec::new();
        for (h, mean) in means.iter().enumerate() {
            for m in 0..60 {
                // Spread around the mean, so the hour's mean is exact.
                let v = mean + if m % 2 == 0 { 1.5 } else { -1.5 };
                let ts = T0 + h as i64 * HOUR_MS + m * 60_000;
                closed.extend(local.record(&reading("pa", ts, v)));
            }
        }
        // The next hour's first reading closes hour 11.
        closed.extend(local.record(&reading("pa", T0 + 12 * HOUR_MS, 5.0)));
        assert_eq!(closed.len(), 12);
        let last = closed.last().cloned().unwrap();
        assert_eq!(last.hour_ms, T0 + 11 * HOUR_MS);
        assert_eq!(last.nowcast_pm25, Some(17.4));
        let aqi = last.aqi.unwrap();
        assert_eq!(
            (aqi.pollutant, aqi.aqi, aqi.averaging),
            (Pollutant::Pm25, 66, Averaging::NowCast)
        );
    }

    #[test]
    fn missing_and_late_hours_withhold_nothing_they_should_not() {
        let mut local = LocalAqi::new(60_000, Reference::default());
        let full = |local: &mut LocalAqi, h: i64, v: f64| {
            (0..60)
                .filter_map(|m| local.record(&reading("s", T0 + h * HOUR_MS + m * 60_000, v)))
                .collect::<Vec<_>>()
        };
        full(&mut local, 0, 20.0);
        // Hour 1 holds 10 readings only (incomplete), hour 2 none at all.
        for m in 0..10 {
            local.record(&reading("s", T0 + HOUR_MS + m * 60_000, 20.0));
        }
        // Hour 3's first reading closes hour 1: withheld (one valid hour
        // of the last three).
        let closed = full(&mut local, 3, 20.0);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].hour_ms, T0 + HOUR_MS);
        assert_eq!(closed[0].aqi, None);
        // A late reading of hour 0 is not used and is counted.
        assert_eq!(local.record(&reading("s", T0 + 5, 500.0)), None);
        assert_eq!(local.late(), 1);
        // Hour 4 closes hour 3: hours 1, 2 invalid or missing: withheld.
        let closed = full(&mut local, 4, 20.0);
        assert_eq!(closed[0].aqi, None);
        // Hour 5 closes hour 4: hours 3 and 4 valid: a NowCast.
        let closed = full(&mut local, 5, 20.0);
        assert_eq!(closed[0].nowcast_pm25, Some(20.0));
        // Another sensor has its own hours.
        assert_eq!(local.record(&reading("t", T0, 1.0)), None);
    }
}
