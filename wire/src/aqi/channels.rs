//! Dual-channel QC: sensors with two PM channels (PurpleAir's A and B,
//! `pm25_a` and `pm25_b`) are checked hour by hour, and an hour whose
//! channels disagree is invalid: it counts as missing wherever hours feed
//! a NowCast or a daily mean.
//!
//! The rule (Barkjohn et al. 2021, AMT 14, 4617–4637, Sect. 3.2.3, the
//! data cleaning applied before their correction): the hour is invalid
//! when the channels' means differ by more than 5 µg/m³ AND by more than
//! 70 %, the percentage being EPA's relative difference
//! `|A − B| / ((A + B) / 2)`. Both thresholds are configurable.
//!
//! Invariants:
//! - Only an hour with both channels can be judged. An hour with one
//!   channel only is [`ChannelCheck::OneChannel`]: kept valid (there is
//!   nothing to compare; a channel that stopped reporting shows here), and
//!   not counted in the disagreement rate.
//! - Each channel's hourly mean is the mean of every value of that channel
//!   in the hour, whichever readings carried it (A and B on separate
//!   topics, at different instants, arriving out of order): the check
//!   depends on the hour's values, never on their order.
//! - A reading with channels but no combined value gets one ([`fill_mean`],
//!   at the edge): the mean of the channels it carries, as a PurpleAir
//!   reports its PM2.5.

use crate::message::{Reading, Value, MAX_VALUES_PER_READING};

/// The pollutants sensors report per channel.
pub const CHANNELLED: [&str; 3] = ["pm1", "pm25", "pm10"];

/// The names of `quantity`'s channels: `<q>_a`, `<q>_b`.
pub fn channel_names(quantity: &str) -> Option<(String, String)> {
    CHANNELLED
        .contains(&quantity)
        .then(|| (format!("{quantity}_a"), format!("{quantity}_b")))
}

/// When two channels disagree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelRule {
    /// Absolute difference above which they may disagree, µg/m³.
    pub max_abs: f64,
    /// Relative difference above which they may disagree (0.7 = 70 %).
    pub max_relative: f64,
}

impl Default for ChannelRule {
    fn default() -> Self {
        ChannelRule {
            max_abs: 5.0,
            max_relative: 0.70,
        }
    }
}

/// The outcome of one hour's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelCheck {
    Agree,
    /// Apart by more than both thresholds: the hour is invalid.
    Disagree,
    /// Only one channel had values this hour.
    OneChannel,
}

impl ChannelCheck {
    /// As stored (`readings_hourly.channel_qc`).
    pub fn label(&self) -> &'static str {
        match self {
            ChannelCheck::Agree => "ok",
            ChannelCheck::Disagree => "disagree",
            ChannelCheck::OneChannel => "one_channel",
        }
    }

    pub fn from_label(s: &str) -> Option<ChannelCheck> {
        [
            ChannelCheck::Agree,
            ChannelCheck::Disagree,
            ChannelCheck::OneChannel,
        ]
        .into_iter()
        .find(|c| c.label() == s)
    }
}

/// EPA's relative difference `|A − B| / ((A + B) / 2)`; 0 when both are 0.
pub fn relative_difference(a: f64, b: f64) -> f64 {
    let mean = (a + b) / 2.0;
    if mean == 0.0 {
        return 0.0;
    }
    ((a - b) / mean).abs()
}

impl ChannelRule {
    /// The check of an hour with channel means `a` and `b` (`None`: no
    /// value of that channel in the hour); `None` when neither has any.
    pub fn check(&self, a: Option<f64>, b: Option<f64>) -> Option<ChannelCheck> {
        match (a, b) {
            (Some(a), Some(b)) => {
                let apart =
                    (a - b).abs() > self.max_abs && relative_difference(a, b) > self.max_relative;
                Some(if apart {
                    ChannelCheck::Disagree
                } else {
                    ChannelCheck::Agree
                })
            }
            (None, None) => None,
            _ => Some(ChannelCheck::OneChannel),
        }
    }
}

/// The share of judged hours (both channels present) that disagreed;
/// `None` when no hour could be judged.
pub fn disagreement_ratio(checks: impl IntoIterator<Item = ChannelCheck>) -> Option<f64> {
    let (mut judged, mut apart) = (0u32, 0u32);
    for c in checks {
        match c {
            ChannelCheck::Agree => judged += 1,
            ChannelCheck::Disagree => {
                judged += 1;
                apart += 1;
            }
            ChannelCheck::OneChannel => {}
        }
    }
    (judged > 0).then(|| f64::from(apart) / f64::from(judged))
}

