//! Spike and stuck-sensor detection, per sensor and quantity.
//!
//! Invariant: detection only sets flag bits; a flagged value is stored and
//! sent like any other, so the cloud can still see (and re-judge) it.
//!
//! - Spike: the value differs from the median of the quantity's last
//!   [`HISTORY`] values (at least three needed) by more than
//!   `spike_min_delta` *and* by more than `spike_ratio` times that median
//!   (taken as at least 1). The median ignores a single earlier spike, and a
//!   lasting change of level stops being flagged once it holds the median
//!   (after three readings).
//! - Stuck: the value is bit-for-bit the one before it for the
//!   `stuck_count`-th time in a row or more (a frozen sensor repeats its
//!   last output; real signals carry noise).

use std::collections::VecDeque;
use std::hash::RandomState;

/// Values remembered per sensor and quantity for the spike median.
pub const HISTORY: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// 0 turns spike detection off.
    pub spike_ratio: f64,
    pub spike_min_delta: f64,
    /// 0 turns stuck detection off.
    pub stuck_count: u32,
}

#[derive(Debug, Default)]
pub struct Track {
    recent: VecDeque<f64>,
    last: Option<f64>,
    repeats: u32,
}

/// What a value was judged to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub spike: bool,
    pub stuck: bool,
}

/// Per (sensor, quantity) history; memory grows with the sensors and
/// quantities seen, a few dozen bytes each.
#[derive(Debug, Default)]
pub struct Quality {
    tracks: BySeries<Track>,
}

impl Quality {
    /// Judges value `v` of (`sensor`, `quantity`) and remembers it.
    pub fn check(&mut self, t: &Thresholds, sensor: &str, quantity: &str, v: f64) -> Verdict {
        self.sensor(sensor).check(t, quantity, v)
    }

    /// The tracks of `sensor`, looked up once for all of a reading's values.
    pub fn sensor(&mut self, sensor: &str) -> SensorTracks<'_> {
        SensorTracks(self.tracks.entry_ref(sensor).or_default())
    }
}

/// One sensor's tracks, by quantity.
pub struct SensorTracks<'a>(&'a mut hashbrown::HashMap<String, Track, RandomState>);

impl SensorTracks<'_> {
    /// Judges value `v` of `quantity` and remembers it.
    pub fn check(&mut self, t: &Thresholds, quantity: &str, v: f64) -> Verdict {
        let track = self.0.entry_ref(quantity).or_default();
        let mut verdict = Verdict::default();
        if t.spike_ratio > 0.0 && track.recent.len() >= 3 {
            let m = median(&track.recent);
            let d = (v - m).abs();
            verdict.spike = d > t.spike_min_delta && d > t.spike_ratio * m.abs().max(1.0);
        }
        if track.last.is_some_and(|l| l.to_bits() == v.to_bits()) {
            track.repeats += 1;
        } else {
            track.repeats = 0;
        }
        verdict.stuck = t.stuck_count > 0 && track.repeats >= t.stuck_count;
        track.last = Some(v);
        if track.recent.len() == HISTORY {
            track.recent.pop_front();
        }
        track.recent.push_back(v);
        verdict
    }
}

/// Median of at most [`HISTORY`] values, sorted on the stack.
fn median(values: &VecDeque<f64>) -> f64 {
    let mut buf = [0f64; HISTORY];
    let n = values.len().min(HISTORY);
    for (slot, v) in buf.iter_mut().zip(values) {
        *slot = *v;
    }
    let v = &mut buf[..n];
    v.sort_by(f64::total_cmp);
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per-series state by sensor, then quantity. Looked up by `&str` with
/// `entry_ref`, so a reading allocates nothing once its series are known;
/// std's `RandomState` hashing, as sensor names come from the outside.
type BySeries<T> =
    hashbrown::HashMap<String, hashbrown::HashMap<String, T, RandomState>, RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        spike_ratio: 4.0,
        spike_min_delta: 50.0,
        stuck_count: 3,
    };

    fn run(values: &[f64]) -> Vec<Verdict> {
        let mut q = Quality::default();
        values
            .iter()
            .map(|v| q.check(&T, "s", "pm25", *v))
            .collect()
    }

    #[test]
    fn a_jump_far_above_the_recent_median_is_a_spike() {
        let v = run(&[10.0, 11.0, 12.0, 400.0, 11.5, 12.5]);
        let spikes: Vec<bool> = v.iter().map(|v| v.spike).collect();
        assert_eq!(spikes, [false, false, false, true, false, false]);
    }

    #[test]
    fn small_or_relative_changes_are_not_spikes() {
        // +41 is below the minimum delta; 300 -> 420 is under 4x the median.
        let v = run(&[10.0, 11.0, 12.0, 52.0]);
        assert!(v.iter().all(|v| !v.spike), "{v:?}");
        let v = run(&[300.0, 310.0, 290.0, 420.0]);
        assert!(v.iter().all(|v| !v.spike), "{v:?}");
    }

    #[test]
    fn a_lasting_change_of_level_is_flagged_only_at_first() {
        let v = run(&[10.0, 11.0, 12.0, 400.0, 401.0, 402.0, 403.0]);
        let spikes: Vec<bool> = v.iter().map(|v| v.spike).collect();
        assert_eq!(spikes, [false, false, false, true, true, true, false]);
    }

    #[test]
    fn a_value_repeated_stuck_count_times_is_stuck_until_it_moves() {
        let v = run(&[5.0, 5.0, 5.0, 5.0, 5.0, 5.1, 5.1]);
        let stuck: Vec<bool> = v.iter().map(|v| v.stuck).collect();
        assert_eq!(stuck, [false, false, false, true, true, false, false]);
    }

    #[test]
    fn sensors_and_quantities_are_tracked_apart() {
        let mut q = Quality::default();
        for _ in 0..3 {
            q.check(&T, "a", "pm25", 10.0);
        }
        assert!(!q.check(&T, "b", "pm25", 400.0).spike);
        assert!(!q.check(&T, "a", "pm10", 400.0).spike);
        assert!(q.check(&T, "a", "pm25", 400.0).spike);
    }
}
