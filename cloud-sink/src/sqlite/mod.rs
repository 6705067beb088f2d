//! The embedded SQLite sink: the zero-setup stand-in for PostGIS, same
//! guarantees (one transaction per write, `(device_id, seq)` stored once).
//!
//! Layout (schema version 1, `PRAGMA user_version`):
//! `readings(device_id, seq, sensor_id, ts_ms, lat, lon, flags, measurements JSON
//! text, received_ms)`, primary key `(device_id, seq)`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aeris_wire::{Batch, Status};
use rusqlite::{params, Connection};

use crate::query::{DeviceReport, ReadingsQuery, StoredReading, MODEL_PREFIX};
use crate::{reading_count, values_json, Sink, SinkError, WriteOutcome};

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

const INSERT: &str = "INSERT OR IGNORE INTO readings
    (device_id, seq, sensor_id, ts_ms, lat, lon, flags, measurements, received_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

pub struct SqliteSink {
    path: PathBuf,
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
        match version {
            0 => conn
                .execute_batch(SCHEMA)
                .map_err(|e| SinkError::Migration(e.to_string()))?,
            1 => {}
            v => {
                return Err(SinkError::Migration(format!(
                    "schema version {v} is newer than this gateway's 1"
                )))
            }
        }
        Ok(SqliteSink {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_blocking(conn: &mut Connection, batches: &[Batch]) -> Result<u64, rusqlite::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let tx = conn.transaction()?;
    let mut inserted = 0;
    {
        let mut stmt = tx.prepare_cached(INSERT)?;
        for b in batches {
            for (seq, r) in b.with_seqs() {
                inserted += stmt.execute(params![
                    b.device,
                    seq as i64,
                    r.sensor,
                    r.ts_ms,
                    r.lat,
                    r.lon,
                    r.flags,
                    values_json(r).to_string(),
                    now
                ])? as u64;
            }
        }
    }
    tx.commit()?;
    Ok(inserted)
}

#[async_trait::async_trait]
impl Sink for SqliteSink {
    async fn write(&self, batches: &[Batch]) -> Result<WriteOutcome, SinkError> {
        let conn = self.conn.clone();
        let owned = batches.to_vec();
        let total = reading_count(batches);
        let inserted = tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| SinkError::Unavailable("sqlite connection poisoned".into()))?;
            write_blocking(&mut conn, &owned).map_err(rejected)
        })
        .await
        .map_err(|e| SinkError::Unavailable(e.to_string()))??;
        Ok(WriteOutcome {
            inserted,
            duplicates: total - inserted,
        })
    }

    /// The embedded sink keeps no device status (the PostGIS sink does).
    async fn record_status(&self, _status: &Status) -> Result<(), SinkError> {
        Ok(())
    }

    async fn readings(&self, q: &ReadingsQuery) -> Result<Vec<StoredReading>, SinkError> {
        let conn = self.conn.clone();
        let q = q.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| SinkError::Unavailable("sqlite connection poisoned".into()))?;
            read_blocking(&conn, &q).map_err(rejected)
        })
        .await
        .map_err(|e| SinkError::Unavailable(e.to_string()))?
    }

    async fn devices(&self) -> Result<Vec<DeviceReport>, SinkError> {
        Err(SinkError::Unsupported("sqlite"))
    }

    async fn ping(&self) -> Result<(), SinkError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sqlite"
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
mod tests {
    use super::*;
    use aeris_wire::{Reading, Value};

    fn batch(device: &str, first_seq: u64, n: usize) -> Batch {
        Batch {
            device: device.into(),
            first_seq,
            readings: (0..n)
                .map(|i| Reading {
                    sensor: format!("s{i}"),
                    ts_ms: 1_000 + i as i64,
                    lat: 50.0 + i as f64,
                    lon: 8.0,
                    flags: 0,
                    values: vec![Value {
                        quantity: "pm10".into(),
                        value: i as f64,
                    }],
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn stores_each_device_seq_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.db");
        let sink = SqliteSink::open(&path).unwrap();
        let out = sink
            .write(&[batch("a", 1, 5), batch("b", 1, 2)])
            .await
            .unwrap();
        assert_eq!(
            out,
            WriteOutcome {
                inserted: 7,
                duplicates: 0
            }
        );
        // Overlapping resend: 3..=7 of "a", of which 3..=5 are stored already.
        let out = sink.write(&[batch("a", 3, 5)]).await.unwrap();
        assert_eq!(
            out,
            WriteOutcome {
                inserted: 2,
                duplicates: 3
            }
        );
        drop(sink);
        let sink = SqliteSink::open(&path).unwrap();
        let conn = sink.conn.lock().unwrap();
        let (n, lat): (i64, f64) = conn
            .query_row(
                "SELECT count(*), max(lat) FROM readings WHERE device_id = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, lat), (7, 54.0));
        let v: String = conn
            .query_row(
                "SELECT measurements FROM readings WHERE device_id='b' AND seq=2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, r#"{"pm10":1.0}"#);
    }
}
