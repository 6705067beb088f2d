//! aeris-sink: where the gateway stores what devices send.
//!
//! - [`Sink`]: the seam. `write` returns only after the readings are durably
//!   committed, and ignores `(device_id, seq)` pairs already stored (on
//!   PostGIS also those stored once and since dropped by retention). A pair
//!   stored with the same sensor and timestamp is a duplicate (a resend);
//!   one stored with another reading is a *collision* (the device numbered
//!   new readings again from an old seq), reported in [`WriteOutcome`] so the
//!   gateway acks neither and asks the device to renumber. The gateway may
//!   ack exactly what `write` returned for, minus the collisions.
//! - [`postgis`]: PostgreSQL + PostGIS, with versioned migrations applied at
//!   start under an advisory lock (several gateways may start at once).
//! - [`sqlite`]: an embedded SQLite file for the zero-setup default.
//! - [`redis`]: the live view (latest value per sensor, geo index, capped
//!   stream, alerts); [`live`] is its in-memory stand-in when no Redis is
//!   configured. Neither is on the ack path.
//! - [`query`]: what the HTTP API reads back.
//! - [`ops`]: the operators' audit log and the re-send points after a restore.
//! - [`rollouts`]: rollouts started over HTTP and their devices' outcomes,
//!   with the lease that keeps one gateway driving each.
//! - [`fleet_config`]: desired configuration per device and group
//!   (versioned history) and what devices report they run (PostGIS only).
#![forbid(unsafe_code)]

pub mod fleet_config;
pub mod live;
pub mod ops;
pub mod postgis;
pub mod query;
pub mod redis;
pub mod rollouts;
pub mod sqlite;

use std::collections::BTreeMap;

use aeris_wire::{Batch, ConfigReport, Status};

pub use postgis::PostgisSink;
pub use sqlite::SqliteSink;

/// Why a write did not commit. Nothing of the call is stored then.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused the statement for a reason of its own (a
    /// missing table, a full disk, a deadlock): writing again may work.
    #[error("database rejected the write: {0}")]
    Rejected(String),
    /// The database refused a value of the data (PostgreSQL SQLSTATE class
    /// 22 or 23, SQLite constraint, type or size): the same data fails again.
    #[error("database refused the data: {0}")]
    Data(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("not supported by the {0} sink")]
    Unsupported(&'static str),
}

/// What one write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Readings newly stored.
    pub inserted: u64,
    /// Readings already stored: their `(device_id, seq)` holds the same
    /// sensor and timestamp (a resend).
    pub duplicates: u64,
    /// Readings not stored because their `(device_id, seq)` holds another
    /// reading: `(index of the batch in the call, seq)`, in that order.
    /// Empty unless some `(device_id, seq)` was already stored.
    pub collisions: Vec<(usize, u64)>,
    /// For each device with a collision, its highest stored seq.
    pub max_seq: BTreeMap<String, u64>,
}

/// A batch the database refused (see [`SinkError::Data`]), set aside with
/// the bytes it came in, so the device can be acked and move on while
/// nothing is lost: an operator can read, fix and replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub device: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The database's error.
    pub reason: String,
    /// The MQTT payload as received (version byte included).
    pub payload: Vec<u8>,
}

