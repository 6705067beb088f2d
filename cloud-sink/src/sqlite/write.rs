//! The SQLite sink's write path: one transaction per call, `INSERT OR
//! IGNORE` per reading. An ignored reading is compared with the stored row
//! under its `(device_id, seq)`: the same sensor and timestamp is a
//! duplicate (a resend), anything else a collision, counted on the device's
//! row (`seq_collisions`, `last_seq_collision_ms`) in the same transaction.
//! Nothing extra runs for a reading that was inserted.

use std::collections::BTreeMap;

use aeris_wire::{now_ms, Batch};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{values_json, DeadLetter, SinkError, WriteOutcome};

const INSERT: &str = "INSERT OR IGNORE INTO readings
    (device_id, seq, sensor_id, ts_ms, lat, lon, flags, measurements, received_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

const STORED: &str =
    "SELECT sensor_id, ts_ms, flags, measurements FROM readings WHERE device_id = ?1 AND seq = ?2";

const MAX_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM readings WHERE device_id = ?1";

/// As on PostGIS: a device without a status gets an empty one at time 0,
/// which its first status replaces.
const RECORD_COLLISIONS: &str = "INSERT INTO devices (device_id, status_ts_ms, online,
    agent_version, last_seq, queued_readings, queued_bytes, losses, seq_collisions,
    last_seq_collision_ms)
    VALUES (?1, 0, 0, '', 0, 0, 0, '{}', ?2, ?3)
    ON CONFLICT (device_id) DO UPDATE SET
        seq_collisions = devices.seq_collisions + excluded.seq_collisions,
        last_seq_collision_ms = excluded.last_seq_collision_ms";

const INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters
    (at_ms, device_id, first_seq, last_seq, reason, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// A refused value (a constraint, a type, a size) is the data's fault and
/// fails again on a retry; anything else (busy, I/O, full disk) is not.
pub(super) fn classify(e: rusqlite::Error) -> SinkError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(ConstraintViolation | TypeMismatch | TooBig) => SinkError::Data(e.to_string()),
        _ => SinkError::Rejected(e.to_string()),
    }
}

pub(super) fn write(conn: &mut Connection, batches: &[Batch]) -> rusqlite::Result<WriteOutcome> {
    let now = now_ms();
    let tx = conn.transaction()?;
    let mut out = WriteOutcome::default();
    let mut per_device: BTreeMap<&str, i64> = BTreeMap::new();
    {
        let mut insert = tx.prepare_cached(INSERT)?;
        let mut stored = tx.prepare_cached(STORED)?;
        for (i, b) in batches.iter().enumerate() {
            for (seq, r) in b.with_seqs() {
                let seq_i = i64::try_from(seq).unwrap_or(i64::MAX);
                let json = values_json(r).to_string();
                let n = insert.execute(params![
                    b.device, seq_i, r.sensor, r.ts_ms, r.lat, r.lon, r.flags, json, now
                ])?;
                if n > 0 {
                    out.inserted += 1;
                    continue;
                }
                let held: Option<(String, i64, i64, String)> = stored
                    .query_row(params![b.device, seq_i], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })
                    .optional()?;
                // The same reading: sensor, time, flags and every value.
                let same = held.is_some_and(|(sensor, ts, flags, values)| {
                    sensor == r.sensor
                        && ts == r.ts_ms
                        && flags == i64::from(r.flags)
                        && values == json
                });
                if same {
                    out.duplicates += 1;
                } else {
                    out.collisions.push((i, seq));
                    *per_device.entry(&b.device).or_default() += 1;
                }
            }
        }
    }
    for (device, n) in per_device {
        tx.execute(RECORD_COLLISIONS, params![device, n, now])?;
        let max: i64 = tx.query_row(MAX_SEQ, [device], |r| r.get(0))?;
        out.max_seq
            .insert(device.to_owned(), u64::try_from(max).unwrap_or(0));
    }
    tx.commit()?;
    Ok(out)
}

pub(super) fn dead_letter(conn: &Connection, d: &DeadLetter) -> rusqlite::Result<()> {
    let seq = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    conn.execute(
        INSERT_DEAD_LETTER,
        params![
            now_ms(),
            d.device,
            seq(d.first_seq),
            seq(d.last_seq),
            d.reason,
            d.payload
        ],
    )?;
    Ok(())
}
