//! The on-disk buffer: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed transaction survives power loss.
//!
//! Invariants:
//! - a reading and its seq are written in one transaction, together with the
//!   next free seq in `meta`; a seq is never handed out twice, also across
//!   restarts, because `next_seq` only moves forward in the same commit;
//! - rows leave only through [`Store::delete_range`], which the uplink calls
//!   for ranges the cloud acknowledged.
//!
//! Layout (schema version 1, `PRAGMA user_version`):
//! `readings(seq INTEGER PRIMARY KEY, ts_ms INTEGER, body BLOB)` where `body`
//! is a [`Reading`] framed by `aeris_wire::encode` (version byte + postcard);
//! `meta(key TEXT PRIMARY KEY, value INTEGER)` with `next_seq`.

use std::path::Path;

use aeris_wire::{decode, encode, Reading};
use rusqlite::{params, Connection, OptionalExtension};

/// Why the buffer could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer database is full or its disk is: {0}")]
    Full(rusqlite::Error),
    #[error("buffer database is corrupt or not an Aeris buffer: {0}")]
    Corrupt(String),
    #[error("buffer database error: {0}")]
    Io(rusqlite::Error),
    #[error("the buffer thread has stopped")]
    Closed,
}

impl From<rusqlite::Error> for BufferError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DiskFull) => BufferError::Full(e),
            Some(DatabaseCorrupt) | Some(NotADatabase) => BufferError::Corrupt(e.to_string()),
            _ => BufferError::Io(e),
        }
    }
}

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE readings (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('next_seq', 1);
";

/// How much the buffer holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub readings: u64,
    pub bytes: u64,
    pub oldest_ts_ms: Option<i64>,
}

/// A buffered reading that could not be read back, and was removed.
#[derive(Debug, Clone, PartialEq)]
pub struct CorruptRow {
    pub seq: u64,
    pub error: String,
}

pub struct Store {
    conn: Connection,
    next_seq: u64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, BufferError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(BufferError::Corrupt(format!(
                "cannot switch to WAL (journal_mode is {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        match version {
            0 => {
                let tx = conn.unchecked_transaction()?;
                tx.execute_batch(SCHEMA)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()?;
            }
            SCHEMA_VERSION => {}
            v => {
                return Err(BufferError::Corrupt(format!(
                    "schema version {v} is newer than this agent's {SCHEMA_VERSION}"
                )))
            }
        }
        let next: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let next_seq = next
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| BufferError::Corrupt("meta.next_seq is missing".into()))?;
        Ok(Store { conn, next_seq })
    }

    /// The seq the next appended reading will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Stores `readings` with consecutive seqs in one transaction and returns
    /// the first and last seq given. Nothing is stored if it fails.
    pub fn append(&mut self, readings: &[Reading]) -> Result<Option<(u64, u64)>, BufferError> {
        if readings.is_empty() {
            return Ok(None);
        }
        let first = self.next_seq;
        let tx = self.conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO readings (seq, ts_ms, body) VALUES (?1, ?2, ?3)")?;
            for (seq, r) in (first..).zip(readings) {
                insert.execute(params![seq as i64, r.ts_ms, encode(r)])?;
            }
        }
        let next = first + readings.len() as u64;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
            [next as i64],
        )?;
        tx.commit()?;
        self.next_seq = next;
        Ok(Some((first, next - 1)))
    }

    /// Up to `max` held readings with seq >= `from`, in seq order. Rows that
    /// cannot be decoded are deleted and returned separately.
    #[allow(clippy::type_complexity)]
    pub fn read_from(
        &mut self,
        from: u64,
        max: usize,
    ) -> Result<(Vec<(u64, Reading)>, Vec<CorruptRow>), BufferError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, body FROM readings WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![from as i64, max as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })?;
            for row in rows {
                let (seq, body) = row?;
                match decode::<Reading>(&body) {
                    Ok(reading) => good.push((seq, reading)),
                    Err(e) => bad.push(CorruptRow {
                        seq,
                        error: e.to_string(),
                    }),
                }
            }
        }
        for row in &bad {
            self.delete_range(row.seq, row.seq)?;
        }
        Ok((good, bad))
    }

    /// Deletes the readings with `first <= seq <= last`; returns how many.
    pub fn delete_range(&mut self, first: u64, last: u64) -> Result<usize, BufferError> {
        Ok(self.conn.execute(
            "DELETE FROM readings WHERE seq BETWEEN ?1 AND ?2",
            params![first as i64, last.min(i64::MAX as u64) as i64],
        )?)
    }

    pub fn depth(&self) -> Result<Depth, BufferError> {
        Ok(self.conn.query_row(
            "SELECT count(*), coalesce(sum(length(body)), 0), min(ts_ms) FROM readings",
            [],
            |r| {
                Ok(Depth {
                    readings: r.get::<_, i64>(0)? as u64,
                    bytes: r.get::<_, i64>(1)? as u64,
                    oldest_ts_ms: r.get(2)?,
                })
            },
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aeris_wire::Value;

    pub(crate) fn reading(i: i64) -> Reading {
        Reading {
            sensor: format!("s{}", i % 3),
            ts_ms: 1_700_000_000_000 + i,
            lat: 52.0,
            lon: 13.0,
            flags: 0,
            values: vec![Value {
                quantity: "pm25".into(),
                value: i as f64,
            }],
        }
    }

    #[test]
    fn seqs_are_consecutive_and_survive_reopen_without_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.append(&[reading(1), reading(2)]).unwrap(), Some((1, 2)));
        assert_eq!(s.append(&[reading(3)]).unwrap(), Some((3, 3)));
        // Everything acked: the table is empty, yet seqs must not restart.
        assert_eq!(s.delete_range(1, 3).unwrap(), 3);
        drop(s);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.next_seq(), 4);
        assert_eq!(s.append(&[reading(4)]).unwrap(), Some((4, 4)));
    }

    #[test]
    fn read_from_returns_held_readings_in_order_and_depth_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("b.db")).unwrap();
        let rs: Vec<_> = (0..10).map(reading).collect();
        s.append(&rs).unwrap();
        s.delete_range(3, 5).unwrap();
        let (got, bad) = s.read_from(2, 4).unwrap();
        assert!(bad.is_empty());
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 6, 7, 8]);
        assert_eq!(got[1].1, rs[5]);
        let d = s.depth().unwrap();
        assert_eq!(d.readings, 7);
        assert_eq!(d.oldest_ts_ms, Some(1_700_000_000_000));
        assert!(d.bytes > 7 * 20);
    }

    #[test]
    fn a_corrupt_row_is_reported_and_removed_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("b.db")).unwrap();
        s.append(&[reading(1), reading(2), reading(3)]).unwrap();
        s.conn
            .execute("UPDATE readings SET body = x'01ff' WHERE seq = 2", [])
            .unwrap();
        let (good, bad) = s.read_from(0, 10).unwrap();
        assert_eq!(good.len(), 2);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].seq, 2);
        assert_eq!(s.depth().unwrap().readings, 2);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        match Store::open(&path) {
            Err(BufferError::Corrupt(_)) => {}
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("opened garbage as a buffer"),
        }
    }
}
