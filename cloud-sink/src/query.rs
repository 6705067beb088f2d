//! What the HTTP API reads back from a sink: readings of one sensor over a
//! time range, and devices with their status, data debt and seq gaps.

use std::collections::BTreeMap;

use serde::Serialize;

/// Quantities with their own column in PostGIS; everything else stays in
/// `measurements` (model outputs in `model_outputs`).
pub const POLLUTANT_COLUMNS: [&str; 7] = ["pm1", "pm25", "pm10", "no2", "o3", "co", "so2"];

/// Readings of one sensor of one device with `from_ms <= ts < to_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingsQuery {
    pub device: String,
    pub sensor: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: i64,
}

/// One stored reading as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredReading {
    pub seq: u64,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub flags: u32,
    /// Every measured quantity, pollutant columns and the rest together.
    pub values: BTreeMap<String, f64>,
    /// `"<model>@<version>" -> output`.
    pub model_outputs: BTreeMap<String, f64>,
}

/// A device's last status next to what the cloud holds of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceReport {
    pub device: String,
    pub online: bool,
    pub agent_version: String,
    pub status_ts_ms: i64,
    /// Highest seq the device has assigned.
    pub last_seq: u64,
    /// Data debt as the device reports it.
    pub queued_readings: u64,
    pub queued_bytes: u64,
    pub oldest_unsent_ms: Option<i64>,
    pub losses: BTreeMap<String, u64>,
    /// Readings stored for the device.
    pub received: u64,
    /// Seq ranges (inclusive) below the highest stored seq that were never
    /// received: lost on the way or still to come. At most 100, lowest first.
    pub gaps: Vec<[u64; 2]>,
    /// Seqs above the highest stored one up to `last_seq`: not received yet.
    pub not_yet_received: u64,
    /// Readings refused because their seq held another reading in the
    /// database (a lost or restored device buffer); the device was asked to
    /// renumber them.
    pub seq_collisions: u64,
    /// When the last of those arrived, Unix ms.
    pub last_seq_collision_ms: Option<i64>,
}