/// Durable storage of batches.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Stores every reading of `batches` in one transaction.
    async fn write(&self, batches: &[Batch]) -> Result<WriteOutcome, SinkError>;

    /// Stores a refused batch in the dead-letter table.
    async fn dead_letter(&self, _letter: &DeadLetter) -> Result<(), SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Records a device's status if it is newer than the stored one.
    async fn record_status(&self, status: &Status) -> Result<(), SinkError>;

    /// Readings of one sensor over a time range, oldest first.
    async fn readings(
        &self,
        q: &query::ReadingsQuery,
    ) -> Result<Vec<query::StoredReading>, SinkError>;

    /// The current AQI of each of `sensors` (`(device, sensor)`) from the
    /// hourly rollups of hours from `since_ms` on; sensors without one are
    /// left out. Sinks without rollups return none.
    async fn current_aqi(
        &self,
        _sensors: &[(String, String)],
        _since_ms: i64,
    ) -> Result<BTreeMap<(String, String), query::CurrentAqi>, SinkError> {
        Ok(BTreeMap::new())
    }

    /// Hourly rollups matching `q`, and how many match without its limit
    /// and offset. Sinks without rollups (SQLite) do not support it.
    async fn hours(&self, _q: &query::HoursQuery) -> Result<(Vec<query::HourRow>, u64), SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// The OpenAQ-style catalogue (every sensor and pollutant with hourly
    /// rollups, with stable ids, registering new ones), or one API sensor
    /// (`sensor`), or one location's sensors (`location`).
    async fn catalog(
        &self,
        _sensor: Option<i64>,
        _location: Option<i64>,
    ) -> Result<Vec<query::CatalogSensor>, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Sets a location's site code and UTC offset (see
    /// [`query::LocationUpdate`]), registering it if new.
    async fn set_location(
        &self,
        _update: &query::LocationUpdate,
    ) -> Result<query::LocationRow, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Every registered location with its operator-set fields, by id.
    async fn locations(&self) -> Result<Vec<query::LocationRow>, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Each two-channel sensor's channel checks over the hours from
    /// `since_ms` on. Sinks without rollups return none.
    async fn channel_health(&self, _since_ms: i64) -> Result<Vec<query::ChannelHealth>, SinkError> {
        Ok(Vec::new())
    }

    /// Every device that reported a status, with its gaps.
    async fn devices(&self) -> Result<Vec<query::DeviceReport>, SinkError>;

    /// Whether the database answers (readiness).
    async fn ping(&self) -> Result<(), SinkError>;

    /// A short name for logs ("postgis", "sqlite").
    fn kind(&self) -> &'static str;

    /// Appends one operator action to the audit log.
    async fn record_audit(&self, _entry: &ops::AuditEntry) -> Result<(), SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// The newest `limit` audit rows, newest first.
    async fn audit(&self, _limit: i64) -> Result<Vec<ops::AuditRecord>, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Every known device and the lowest seq the database lacks for it.
    async fn resend_points(&self) -> Result<Vec<ops::ResendPoint>, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Stores a rollout's state and its changed devices (`r.devices`) in
    /// one transaction, renewing `lease`. `Ok(false)`: nothing stored, the
    /// rollout belongs to another gateway now (or it finished).
    async fn save_rollout(
        &self,
        _r: &rollouts::StoredRollout,
        _lease: &rollouts::Lease,
    ) -> Result<bool, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// One rollout with every device, if stored.
    async fn rollout(&self, _id: u64) -> Result<Option<rollouts::StoredRollout>, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Renews `lease.owner`'s leases and takes the unfinished rollouts whose
    /// lease expired; returns every unfinished rollout it now owns.
    async fn claim_rollouts(
        &self,
        _lease: &rollouts::Lease,
    ) -> Result<Vec<rollouts::StoredRollout>, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// How many rollouts are in each state.
    async fn rollout_counts(&self) -> Result<Vec<(rollouts::RolloutState, u64)>, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Stores a new desired fragment for `scope` under the next fleet-wide
    /// version; `devices` restricts it to some of the scope's devices (a
    /// staged change's first wave), `None` = all.
    async fn set_config(
        &self,
        _scope: &fleet_config::Scope,
        _fragment: &serde_json::Value,
        _set_by: &str,
        _devices: Option<&[String]>,
    ) -> Result<fleet_config::DesiredRow, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Lets the fragment of `version` reach `devices` (`None`: all of its
    /// scope's devices), as a staged change moves on.
    async fn widen_config(
        &self,
        _version: u64,
        _devices: Option<&[String]>,
    ) -> Result<(), SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Every desired fragment ever set for `scopes`, newest first.
    async fn config_rows(
        &self,
        _scopes: &[fleet_config::Scope],
    ) -> Result<Vec<fleet_config::DesiredRow>, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Records a device's config report if it is not older than the stored one.
    async fn record_config_report(&self, _report: &ConfigReport) -> Result<(), SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }

    /// Every device's last config report.
    async fn config_reports(&self) -> Result<Vec<fleet_config::ReportedRow>, SinkError> {
        Err(SinkError::Unsupported(self.kind()))
    }
}

/// Readings in `batches`.
fn reading_count(batches: &[Batch]) -> u64 {
    batches.iter().map(|b| b.readings.len() as u64).sum()
}

/// The values of a reading as a JSON object, `{"pm25": 12.5, ...}`.
fn values_json(r: &aeris_wire::Reading) -> serde_json::Value {
    serde_json::Value::Object(
        r.values
            .iter()
            .map(|v| (v.quantity.clone(), serde_json::json!(v.value)))
            .collect(),
    )
}
