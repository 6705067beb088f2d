use super::*;
use crate::aqi::averaging::Pollutant;
use crate::aqi::{CO, NO2, PM25};

const DAY: i64 = 19_000 * 24 * HOUR_MS;

fn hour(h: i64, mean: f64) -> HourlyMean {
    HourlyMean {
        hour_start_ms: DAY + h * HOUR_MS,
        mean,
        min: mean,
        max: mean,
        count: 60,
        expected: 60,
        valid: true,
    }
}

/// Hourly O3 in µg/m³ for `ppb(h)`, hours `0..31` of the day (into the next).
fn o3_hours(ppb: impl Fn(i64) -> Option<f64>) -> Vec<HourlyMean> {
    let r = Reference::default();
    (0..31)
        .filter_map(|h| Some(hour(h, r.ugm3_from_ppb("o3", ppb(h)?)?)))
        .collect()
}

fn day(q: &str, hours: &[HourlyMean]) -> DayRollup {
    day_rollup(
        q,
        hours,
        DAY,
        &Reference::default(),
        &Completeness::default(),
    )
    .unwrap()
}

#[test]
fn o3_day_is_its_highest_8_hour_average_beginning_7_to_23() {
    // 40 ppb, except 80 ppb 13:00–20:59: the 13:00 average is 80 ppb.
    let hours = o3_hours(|h| Some(if (13..21).contains(&h) { 80.0 } else { 40.0 }));
    let d = day("o3", &hours);
    assert!((d.value.unwrap() - 0.080).abs() < 1e-9, "{d:?}");
    assert_eq!((d.observed, d.expected, d.valid), (17, 17, true));
    assert_eq!(d.averaging, Averaging::EightHour);
    let aqi = d.aqi.unwrap();
    assert_eq!(
        (aqi.pollutant, aqi.averaging),
        (Pollutant::O3, Averaging::EightHour)
    );
    // 0.080 ppm: 0.071–0.085 → 101–150: (49/14)·(80−71)+101 = 132.5 → 133.
    assert_eq!(aqi.aqi, 133);
}

#[test]
fn the_average_beginning_at_23_reaches_into_the_next_day_and_earlier_ones_do_not_count() {
    // 120 ppb only 00:00–06:59 of this day (before the first period) and
    // 80 ppb 23:00–06:59 of the next: the day's maximum is the 23:00 one.
    let hours = o3_hours(|h| {
        Some(if h < 7 {
            120.0
        } else if h >= 23 {
            80.0
        } else {
            30.0
        })
    });
    let d = day("o3", &hours);
    assert!((d.value.unwrap() - 0.080).abs() < 1e-9, "{d:?}");
}

#[test]
fn an_o3_day_with_12_averages_is_invalid_unless_above_the_standard() {
    // Hours 08–12 missing: the averages beginning 07–10 keep fewer than 6
    // of their 8 hours, those beginning 11 and 12 keep 6 and 7: 13 of 17.
    let low = o3_hours(|h| (!(8..13).contains(&h)).then_some(50.0));
    let d = day("o3", &low);
    assert_eq!(d.observed, 13);
    assert!(d.valid);
    // Hours 08–13 missing: the one beginning 11 falls short too: 12.
    let fewer = o3_hours(|h| (!(8..14).contains(&h)).then_some(50.0));
    let d = day("o3", &fewer);
    assert_eq!(d.observed, 12);
    assert!(!d.valid);
    assert_eq!(d.aqi, None, "no index for an invalid day");
    assert!(d.value.is_some(), "the value is still reported");
    let high = o3_hours(|h| (!(8..14).contains(&h)).then_some(75.0));
    let d = day("o3", &high);
    assert_eq!(d.observed, 12);
    assert!(d.valid, "above 0.070 ppm a short day counts");
    assert!(d.aqi.is_some());
}

#[test]
fn pm_day_is_the_24_hour_mean_and_needs_18_hours() {
    let hours: Vec<HourlyMean> = (0..24).map(|h| hour(h, 10.0 + h as f64)).collect();
    let d = day("pm25", &hours);
    assert_eq!(d.value, Some(21.5));
    assert_eq!((d.observed, d.expected, d.valid), (24, 24, true));
    assert_eq!(d.aqi.unwrap().averaging, Averaging::TwentyFourHour);
    assert_eq!(d.aqi.unwrap().aqi, PM25.index(21.5).unwrap());
    let short: Vec<HourlyMean> = hours.iter().take(17).copied().collect();
    let d = day("pm25", &short);
    assert_eq!((d.observed, d.valid, d.aqi), (17, false, None));
    // Hours after midnight belong to the next day.
    let mut next = hours.clone();
    next.push(hour(24, 1000.0));
    assert_eq!(day("pm25", &next).value, Some(21.5));
    assert_eq!(
        day_rollup(
            "pm25",
            &[],
            DAY,
            &Reference::default(),
            &Completeness::default()
        ),
        None
    );
}

#[test]
fn no2_day_is_its_highest_hour_in_ppb() {
    let r = Reference::default();
    let hours: Vec<HourlyMean> = (0..24)
        .map(|h| {
            hour(
                h,
                r.ugm3_from_ppb("no2", if h == 17 { 120.0 } else { 20.0 })
                    .unwrap(),
            )
        })
        .collect();
    let d = day("no2", &hours);
    assert!((d.value.unwrap() - 120.0).abs() < 1e-9);
    assert_eq!(d.averaging, Averaging::OneHour);
    assert_eq!(d.aqi.unwrap().aqi, NO2.index(120.0).unwrap());
}

#[test]
fn co_day_is_its_highest_8_hour_average() {
    let r = Reference::default();
    let ppm = |h: i64| if (9..17).contains(&h) { 10.0 } else { 2.0 };
    let hours: Vec<HourlyMean> = (0..31)
        .map(|h| hour(h, r.ugm3_from_ppb("co", ppm(h) * 1000.0).unwrap()))
        .collect();
    let d = day("co", &hours);
    assert!((d.value.unwrap() - 10.0).abs() < 1e-9, "{d:?}");
    assert_eq!(d.aqi.unwrap().aqi, CO.index(10.0).unwrap());
}
