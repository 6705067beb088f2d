//! `retention`: how long each table's rows are kept and how the gateway
//! keeps the partitions of `readings` (see [`crate::retention`]).
//!
//! Only raw readings expire. Every other table is kept forever: devices,
//! the audit log, dead letters, and the hourly rollups (`readings_hourly`),
//! since they are what stays of the raw data.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long rows are kept: `"forever"` or a duration (`"400d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Forever,
    For(Duration),
}

impl Keep {
    /// The duration, `None` for forever.
    pub fn duration(self) -> Option<Duration> {
        match self {
            Keep::Forever => None,
            Keep::For(d) => Some(d),
        }
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Forever => f.write_str("forever"),
            Keep::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl TryFrom<String> for Keep {
    type Error = String;
    fn try_from(s: String) -> Result<Keep, String> {
        if s.trim() == "forever" {
            return Ok(Keep::Forever);
        }
        humantime::parse_duration(s.trim())
            .map(Keep::For)
            .map_err(|e| format!("`{s}` is neither \"forever\" nor a duration like \"400d\": {e}"))
    }
}

impl From<Keep> for String {
    fn from(k: Keep) -> String {
        k.to_string()
    }
}

impl Serialize for Keep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keep, D::Error> {
        Keep::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Raw readings (`readings`), in whole UTC days: a day's partition is
    /// dropped once all of it is older than this.
    pub readings: Keep,
    /// How often the gateway creates partitions and applies retention
    /// (also once at start).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Daily partitions of `readings` are kept ready this many days ahead.
    pub partitions_ahead_days: u32,
    /// Days of readings moved out of the default partition per run, at most.
    pub max_backfill_days: u32,
    /// Longest wait for a table lock in any step; a step that waits longer
    /// gives up until the next run rather than holding up the writer.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            readings: Keep::For(Duration::from_secs(400 * 86_400)),
            every: Duration::from_secs(3600),
            partitions_ahead_days: 7,
            max_backfill_days: 32,
            lock_timeout: Duration::from_secs(5),
        }
    }
}

impl RetentionConfig {
    /// The checks serde cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Keep::For(d) = self.readings {
            if d < Duration::from_secs(86_400) {
                return Err(format!(
                    "invalid `retention.readings`: {} is less than a day (partitions are whole days); \
                     use \"forever\" to keep everything",
                    humantime::format_duration(d)
                ));
            }
        }
        if self.every < Duration::from_secs(1) {
            return Err("invalid `retention.every`: must be at least 1s".into());
        }
        if !(1..=366).contains(&self.partitions_ahead_days) {
            return Err("invalid `retention.partitions_ahead_days`: must be 1 to 366".into());
        }
        if self.max_backfill_days == 0 {
            return Err("invalid `retention.max_backfill_days`: must be at least 1".into());
        }
        if self.lock_timeout.is_zero() {
            return Err("invalid `retention.lock_timeout`: must be more than 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_reads_forever_and_durations_and_refuses_the_rest() {
        assert_eq!(Keep::try_from("forever".to_owned()), Ok(Keep::Forever));
        assert_eq!(
            Keep::try_from("400d".to_owned()),
            Ok(Keep::For(Duration::from_secs(400 * 86_400)))
        );
        assert!(Keep::try_from("400".to_owned()).is_err());
        assert!(Keep::try_from("never".to_owned()).is_err());
        let k = Keep::For(Duration::from_secs(400 * 86_400));
        assert_eq!(Keep::try_from(String::from(k)), Ok(k));
    }

    #[test]
    fn less_than_a_day_is_refused_naming_the_key() {
        let c = RetentionConfig {
            readings: Keep::For(Duration::from_secs(3600)),
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.contains("retention.readings"), "{e}");
        assert!(RetentionConfig::default().validate().is_ok());
        let c = RetentionConfig {
            partitions_ahead_days: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("partitions_ahead_days"));
    }
}
