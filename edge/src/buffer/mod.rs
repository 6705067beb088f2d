//! The crash-safe reading buffer and the thread that owns it.
//!
//! Every reading the agent accepts is in the SQLite file before its sensor
//! message is acknowledged to the local broker, and stays there until the
//! cloud has acknowledged its seq and the grace period has passed. One
//! thread owns the connection; appends that queue up while a transaction
//! commits are committed together (group commit), so throughput does not
//! cost durability.
//!
//! When the file cannot be written (full disk, read-only file system, I/O
//! error) the thread keeps the readings of at most `memory_readings` in
//! memory, unacknowledged to the local broker, retries every
//! `retry_interval`, and commits them as soon as a write succeeds. Messages
//! beyond that bound are not acknowledged either, so the local broker keeps
//! them (they come again on the next connection). Nothing is acked to a
//! sensor before it is on disk.

pub mod config;
mod handle;
pub mod metrics;
pub mod row;
mod store;
mod worker;

use std::time::Duration;

use crate::preprocess::PreprocessConfig;
pub use config::BufferConfig;
pub use handle::{Buffer, Windows};
pub use metrics::Metrics;
pub use store::{
    Appended, BufferError, Columns, CorruptRow, Delivery, Depth, Evicted, Message, Options,
    Renumbered, Store, FLAG_AGGREGATE,
};

/// Called once the appended readings are committed (or could not be).
pub type OnCommit = Box<dyn FnOnce(Result<Appended, &BufferError>) + Send>;

/// Readings read back for sending, appended to the columns the uplink
/// handed in, and the corrupt rows taken out on the way.
pub type Held = (Columns, Vec<CorruptRow>);

/// The buffer's state for the status heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub depth: Depth,
    /// The seq the next reading will get.
    pub next_seq: u64,
    /// Readings lost since the buffer was created, by reason.
    pub losses: Vec<(String, u64)>,
}

/// The buffer's behaviour beyond the store's limits.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: Options,
    /// Readings held in memory while the file cannot be written.
    pub memory_readings: usize,
    pub retry_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            store: Options::default(),
            memory_readings: 10_000,
            retry_interval: Duration::from_secs(1),
        }
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Windows {
    /// The windows of `[preprocess]`; 0 means the 5-minute default.
    pub fn from_config(preprocess: &PreprocessConfig) -> Windows {
        Windows {
            by_sensor: preprocess
                .windows
                .iter()
                .filter(|(_, d)| !d.is_zero())
                .map(|(k, d)| (k.clone(), ms(**d)))
                .collect(),
            default_ms: if preprocess.window.is_zero() {
                300_000
            } else {
                ms(preprocess.window)
            },
        }
    }
}

impl Settings {
    /// From `[buffer]`, and the aggregation windows of `[preprocess]`
    /// (the budget replaces raw readings by aggregates of those windows).
    pub fn from_config(c: &BufferConfig, preprocess: &PreprocessConfig) -> Settings {
        let windows = Windows::from_config(preprocess);
        Settings {
            store: Options {
                max_bytes: c.max_bytes,
                acked_grace_ms: ms(c.acked_grace),
                window_ms: windows.by_sensor,
                default_window_ms: windows.default_ms,
            },
            memory_readings: c.memory_readings,
            retry_interval: c.retry_interval,
        }
    }
}
