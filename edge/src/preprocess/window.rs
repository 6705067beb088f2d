//! Tumbling aggregation windows per sensor and quantity.
//!
//! Windows are aligned to multiples of their length since the Unix epoch
//! (a 5-minute window starts at :00, :05, ...) and driven by the readings'
//! own timestamps, not the board's clock, so a replayed backlog aggregates
//! the same as live data. A window closes when the first reading at or
//! after its end arrives; it then yields an [`Aggregate`]. A reading older
//! than its series' open window (late or out of order) is not aggregated
//! and is counted as late. Flagged values are aggregated too; `flagged`
//! says how many there were.

/// Statistics of one closed window. Later work (disk-budget downsampling)
/// stores these in place of the raw readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub sensor: String,
    pub quantity: String,
    /// `[start_ms, end_ms)`.
    pub start_ms: i64,
    pub end_ms: i64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
    /// Values in the window that carried a spike or stuck flag.
    pub flagged: u64,
}

#[derive(Debug)]
struct Open {
    start_ms: i64,
    len_ms: i64,
    sum: f64,
    min: f64,
    max: f64,
    count: u64,
    flagged: u64,
}

/// What adding a value did.
#[derive(Debug, PartialEq)]
pub enum Added {
    /// The value went into the open window.
    Open,
    /// The value closed the previous window and opened a new one.
    Closed(Aggregate),
    /// The value is older than the open window and was not aggregated.
    Late,
}

#[derive(Debug, Default)]
pub struct Windows {
    /// By sensor, then quantity.
    open: super::quality::BySeries<Option<Open>>,
}

impl Windows {
    /// Adds `v` at `ts_ms` to the `len_ms` window of (sensor, quantity).
    pub fn add(
        &mut self,
        sensor: &str,
        quantity: &str,
        len_ms: i64,
        ts_ms: i64,
        v: f64,
        flagged: bool,
    ) -> Added {
        let start = ts_ms - ts_ms.rem_euclid(len_ms);
        let fresh = || Open {
            start_ms: start,
            len_ms,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            count: 0,
            flagged: 0,
        };
        let w = super::quality::series(&mut self.open, sensor, quantity).get_or_insert_with(fresh);
        let mut result = Added::Open;
        if ts_ms < w.start_ms {
            return Added::Late;
        }
        if ts_ms >= w.start_ms + w.len_ms || w.len_ms != len_ms {
            let old = std::mem::replace(w, fresh());
            result = Added::Closed(Aggregate {
                sensor: sensor.to_owned(),
                quantity: quantity.to_owned(),
                start_ms: old.start_ms,
                end_ms: old.start_ms + old.len_ms,
                mean: old.sum / old.count as f64,
                min: old.min,
                max: old.max,
                count: old.count,
                flagged: old.flagged,
            });
        }
        w.sum += v;
        w.min = w.min.min(v);
        w.max = w.max.max(v);
        w.count += 1;
        w.flagged += u64::from(flagged);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_700_000_100_000; // a multiple of one minute

    #[test]
    fn a_window_closes_with_mean_min_max_count_when_the_next_one_starts() {
        let mut w = Windows::default();
        assert_eq!(w.add("s", "pm25", MIN, T0, 10.0, false), Added::Open);
        assert_eq!(
            w.add("s", "pm25", MIN, T0 + 20_000, 30.0, true),
            Added::Open
        );
        assert_eq!(
            w.add("s", "pm25", MIN, T0 + 59_999, 20.0, false),
            Added::Open
        );
        let Added::Closed(a) = w.add("s", "pm25", MIN, T0 + MIN, 99.0, false) else {
            panic!("window did not close");
        };
        assert_eq!(
            a,
            Aggregate {
                sensor: "s".into(),
                quantity: "pm25".into(),
                start_ms: T0,
                end_ms: T0 + MIN,
                mean: 20.0,
                min: 10.0,
                max: 30.0,
                count: 3,
                flagged: 1,
            }
        );
        // The value that closed it opened the next window.
        let Added::Closed(b) = w.add("s", "pm25", MIN, T0 + 5 * MIN, 1.0, false) else {
            panic!("second window did not close");
        };
        assert_eq!((b.start_ms, b.count, b.mean), (T0 + MIN, 1, 99.0));
    }

    #[test]
    fn windows_align_to_the_epoch_and_late_values_are_not_aggregated() {
        let mut w = Windows::default();
        assert_eq!(w.add("s", "rh", MIN, T0 + 30_000, 1.0, false), Added::Open);
        assert_eq!(w.add("s", "rh", MIN, T0 - 1, 1.0, false), Added::Late);
        let Added::Closed(a) = w.add("s", "rh", MIN, T0 + MIN, 2.0, false) else {
            panic!("window did not close");
        };
        assert_eq!((a.start_ms, a.end_ms, a.count), (T0, T0 + MIN, 1));
    }

    #[test]
    fn each_sensor_and_quantity_has_its_own_window() {
        let mut w = Windows::default();
        w.add("a", "pm25", MIN, T0, 1.0, false);
        assert_eq!(w.add("b", "pm25", MIN, T0 + MIN, 1.0, false), Added::Open);
        assert_eq!(w.add("a", "pm10", MIN, T0 + MIN, 1.0, false), Added::Open);
        assert!(matches!(
            w.add("a", "pm25", MIN, T0 + MIN, 1.0, false),
            Added::Closed(_)
        ));
    }
}
