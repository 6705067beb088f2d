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
    /// Every measured quantity, pollutant columns and the rest together;
    /// a corrected PM2.5's raw value as `raw:pm25:<formula>@<version>`,
    /// the name it travelled under.
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
    /// Random per agent start: a new value means the agent restarted.
    pub boot_id: u64,
    /// The active models, `name -> version`; empty when none is loaded
    /// (or the status was stored before the gateway knew of models).
    pub models: BTreeMap<String, String>,
    /// Seconds until the device's queue is empty at its net drain rate;
    /// `None` while it is not shrinking.
    pub drain_eta_s: Option<u64>,
    /// Age of the oldest unsent reading when the API answered, seconds
    /// (`oldest_unsent_ms` against the gateway's clock, at least 0).
    pub oldest_unsent_age_s: Option<i64>,
}

impl DeviceReport {
    /// Sets [`DeviceReport::oldest_unsent_age_s`] for the time `now_ms`.
    pub fn with_age(mut self, now_ms: i64) -> DeviceReport {
        self.oldest_unsent_age_s = self
            .oldest_unsent_ms
            .map(|t| now_ms.saturating_sub(t).max(0) / 1000);
        self
    }
}

/// A status's models as stored: `{"<name>": "<version>"}`.
pub(crate) fn models_json(models: &[aeris_wire::ModelVersion]) -> serde_json::Value {
    serde_json::Value::Object(
        models
            .iter()
            .map(|m| (m.name.clone(), serde_json::Value::String(m.version.clone())))
            .collect(),
    )
}

/// The stored models back; anything else than a string version is skipped.
pub(crate) fn models_from_json(v: serde_json::Value) -> BTreeMap<String, String> {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A sensor's current AQI from its hourly rollups: the largest pollutant
/// index of its latest hour with one (NowCast for PM and O3), with the
/// pollutant responsible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrentAqi {
    pub aqi: u32,
    /// The TAD's name for the index's band ("Moderate", ...).
    pub category: &'static str,
    /// The pollutant responsible (`"pm25"`, ...).
    pub pollutant: &'static str,
    /// What its index was computed from: `nowcast`, `1h`, `8h` or `24h`.
    pub averaging: &'static str,
    /// The hour (its beginning, UTC ms) the index is for.
    pub hour_ms: i64,
}

/// Hourly rollups (`readings_hourly`) with `from_ms <= hour < to_ms`,
/// optionally of one device, sensor and pollutant; ordered by device,
/// sensor, pollutant and hour, `limit` rows from `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HoursQuery {
    pub device: Option<String>,
    pub sensor: Option<String>,
    pub pollutant: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: i64,
    pub offset: i64,
}

/// One stored hourly rollup: an hour (its beginning, UTC) of one sensor
/// and pollutant, as the gateway computed it (`aeris_wire::aqi::rollup`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HourRow {
    pub device: String,
    pub sensor: String,
    pub pollutant: String,
    /// The hour's beginning, UTC ms (hour-beginning label).
    pub hour_ms: i64,
    /// Statistics of the hour's readings, in the stored unit (µg/m³).
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub count: u32,
    pub expected: u32,
    pub completeness: f64,
    /// `count` reached 75 % (configurable) of `expected`.
    pub valid: bool,
    /// The NowCast ending with this hour, in the AQI table's unit.
    pub nowcast: Option<f64>,
    pub aqi: Option<u32>,
    pub aqi_averaging: Option<String>,
}

/// One pollutant of one sensor as the OpenAQ-style API lists it: its
/// stable ids (migration 0013), where it is, and the hours it has.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CatalogSensor {
    /// The API sensor id (device, sensor, pollutant).
    pub id: i64,
    /// The API location id (device, sensor).
    pub location_id: i64,
    pub device: String,
    pub sensor: String,
    pub pollutant: String,
    /// First and last rollup hour (beginnings, UTC ms).
    pub first_hour_ms: i64,
    pub last_hour_ms: i64,
    /// The position of the sensor's latest stored reading, if any is
    /// left (retention may have dropped them).
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// The location's AQCSV site code (12 digits), if an operator set one.
    pub site: Option<String>,
    /// Its local standard time's offset from UTC (minutes), if set: its
    /// days run from local midnight.
    pub utc_offset_min: Option<i32>,
}

/// What an operator says of a location (`aeris-gateway locations set`):
/// `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocationUpdate {
    pub device: String,
    pub sensor: String,
    /// `Some(None)` clears the site code.
    pub site: Option<Option<String>>,
    /// `Some(None)` clears the offset (UTC days).
    pub utc_offset_min: Option<Option<i32>>,
}

/// A location as stored, with its operator-set fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocationRow {
    pub id: i64,
    pub device: String,
    pub sensor: String,
    pub site: Option<String>,
    pub utc_offset_min: Option<i32>,
}

/// How often a two-channel sensor's channels disagreed over a window of
/// hours (`aeris_wire::aqi::channels`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelHealth {
    pub device: String,
    pub sensor: String,
    /// The channelled pollutant (`pm25`, ...).
    pub pollutant: String,
    /// Hours with both channels, judged.
    pub judged_hours: u32,
    /// Of those, hours whose channels disagreed (invalid).
    pub disagree_hours: u32,
    /// Hours with one channel only (not judged).
    pub one_channel_hours: u32,
    /// `disagree_hours / judged_hours`; `None` when nothing was judged.
    pub disagreement_ratio: Option<f64>,
}
