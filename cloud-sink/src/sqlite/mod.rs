//! The embedded SQLite sink: the zero-setup stand-in for PostGIS, same
//! guarantees (one transaction per write, `(device_id, seq)` stored once).
//!
//! Layout (schema version 5, `PRAGMA user_version`):
//! `readings(device_id, seq, sensor_id, ts_ms, lat, lon, flags, measurements JSON
//! text, received_ms)`, primary key `(device_id, seq)`; since version 2
//! `devices(device_id, ..., losses JSON text)`, each device's last status;
//! since version 3 `devices.seq_collisions` and `last_seq_collision_ms`
//! (see [`write`]); since version 4 `dead_letters(id, at_ms, device_id,
//! first_seq, last_seq, reason, payload BLOB)`, batches the database refused;
//! since version 5 `devices.boot_id`, `models` (JSON text, name -> version)
//! and `drain_eta_s`, the rest of the status (as PostGIS migration 0007).

use std::path::Path;
use std::sync::{Arc, Mutex};

use aeris_wire::message::MODEL_PREFIX;
use aeris_wire::{Batch, Status};
use rusqlite::{params, Connection};

mod ops;
mod rollouts;
mod write;

use crate::ops::{AuditEntry, AuditRecord, ResendPoint};
use crate::query::{DeviceReport, ReadingsQuery, StoredReading};
use crate::rollouts::{Lease, RolloutState, StoredRollout};
use crate::{DeadLetter, Sink, SinkError, WriteOutcome};

const READINGS: &str = "SELECT seq, ts_ms, lat, lon, flags, measurements FROM readings
    WHERE device_id = ?1 AND sensor_id = ?2 AND ts_ms >= ?3 AND ts_ms < ?4
    ORDER BY ts_ms, seq LIMIT ?5";

const SCHEMA: &str = "
CREATE TABLE readings (
    device_id   TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    sensor_id   TEXT    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    lat         REAL    NOT NULL,
    lon         REAL    NOT NULL,
    flags       INTEGER NOT NULL DEFAULT 0,
    measurements  TEXT    NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX readings_sensor_ts ON readings (sensor_id, ts_ms);
PRAGMA user_version = 1;
";

/// Version 1 -> 2: device statuses.
const SCHEMA_2: &str = "
CREATE TABLE devices (
    device_id       TEXT PRIMARY KEY,
    status_ts_ms    INTEGER NOT NULL,
    online          INTEGER NOT NULL,
    agent_version   TEXT    NOT NULL,
    last_seq        INTEGER NOT NULL,
    queued_readings INTEGER NOT NULL,
    queued_bytes    INTEGER NOT NULL,
    oldest_unsent_ms INTEGER,
    losses          TEXT    NOT NULL
);
PRAGMA user_version = 2;
";

/// Version 2 -> 3: seq collisions per device (as PostGIS migration 0004).
const SCHEMA_3: &str = "
BEGIN;
ALTER TABLE devices ADD COLUMN seq_collisions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN last_seq_collision_ms INTEGER;
PRAGMA user_version = 3;
COMMIT;
";

/// Version 3 -> 4: dead letters (as PostGIS migration 0005).
const SCHEMA_4: &str = "
BEGIN;
CREATE TABLE dead_letters (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms     INTEGER NOT NULL,
    device_id TEXT    NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    reason    TEXT    NOT NULL,
    payload   BLOB    NOT NULL
);
PRAGMA user_version = 4;
COMMIT;
";

/// Version 4 -> 5: the rest of the status (as PostGIS migration 0007;
/// PostGIS has had `boot_id` since 0002).
const SCHEMA_5: &str = "
BEGIN;
ALTER TABLE devices ADD COLUMN boot_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN models TEXT NOT NULL DEFAULT '{}';
ALTER TABLE devices ADD COLUMN drain_eta_s INTEGER;
PRAGMA user_version = 5;
COMMIT;
";

/// Every schema step; step `i` takes version `i` to `i + 1`.
const MIGRATIONS: [&str; 5] = [SCHEMA, SCHEMA_2, SCHEMA_3, SCHEMA_4, SCHEMA_5];

/// Newer statuses replace older ones.
const UPSERT_STATUS: &str = "INSERT INTO devices (device_id, status_ts_ms, online, agent_version,
    last_seq, queued_readings, queued_bytes, oldest_unsent_ms, losses, boot_id, models, drain_eta_s)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
    ON CONFLICT (device_id) DO UPDATE SET status_ts_ms = excluded.status_ts_ms,
        online = excluded.online, agent_version = excluded.agent_version,
        last_seq = excluded.last_seq, queued_readings = excluded.queued_readings,
        queued_bytes = excluded.queued_bytes, oldest_unsent_ms = excluded.oldest_unsent_ms,
        losses = excluded.losses, boot_id = excluded.boot_id, models = excluded.models,
        drain_eta_s = excluded.drain_eta_s
    WHERE excluded.status_ts_ms >= devices.status_ts_ms";

