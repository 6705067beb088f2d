//! Building a model's input row from a sensor's recent readings.
//!
//! Feature names in a manifest say where each column comes from:
//! - `<q>_lag<k>`: quantity `q` of the reading `k` cadences before the one
//!   being scored (`k >= 1`);
//! - `<q>_d<k>`: the same with `d0` being the scored reading itself;
//! - `hour_sin`, `hour_cos`: `sin/cos(2π·h/24)` of the scored reading's local
//!   hour (`infer.utc_offset_hours`);
//! - `<q>`: quantity `q` of the scored reading.
//!
//! A past reading counts as "k cadences before" when its timestamp is within
//! half a cadence of that instant: gaps in a series make the window
//! incomplete instead of silently shifting it. Where a measured value is
//! missing, the model's own earlier output for that reading stands in (gap
//! filling).

use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq)]
pub enum Feature {
    /// Quantity `quantity`, `steps` cadences back (0 = the scored reading).
    Back {
        quantity: String,
        steps: u32,
    },
    HourSin,
    HourCos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    pub features: Vec<Feature>,
}

/// Why no row could be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// A value the model needs is not in the window.
    Input,
    /// A value is NaN or infinite.
    NonFinite,
}

impl Missing {
    pub fn reason(self) -> &'static str {
        match self {
            Missing::Input => "missing_input",
            Missing::NonFinite => "nan_input",
        }
    }
}

fn split_suffix<'a>(name: &'a str, tag: &str) -> Option<(&'a str, u32)> {
    let (q, k) = name.rsplit_once(tag)?;
    (!q.is_empty()).then_some(())?;
    Some((q, k.parse().ok()?))
}

impl FeatureSpec {
    pub fn parse(names: &[&str]) -> Result<FeatureSpec, String> {
        if names.is_empty() {
            return Err("the manifest names no input features".into());
        }
        let features = names
            .iter()
            .map(|&n| match n {
                "hour_sin" => Feature::HourSin,
                "hour_cos" => Feature::HourCos,
                _ => {
                    if let Some((q, k)) = split_suffix(n, "_lag").filter(|(_, k)| *k >= 1) {
                        Feature::Back {
                            quantity: q.to_owned(),
                            steps: k,
                        }
                    } else if let Some((q, k)) = split_suffix(n, "_d") {
                        Feature::Back {
                            quantity: q.to_owned(),
                            steps: k,
                        }
                    } else {
                        Feature::Back {
                            quantity: n.to_owned(),
                            steps: 0,
                        }
                    }
                }
            })
            .collect();
        Ok(FeatureSpec { features })
    }

    pub fn width(&self) -> usize {
        self.features.len()
    }

    /// How many cadences back the oldest feature reaches.
    pub fn depth(&self) -> u32 {
        self.features
            .iter()
            .map(|f| match f {
                Feature::Back { steps, .. } => *steps,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// The input row for the newest reading of `history`.
    pub fn row(
        &self,
        history: &History,
        cadence_ms: i64,
        utc_offset_ms: i64,
        own_output: &str,
    ) -> Result<Vec<f32>, Missing> {
        let newest = history.entries.back().ok_or(Missing::Input)?;
        let local_h = (newest.ts_ms + utc_offset_ms).rem_euclid(86_400_000) as f64 / 3_600_000.0;
        let hour = local_h.floor() * std::f64::consts::TAU / 24.0;
        let mut row = Vec::with_capacity(self.features.len());
        for f in &self.features {
            let v = match f {
                Feature::HourSin => hour.sin(),
                Feature::HourCos => hour.cos(),
                Feature::Back { quantity, steps } => {
                    let at = newest.ts_ms - i64::from(*steps) * cadence_ms;
                    let entry = history.at(at, cadence_ms / 2).ok_or(Missing::Input)?;
                    entry
                        .get(quantity)
                        .or_else(|| entry.get_prefix(own_output))
                        .ok_or(Missing::Input)?
                }
            };
            if !v.is_finite() {
                return Err(Missing::NonFinite);
            }
            row.push(v as f32);
        }
        Ok(row)
    }
}

/// One past reading of a sensor: its time and values (model outputs included).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub ts_ms: i64,
    pub values: Vec<(String, f64)>,
}

impl Entry {
    fn get(&self, q: &str) -> Option<f64> {
        self.values.iter().find(|(k, _)| k == q).map(|(_, v)| *v)
    }

    /// A model output of any version: `model:<name>@`.
    fn get_prefix(&self, prefix: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
    }
}

/// A sensor's recent readings in time order, bounded in length.
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: VecDeque<Entry>,
}

/// Most readings kept per sensor.
const MAX_HISTORY: usize = 64;

impl History {
    /// Adds a reading; an out-of-order one is placed by time.
    pub fn push(&mut self, entry: Entry) {
        let pos = self.entries.partition_point(|e| e.ts_ms <= entry.ts_ms);
        self.entries.insert(pos, entry);
        while self.entries.len() > MAX_HISTORY {
            self.entries.pop_front();
        }
    }

