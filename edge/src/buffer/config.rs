//! `[buffer]`: the on-disk buffer's budget and retention. Imports nothing
//! else from the crate.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The on-disk buffer's budget and retention (see `buffer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Most bytes the buffer database may use; beyond it the oldest raw
    /// readings are replaced by their window aggregates, then dropped.
    pub max_bytes: u64,
    /// Acknowledged readings are kept this long, so the cloud can ask for
    /// them again (restore from backup); 0s deletes them on the ack.
    #[serde(with = "humantime_serde")]
    pub acked_grace: Duration,
    /// Readings held in memory while the buffer file cannot be written
    /// (full disk, read-only file), at most.
    pub memory_readings: usize,
    /// How often a failed buffer write is retried.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_bytes: 1 << 30,
            acked_grace: Duration::from_secs(3600),
            memory_readings: 10_000,
            retry_interval: Duration::from_secs(1),
        }
    }
}

impl BufferConfig {
    /// Checks serde cannot express; the error names the key within `[buffer]`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_bytes < 1 << 20 {
            return Err(("max_bytes", "must be at least 1048576 (1 MiB)".into()));
        }
        if self.memory_readings == 0 {
            return Err(("memory_readings", "must be at least 1".into()));
        }
        if self.retry_interval.is_zero() {
            return Err(("retry_interval", "must be more than 0s".into()));
        }
        Ok(())
    }
}
