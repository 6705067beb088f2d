use super::*;
use crate::aqi::hourly::{hourly_means, Completeness, Sample};
use crate::aqi::PM25;
use proptest::prelude::*;

/// EPA's worked example, "Computing the NowCast" (the EPA presentation
/// AirNow-Tech links as "The NowCast Method - Provided by EPA"): the 12
/// hourly PM2.5 means, oldest first, 50 80 75 90 82 53 64 74 21 10 16 13
/// µg/m³; range 80, w = 1 − 80/90 = 0.11 < 0.5 so 0.5; NowCast 17.4 µg/m³.
#[test]
fn pm25_nowcast_reproduces_epas_worked_example() {
    let oldest_first = [
        50.0, 80.0, 75.0, 90.0, 82.0, 53.0, 64.0, 74.0, 21.0, 10.0, 16.0, 13.0,
    ];
    let recent: Vec<Option<f64>> = oldest_first.iter().rev().map(|c| Some(*c)).collect();
    assert_eq!(nowcast_pm25(&recent), Some(17.4));
    // 17.4 → Equation 1 on the 9.1–35.4 row: 49/26.3 × 8.3 + 51 = 66.46.
    assert_eq!(PM25.index(17.4), Some(66));
    // PM10 truncates to 1 µg/m³: 17.41… → 17.
    assert_eq!(nowcast_pm10(&recent), Some(17.0));
}

/// AirNow-Tech's ozone example ("AirNow Updates to Ozone Real-time
/// Reporting and Daily Reporting", 2016), in ppb, most recent first:
/// 63 69 80 74 60 (missing) 35 22; range 58, rate 0.725, w = 0.275,
/// Σ w^i c_i = 89.925. The post leaves the division open; either way
/// (with or without the missing hour's weight in the denominator,
/// 65.27 or 65.20 ppb) it truncates to 65 ppb = 0.065 ppm.
#[test]
fn o3_nowcast_reproduces_airnows_example_with_a_missing_hour() {
    let ppb = [
        Some(63.0),
        Some(69.0),
        Some(80.0),
        Some(74.0),
        Some(60.0),
        None,
        Some(35.0),
        Some(22.0),
    ];
    let w: f64 = 0.275;
    let numerator: f64 = ppb
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.map(|c| c * w.powi(i as i32)))
        .sum();
    assert_eq!((numerator * 1000.0).round() / 1000.0, 89.925);
    let ppm: Vec<Option<f64>> = ppb.iter().map(|c| c.map(|c| c / 1000.0)).collect();
    assert_eq!(nowcast_o3(&ppm), Some(0.065));
    assert!((O3_NOWCAST.nowcast_raw(&ppb).unwrap_or(0.0) - 65.272).abs() < 1e-3);
}

#[test]
fn ozone_weight_factor_has_no_floor_but_pm_has() {
    // min/max = 0.1: PM uses 0.5, O3 keeps 0.1.
    let recent = [Some(100.0), Some(10.0)];
    let pm = PM25_NOWCAST.nowcast_raw(&recent).unwrap_or(0.0);
    assert!((pm - (100.0 + 0.5 * 10.0) / 1.5).abs() < 1e-9);
    let o3 = O3_NOWCAST.nowcast_raw(&recent).unwrap_or(0.0);
    assert!((o3 - (100.0 + 0.1 * 10.0) / 1.1).abs() < 1e-9);
}

#[test]
fn nowcast_is_withheld_when_two_of_the_last_three_hours_are_missing() {
    let mut recent = vec![Some(20.0); 12];
    recent[0] = None;
    recent[2] = None;
    assert_eq!(nowcast_pm25(&recent), None);
    recent[0] = Some(20.0);
    recent[1] = None;
    assert_eq!(nowcast_pm25(&recent), None);
    // One of the three missing: reported, from the hours with data.
    recent[2] = Some(20.0);
    assert_eq!(nowcast_pm25(&recent), Some(20.0));
    assert_eq!(nowcast_pm25(&[]), None);
    assert_eq!(nowcast_o3(&[None, None, Some(0.05), Some(0.05)]), None);
}

#[test]
fn ozone_with_a_zero_hour_is_the_current_hour_alone() {
    assert_eq!(
        nowcast_o3(&[Some(0.030), Some(0.0), Some(0.050)]),
        Some(0.03)
    );
    assert_eq!(nowcast_o3(&[None, Some(0.0), Some(0.050)]), None);
}