    /// Moves the reading at `ts_ms` to the back so rows are built for it.
    pub fn focus(&mut self, ts_ms: i64) {
        if let Some(i) = self.entries.iter().rposition(|e| e.ts_ms == ts_ms) {
            if let Some(e) = self.entries.remove(i) {
                self.entries.push_back(e);
            }
        }
    }

    /// Adds a model output to the newest entry.
    pub fn annotate_newest(&mut self, quantity: String, value: f64) {
        if let Some(e) = self.entries.back_mut() {
            e.values.push((quantity, value));
        }
    }

    fn at(&self, ts_ms: i64, slack_ms: i64) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| (e.ts_ms - ts_ms).abs() <= slack_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn entry(ts_ms: i64, pm25: Option<f64>) -> Entry {
        let mut values = vec![("temp".to_owned(), 20.0)];
        if let Some(v) = pm25 {
            values.push(("pm25".to_owned(), v));
        }
        Entry { ts_ms, values }
    }

    #[test]
    fn parses_feature_names() {
        let s =
            FeatureSpec::parse(&["pm25_lag2", "pm10_d0", "pm10_d7", "temp", "hour_sin"]).unwrap();
        assert_eq!(
            s.features[0],
            Feature::Back {
                quantity: "pm25".into(),
                steps: 2
            }
        );
        assert_eq!(
            s.features[1],
            Feature::Back {
                quantity: "pm10".into(),
                steps: 0
            }
        );
        assert_eq!(s.depth(), 7);
        assert_eq!(
            s.features[3],
            Feature::Back {
                quantity: "temp".into(),
                steps: 0
            }
        );
        assert_eq!(s.features[4], Feature::HourSin);
    }

    #[test]
    fn builds_rows_from_lags_and_refuses_gaps() {
        let spec = FeatureSpec::parse(&["pm25_lag1", "pm25_lag2", "temp", "hour_cos"]).unwrap();
        let mut h = History::default();
        for i in 0..3 {
            h.push(entry(10 * H + i * H + 60_000, Some(i as f64)));
        }
        // Scored reading at 12:01 UTC; with UTC+8 its local hour is 20.
        let row = spec.row(&h, H, 8 * H, "model:x@").unwrap();
        assert_eq!(&row[..3], &[1.0, 0.0, 20.0]);
        assert!((row[3] - (20.0 * std::f64::consts::TAU / 24.0).cos() as f32).abs() < 1e-6);
        // A missing hour makes the window incomplete.
        let mut gap = History::default();
        gap.push(entry(10 * H, Some(0.0)));
        gap.push(entry(12 * H, Some(2.0)));
        assert_eq!(spec.row(&gap, H, 0, "model:x@"), Err(Missing::Input));
    }

    #[test]
    fn a_missing_measurement_is_filled_by_the_models_earlier_output() {
        let spec = FeatureSpec::parse(&["pm25_lag1"]).unwrap();
        let mut h = History::default();
        h.push(entry(0, None));
        h.annotate_newest("model:nowcast@1.0.0".into(), 42.0);
        h.push(entry(H, None));
        assert_eq!(spec.row(&h, H, 0, "model:nowcast@").unwrap(), vec![42.0]);
        assert_eq!(spec.row(&h, H, 0, "model:other@"), Err(Missing::Input));
    }

    #[test]
    fn non_finite_values_are_refused() {
        let spec = FeatureSpec::parse(&["pm25"]).unwrap();
        let mut h = History::default();
        h.push(entry(0, Some(f64::NAN)));
        assert_eq!(spec.row(&h, H, 0, "m@"), Err(Missing::NonFinite));
    }
}