const DEVICES: &str = "SELECT d.device_id, d.online, d.agent_version, d.status_ts_ms, d.last_seq,
    d.queued_readings, d.queued_bytes, d.oldest_unsent_ms, d.losses,
    (SELECT count(*) FROM readings r WHERE r.device_id = d.device_id),
    (SELECT coalesce(max(seq), 0) FROM readings r WHERE r.device_id = d.device_id),
    d.seq_collisions, d.last_seq_collision_ms, d.boot_id, d.models, d.drain_eta_s
    FROM devices d ORDER BY d.device_id";

/// Holes below the highest stored seq, as in the PostGIS sink.
const GAPS: &str = "SELECT prev + 1, seq - 1 FROM (
    SELECT seq, lag(seq, 1, 0) OVER (ORDER BY seq) AS prev FROM readings WHERE device_id = ?1)
    WHERE seq - prev > 1 ORDER BY seq LIMIT 100";

pub struct SqliteSink {
    conn: Arc<Mutex<Connection>>,
}

fn rejected(e: rusqlite::Error) -> SinkError {
    SinkError::Rejected(e.to_string())
}

impl SqliteSink {
    pub fn open(path: &Path) -> Result<SqliteSink, SinkError> {
        let conn = Connection::open(path).map_err(|e| SinkError::Unavailable(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(rejected)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(rejected)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| SinkError::Migration(e.to_string()))?;
        let steps = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v..))
            .ok_or_else(|| {
                SinkError::Migration(format!(
                    "schema version {version} is newer than this gateway's {}",
                    MIGRATIONS.len()
                ))
            })?;
        for sql in steps {
            conn.execute_batch(sql)
                .map_err(|e| SinkError::Migration(e.to_string()))?;
        }
        Ok(SqliteSink {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, SinkError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| SinkError::Unavailable("sqlite connection poisoned".into()))?;
            f(&conn).map_err(rejected)
        })
        .await
        .map_err(|e| SinkError::Unavailable(e.to_string()))?
    }
}