#[test]
fn steady_air_gives_the_plain_mean_and_zero_air_zero() {
    let recent = vec![Some(12.34); 12];
    assert_eq!(nowcast_pm25(&recent), Some(12.3));
    assert_eq!(nowcast_pm25(&[Some(0.0); 12]), Some(0.0));
}

const T0: i64 = 1_700_000_000_000 / HOUR_MS * HOUR_MS;

fn full_hour(h: i64, value: f64) -> Vec<Sample> {
    (0..60)
        .map(|k| Sample {
            ts_ms: T0 + h * HOUR_MS + k * 60_000,
            value,
        })
        .collect()
}

#[test]
fn nowcast_over_hourly_means_skips_incomplete_hours() {
    let mut samples: Vec<Sample> = (0..12).flat_map(|h| full_hour(h, 10.0)).collect();
    // Hour 11 holds only 10 samples of 500: incomplete, not used.
    samples.retain(|s| s.ts_ms < T0 + 11 * HOUR_MS);
    samples.extend(full_hour(11, 500.0).into_iter().take(10));
    let hours = hourly_means(&samples, 60_000, &Completeness::default());
    assert_eq!(
        PM25_NOWCAST.nowcast_at(&hours, T0 + 11 * HOUR_MS),
        Some(10.0)
    );
}

#[test]
fn late_data_recomputes_the_hour_and_the_nowcasts_after_it() {
    let rules = Completeness::default();
    let mut samples: Vec<Sample> = (0..24)
        .filter(|h| *h != 5)
        .flat_map(|h| full_hour(h, 10.0))
        .collect();
    let last = T0 + 23 * HOUR_MS;
    let before = nowcast_series(
        &PM25_NOWCAST,
        &hourly_means(&samples, 60_000, &rules),
        T0,
        last,
    );
    // Hour 5's backlog arrives after the outage.
    samples.extend(full_hour(5, 40.0));
    let after = nowcast_series(
        &PM25_NOWCAST,
        &hourly_means(&samples, 60_000, &rules),
        T0,
        last,
    );
    let (first, end) = PM25_NOWCAST.affected_hours(T0 + 5 * HOUR_MS);
    assert_eq!(end, T0 + 16 * HOUR_MS);
    for (b, a) in before.iter().zip(&after) {
        let h = (a.hour_start_ms - T0) / HOUR_MS;
        if a.hour_start_ms < first || a.hour_start_ms > end {
            assert_eq!(a, b, "hour {h} is outside the window of hour 5");
        } else if h <= 12 {
            assert_ne!(a, b, "hour {h}");
        }
        // Hours 13..=16 weigh hour 5 by 0.5^8..0.5^11: their NowCast moves
        // by less than the 0.1 µg/m³ it is truncated to.
    }
    // Before: hour 5 missing, hours 0..=4 at 10. After: w = 10/40 → 0.5,
    // (40 + 10 × (0.5 + 0.25 + 0.125 + 0.0625 + 0.03125)) / 1.96875 = 25.24.
    assert_eq!(before[5].nowcast, Some(10.0));
    assert_eq!(after[5].nowcast, Some(25.2));
}

#[test]
fn truncation_cuts_toward_zero() {
    assert_eq!(truncate(35.49, 1), 35.4);
    assert_eq!(truncate(35.4, 1), 35.4);
    assert_eq!(truncate(54.99, 0), 54.0);
    assert_eq!(truncate(0.0709, 3), 0.07);
}

fn window() -> impl Strategy<Value = Vec<Option<f64>>> {
    prop::collection::vec(prop::option::weighted(0.8, 0.0f64..1000.0), 1..16)
}

proptest! {
    /// A weighted mean with positive weights lies between the smallest and
    /// largest value it weighs; truncation then moves it down by less than
    /// one unit of the last decimal.
    #[test]
    fn nowcast_lies_between_the_min_and_max_hourly_means_used(recent in window()) {
        for rule in [PM25_NOWCAST, PM10_NOWCAST, O3_NOWCAST] {
            let used: Vec<f64> = recent.iter().take(rule.hours).flatten().copied().collect();
            let Some(raw) = rule.nowcast_raw(&recent) else { continue };
            let min = used.iter().copied().fold(f64::INFINITY, f64::min);
            let max = used.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(raw >= min - 1e-9 && raw <= max + 1e-9, "{raw} not in [{min}, {max}]");
            let reported = rule.nowcast(&recent).unwrap_or(f64::NAN);
            let unit = 10f64.powi(-(rule.decimals as i32));
            prop_assert!(reported <= raw + 1e-6 && reported > raw - unit - 1e-9);
        }
    }
}
