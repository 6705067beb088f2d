use super::*;

const T0: i64 = 1_700_000_000_000 / HOUR_MS * HOUR_MS; // 2023-11-14 22:00 UTC
const MINUTE: i64 = 60_000;

/// `n` samples one minute apart from the start of hour `h` after `T0`.
fn hour_of(h: i64, n: i64, value: f64) -> Vec<Sample> {
    (0..n)
        .map(|k| Sample {
            ts_ms: T0 + h * HOUR_MS + k * MINUTE,
            value,
        })
        .collect()
}

#[test]
fn hours_are_labelled_by_their_utc_beginning() {
    assert_eq!(hour_start(T0 + 59 * MINUTE + 59_999), T0);
    assert_eq!(hour_start(T0 + HOUR_MS), T0 + HOUR_MS);
    assert_eq!(hour_start(-1), -HOUR_MS);
}

#[test]
fn hourly_mean_has_mean_min_max_count_and_expected() {
    let mut samples = hour_of(0, 60, 10.0);
    samples[0].value = 4.0;
    samples[1].value = 22.0;
    samples.push(Sample {
        ts_ms: T0 + HOUR_MS,
        value: 7.0,
    });
    samples.push(Sample {
        ts_ms: T0 + 2,
        value: f64::NAN,
    });
    let hours = hourly_means(&samples, MINUTE, &Completeness::default());
    assert_eq!(hours.len(), 2);
    let h = hours[0];
    assert_eq!((h.hour_start_ms, h.count, h.expected), (T0, 60, 60));
    assert_eq!((h.min, h.max), (4.0, 22.0));
    assert!((h.mean - (58.0 * 10.0 + 26.0) / 60.0).abs() < 1e-12);
    assert!(h.valid);
    assert_eq!((hours[1].count, hours[1].valid), (1, false));
}

#[test]
fn an_hour_below_75_percent_of_its_samples_is_invalid_and_excluded() {
    let rules = Completeness::default();
    let mut samples = hour_of(0, 45, 10.0); // 45/60 = 75 %: valid
    samples.extend(hour_of(1, 44, 100.0)); // 44/60: invalid
    let hours = hourly_means(&samples, MINUTE, &rules);
    assert!(hours[0].valid);
    assert!(!hours[1].valid);
    assert_eq!(valid_mean_at(&hours, T0 + HOUR_MS), None);
    let day = daily_mean(&hours, T0, &rules);
    assert_eq!((day.mean, day.valid_hours), (Some(10.0), 1));
    let lenient = Completeness {
        min_hour_fraction: 0.5,
        ..rules
    };
    assert!(hourly_means(&samples, MINUTE, &lenient)[1].valid);
}

fn day_with_valid_hours(valid: i64) -> Vec<HourlyMean> {
    let mut samples = Vec::new();
    for h in 0..24 {
        let n = if h < valid { 60 } else { 10 };
        samples.extend(hour_of(h, n, h as f64));
    }
    hourly_means(&samples, MINUTE, &Completeness::default())
}

#[test]
fn a_day_with_17_valid_hours_is_invalid_and_with_18_valid() {
    let rules = Completeness::default();
    let day = daily_mean(&day_with_valid_hours(17), T0, &rules);
    assert_eq!(day.valid_hours, 17);
    assert!(!day.valid);
    assert_eq!(day.mean, Some(8.0)); // mean of 0..=16, the valid hours only
    assert_eq!(day.reportable_mean(), None);
    let day = daily_mean(&day_with_valid_hours(18), T0, &rules);
    assert!(day.valid);
    assert_eq!(day.reportable_mean(), Some(8.5));
    let strict = Completeness {
        min_valid_hours_per_day: 20,
        ..rules
    };
    assert!(!daily_mean(&day_with_valid_hours(18), T0, &strict).valid);
}

#[test]
fn eight_hour_mean_needs_six_valid_hours() {
    let rules = Completeness::default();
    let hours = day_with_valid_hours(6);
    // Hours 0..=7 end at hour 7: six valid (0..=5), mean 2.5.
    assert_eq!(eight_hour_mean(&hours, T0 + 7 * HOUR_MS, &rules), Some(2.5));
    assert_eq!(eight_hour_mean(&hours, T0 + 8 * HOUR_MS, &rules), None);
}

#[test]
fn late_samples_for_an_earlier_hour_change_that_hours_mean() {
    let rules = Completeness::default();
    let mut samples = hour_of(0, 60, 10.0);
    samples.extend(hour_of(1, 30, 20.0));
    let before = hourly_means(&samples, MINUTE, &rules);
    assert!(!before[1].valid);
    // The backlog of hour 1 arrives after hour 2.
    samples.extend(hour_of(2, 60, 5.0));
    samples.extend((30..60).map(|k| Sample {
        ts_ms: T0 + HOUR_MS + k * MINUTE,
        value: 40.0,
    }));
    let after = hourly_means(&samples, MINUTE, &rules);
    assert_eq!(after[0], before[0]);
    assert!(after[1].valid);
    assert_eq!(after[1].mean, 30.0);
}

#[test]
fn expected_count_follows_the_interval() {
    assert_eq!(expected_per_hour(MINUTE), 60);
    assert_eq!(expected_per_hour(10_000), 360);
    assert_eq!(expected_per_hour(2 * HOUR_MS), 1);
    assert_eq!(expected_per_hour(0), 1);
}