fn devices_blocking(conn: &Connection) -> Result<Vec<DeviceReport>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(DEVICES)?;
    let mut devices = stmt
        .query_map([], |r| {
            let losses: String = r.get(8)?;
            let models: String = r.get(14)?;
            let last_seq = r.get::<_, i64>(4)?.max(0) as u64;
            let max_seq = r.get::<_, i64>(10)?.max(0) as u64;
            Ok(DeviceReport {
                device: r.get(0)?,
                online: r.get(1)?,
                agent_version: r.get(2)?,
                status_ts_ms: r.get(3)?,
                last_seq,
                queued_readings: r.get::<_, i64>(5)?.max(0) as u64,
                queued_bytes: r.get::<_, i64>(6)?.max(0) as u64,
                oldest_unsent_ms: r.get(7)?,
                losses: serde_json::from_str(&losses).unwrap_or_default(),
                received: r.get::<_, i64>(9)?.max(0) as u64,
                gaps: Vec::new(),
                not_yet_received: last_seq.saturating_sub(max_seq),
                seq_collisions: r.get::<_, i64>(11)?.max(0) as u64,
                last_seq_collision_ms: r.get(12)?,
                // The wire's u64, stored bit for bit in an INTEGER.
                boot_id: r.get::<_, i64>(13)? as u64,
                models: crate::query::models_from_json(
                    serde_json::from_str(&models).unwrap_or_default(),
                ),
                drain_eta_s: r.get::<_, Option<i64>>(15)?.map(|v| v.max(0) as u64),
                oldest_unsent_age_s: None,
            }
            .with_age(aeris_wire::now_ms()))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut gaps = conn.prepare_cached(GAPS)?;
    for d in &mut devices {
        d.gaps = gaps
            .query_map([&d.device], |r| {
                Ok([r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64])
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(devices)
}

#[async_trait::async_trait]
impl Sink for SqliteSink {
    async fn write(&self, batches: &[Batch]) -> Result<WriteOutcome, SinkError> {
        let conn = self.conn.clone();
        let owned = batches.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| SinkError::Unavailable("sqlite connection poisoned".into()))?;
            write::write(&mut conn, &owned).map_err(write::classify)
        })
        .await
        .map_err(|e| SinkError::Unavailable(e.to_string()))?
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        let letter = letter.clone();
        self.blocking(move |conn| write::dead_letter(conn, &letter))
            .await
    }

    async fn record_status(&self, status: &Status) -> Result<(), SinkError> {
        let s = status.clone();
        self.blocking(move |conn| {
            let losses: serde_json::Map<String, serde_json::Value> = s
                .losses
                .iter()
                .map(|l| (l.reason.clone(), serde_json::json!(l.count)))
                .collect();
            conn.execute(
                UPSERT_STATUS,
                params![
                    s.device,
                    s.ts_ms,
                    s.state == aeris_wire::DeviceState::Online,
                    s.agent_version,
                    s.last_seq as i64,
                    s.queued_readings as i64,
                    s.queued_bytes as i64,
                    s.oldest_unsent_ms,
                    serde_json::Value::Object(losses).to_string(),
                    s.boot_id as i64,
                    crate::query::models_json(&s.models).to_string(),
                    s.drain_eta_s.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn readings(&self, q: &ReadingsQuery) -> Result<Vec<StoredReading>, SinkError> {
        let q = q.clone();
        self.blocking(move |conn| read_blocking(conn, &q)).await
    }

    async fn devices(&self) -> Result<Vec<DeviceReport>, SinkError> {
        self.blocking(devices_blocking).await
    }

    async fn ping(&self) -> Result<(), SinkError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<(), SinkError> {
        let entry = entry.clone();
        self.blocking(move |conn| ops::record_audit(conn, &entry))
            .await
    }

    async fn audit(&self, limit: i64) -> Result<Vec<AuditRecord>, SinkError> {
        self.blocking(move |conn| ops::audit(conn, limit)).await
    }

    async fn resend_points(&self) -> Result<Vec<ResendPoint>, SinkError> {
        self.blocking(ops::resend_points).await
    }

    async fn save_rollout(&self, r: &StoredRollout, lease: &Lease) -> Result<bool, SinkError> {
        let (r, lease) = (r.clone(), lease.clone());
        self.blocking(move |conn| rollouts::save(conn, &r, &lease))
            .await
    }

    async fn rollout(&self, id: u64) -> Result<Option<StoredRollout>, SinkError> {
        self.blocking(move |conn| rollouts::load(conn, id)).await
    }

    async fn claim_rollouts(&self, lease: &Lease) -> Result<Vec<StoredRollout>, SinkError> {
        let lease = lease.clone();
        self.blocking(move |conn| rollouts::claim(conn, &lease))
            .await
    }

    async fn rollout_counts(&self) -> Result<Vec<(RolloutState, u64)>, SinkError> {
        self.blocking(rollouts::counts).await
    }
}

fn read_blocking(
    conn: &Connection,
    q: &ReadingsQuery,
) -> Result<Vec<StoredReading>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(READINGS)?;
    let rows = stmt.query_map(
        params![q.device, q.sensor, q.from_ms, q.to_ms, q.limit],
        |r| {
            let json: String = r.get(5)?;
            let all: std::collections::BTreeMap<String, f64> =
                serde_json::from_str(&json).unwrap_or_default();
            let (models, values) = all
                .into_iter()
                .partition::<std::collections::BTreeMap<_, _>, _>(|(k, _)| {
                    k.starts_with(MODEL_PREFIX)
                });
            Ok(StoredReading {
                seq: r.get::<_, i64>(0)? as u64,
                ts_ms: r.get(1)?,
                lat: r.get(2)?,
                lon: r.get(3)?,
                flags: r.get(4)?,
                values,
                model_outputs: models
                    .into_iter()
                    .map(|(k, v)| (k[MODEL_PREFIX.len()..].to_owned(), v))
                    .collect(),
            })
        },
    )?;
    rows.collect()
}

#[cfg(test)]
mod tests;