/// Adds `<q>` = the mean of the `<q>_a` / `<q>_b` values `reading` carries
/// for each channelled pollutant it has no combined value of. The channels
/// stay. Returns how many values it added.
pub fn fill_mean(reading: &mut Reading) -> usize {
    let mut added = 0;
    for q in CHANNELLED {
        let Some((a, b)) = channel_names(q) else {
            continue;
        };
        if reading.values.iter().any(|v| v.quantity == q) {
            continue;
        }
        let find = |name: &str| {
            reading
                .values
                .iter()
                .find(|v| v.quantity == name)
                .map(|v| v.value)
        };
        let mean = match (find(&a), find(&b)) {
            (Some(a), Some(b)) => (a + b) / 2.0,
            (Some(v), None) | (None, Some(v)) => v,
            (None, None) => continue,
        };
        if reading.values.len() < MAX_VALUES_PER_READING {
            reading.values.push(Value {
                quantity: q.to_owned(),
                value: mean,
            });
            added += 1;
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_is_invalid_only_past_both_thresholds() {
        let r = ChannelRule::default();
        let c = |a, b| r.check(Some(a), Some(b));
        // Within tolerance.
        assert_eq!(c(10.0, 11.0), Some(ChannelCheck::Agree));
        // 2 vs 6: 200 % apart but only 4 µg/m³.
        assert_eq!(c(2.0, 6.0), Some(ChannelCheck::Agree));
        // 100 vs 120: 20 µg/m³ but 18 %.
        assert_eq!(c(100.0, 120.0), Some(ChannelCheck::Agree));
        // One channel stuck at 0, the other at 20: 20 µg/m³ and 200 %.
        assert_eq!(c(0.0, 20.0), Some(ChannelCheck::Disagree));
        // At the edges: 5 µg/m³ is not more than 5; 70 % is not more than 70 %.
        assert_eq!(c(0.0, 5.0), Some(ChannelCheck::Agree));
        // |A − B| = 7, mean 10: exactly 70 %.
        assert_eq!(c(6.5, 13.5), Some(ChannelCheck::Agree));
        assert_eq!(c(6.4, 13.6), Some(ChannelCheck::Disagree));
        // Symmetric.
        assert_eq!(c(13.6, 6.4), Some(ChannelCheck::Disagree));
        assert_eq!(r.check(Some(3.0), None), Some(ChannelCheck::OneChannel));
        assert_eq!(r.check(None, Some(3.0)), Some(ChannelCheck::OneChannel));
        assert_eq!(r.check(None, None), None);
        assert_eq!(c(0.0, 0.0), Some(ChannelCheck::Agree));
    }

    #[test]
    fn thresholds_are_configurable() {
        let strict = ChannelRule {
            max_abs: 1.0,
            max_relative: 0.1,
        };
        assert_eq!(
            strict.check(Some(10.0), Some(12.0)),
            Some(ChannelCheck::Disagree)
        );
        assert_eq!(relative_difference(10.0, 30.0), 1.0);
    }

    #[test]
    fn the_rate_counts_judged_hours_only() {
        use ChannelCheck::*;
        assert_eq!(
            disagreement_ratio([Agree, Disagree, OneChannel, Agree, Agree]),
            Some(0.25)
        );
        assert_eq!(disagreement_ratio([OneChannel]), None);
        for c in [Agree, Disagree, OneChannel] {
            assert_eq!(ChannelCheck::from_label(c.label()), Some(c));
        }
    }

    #[test]
    fn a_reading_with_channels_gets_their_mean() {
        let mut r = Reading {
            sensor: "pa".into(),
            ts_ms: 0,
            lat: 0.0,
            lon: 0.0,
            flags: 0,
            values: ["pm25_a", "pm25_b", "pm10_b", "pm1", "pm1_a"]
                .iter()
                .zip([10.0, 20.0, 7.0, 1.0, 3.0])
                .map(|(q, v)| Value {
                    quantity: (*q).into(),
                    value: v,
                })
                .collect(),
        };
        assert_eq!(fill_mean(&mut r), 2);
        let get = |q: &str| r.values.iter().find(|v| v.quantity == q).map(|v| v.value);
        assert_eq!(get("pm25"), Some(15.0));
        assert_eq!(get("pm10"), Some(7.0), "one channel: that channel");
        assert_eq!(get("pm1"), Some(1.0), "a sent combined value stays");
        assert_eq!(get("pm25_a"), Some(10.0), "channels kept");
    }
}
