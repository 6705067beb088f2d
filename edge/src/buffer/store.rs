//! The on-disk buffer: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed transaction survives power loss.
//!
//! Invariants:
//! - a reading and its seq are written in one transaction, together with the
//!   next free seq in `meta`; a seq is never handed out twice, also across
//!   restarts, because `next_seq` only moves forward in the same commit;
//! - a raw reading is stored once per (sensor, timestamp): the local broker
//!   delivers a message again when the agent died between the commit and the
//!   broker receiving its ack, and that copy is recognised and not given a
//!   second seq;
//! - a reading is unsent until the cloud acknowledges its seq; acknowledged
//!   readings stay for `acked_grace` so the cloud can ask for them again
//!   (after restoring an older backup), then are deleted;
//! - past the disk budget, unsent data leaves only as counted losses: the
//!   oldest raw readings are first replaced by their window aggregates
//!   (`downsampled`), and only when nothing is left to downsample are the
//!   oldest rows deleted (`dropped`). The counts live in `meta`, in the same
//!   transaction as the change, so they survive restarts.
//!
//! Layout (schema version 2, `PRAGMA user_version`):
//! `readings(seq INTEGER PRIMARY KEY, ts_ms, sensor, kind, acked_ms, body)`
//! where `kind` is 0 for a raw reading and 1 for an aggregate, `acked_ms` is
//! when the cloud acknowledged it (NULL = unsent), and `body` is a
//! [`Reading`] framed by `aeris_wire::encode` (version byte + postcard);
//! `meta(key TEXT PRIMARY KEY, value INTEGER)` with `next_seq` and the loss
//! counters `lost_<reason>`. Version 1 files (no `sensor`, `kind`,
//! `acked_ms`) are migrated on open.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aeris_wire::{decode, encode, Reading, Value};
use rusqlite::{params, Connection, OptionalExtension};

/// `Reading::flags` bit: the reading is a window aggregate written by the
/// disk budget in place of raw readings. For each quantity `q` it carries
/// `q` (mean), `q.min`, `q.max` and `q.n` (how many raw values).
pub const FLAG_AGGREGATE: u32 = 1 << 3;

/// Why the buffer could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer database is full or its disk is: {0}")]
    Full(rusqlite::Error),
    #[error("buffer file is read-only: {0}")]
    ReadOnly(rusqlite::Error),
    #[error("buffer database is corrupt or not an Aeris buffer: {0}")]
    Corrupt(String),
    #[error("buffer database error: {0}")]
    Io(rusqlite::Error),
    #[error("buffer file {0} is not open (it could not be opened for writing)")]
    NotOpen(String),
    #[error("the buffer cannot be written and its memory backlog is full")]
    Backlogged,
    #[error("the buffer thread has stopped")]
    Closed,
}

impl BufferError {
    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BufferError::Full(_) => "full",
            BufferError::ReadOnly(_) => "read_only",
            BufferError::Corrupt(_) => "corrupt",
            BufferError::Io(_) => "io",
            BufferError::NotOpen(_) => "not_open",
            BufferError::Backlogged => "backlogged",
            BufferError::Closed => "closed",
        }
    }
}

impl From<rusqlite::Error> for BufferError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DiskFull) => BufferError::Full(e),
            Some(ReadOnly) => BufferError::ReadOnly(e),
            Some(DatabaseCorrupt) | Some(NotADatabase) => BufferError::Corrupt(e.to_string()),
            _ => BufferError::Io(e),
        }
    }
}

const SCHEMA_VERSION: i64 = 2;
const SCHEMA: &str = "
CREATE TABLE readings (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('next_seq', 1);
";
/// Version 1 to 2: raw-reading identity, aggregates, acked-but-kept rows.
const MIGRATE_2: &str = "
ALTER TABLE readings ADD COLUMN sensor TEXT NOT NULL DEFAULT '';
ALTER TABLE readings ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE readings ADD COLUMN acked_ms INTEGER;
";
const INDEXES_2: &str = "
CREATE UNIQUE INDEX readings_identity ON readings (sensor, ts_ms) WHERE kind = 0;
CREATE INDEX readings_unsent ON readings (kind, ts_ms) WHERE acked_ms IS NULL;
CREATE INDEX readings_acked ON readings (acked_ms) WHERE acked_ms IS NOT NULL;
";

/// Raw readings examined per downsampling step.
const DOWNSAMPLE_CHUNK: i64 = 2048;
/// The budget, once exceeded, is enforced down to this share of it, so that
/// eviction runs in steps rather than on every commit.
const LOW_WATER: f64 = 0.9;

/// How much the buffer holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Unsent readings (raw and aggregates), their encoded bytes, and the
    /// timestamp of the oldest.
    pub readings: u64,
    pub bytes: u64,
    pub oldest_ts_ms: Option<i64>,
    /// Acknowledged readings kept for the grace period.
    pub acked_held: u64,
    /// Bytes of the database file in use (pages not on the free list).
    pub used_bytes: u64,
}

/// A buffered reading that could not be read back, and was removed.
#[derive(Debug, Clone, PartialEq)]
pub struct CorruptRow {
    pub seq: u64,
    pub error: String,
}

/// What one append stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Readings stored, with seqs `first..first + stored`.
    pub first: u64,
    pub stored: u64,
    /// Readings already held under another seq (a broker redelivery).
    pub duplicates: u64,
}

/// What enforcing the budget did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Acknowledged readings deleted before their grace period ended.
    pub acked: u64,
    /// Raw readings replaced by aggregates, and the aggregates written.
    pub downsampled: u64,
    pub aggregates: u64,
    /// Unsent rows deleted.
    pub dropped: u64,
}

impl Evicted {
    pub fn any(&self) -> bool {
        *self != Evicted::default()
    }
}

/// The buffer's limits.
#[derive(Debug, Clone)]
pub struct Options {
    /// Disk budget of the database file, in bytes.
    pub max_bytes: u64,
    /// How long acknowledged readings are kept; 0 deletes on the ack.
    pub acked_grace_ms: i64,
    /// Aggregation window of the downsampling step, per sensor, and for the
    /// others.
    pub window_ms: HashMap<String, i64>,
    pub default_window_ms: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bytes: 1 << 30,
            acked_grace_ms: 3_600_000,
            window_ms: HashMap::new(),
            default_window_ms: 300_000,
        }
    }
}

pub struct Store {
    conn: Connection,
    next_seq: u64,
    options: Options,
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<i64>, BufferError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn meta_add(conn: &Connection, key: &str, n: u64) -> Result<(), BufferError> {
    if n > 0 {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            params![key, n as i64],
        )?;
    }
    Ok(())
}

impl Store {
    pub fn open(path: &Path, options: Options) -> Result<Store, BufferError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(BufferError::Corrupt(format!(
                "cannot switch to WAL (journal_mode is {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The WAL is truncated back to this after checkpoints, so the file
        // beside the database stays small next to the budget.
        conn.pragma_update(None, "journal_size_limit", 4 << 20)?;
        // Page cache: SQLite's default is 2 MB, an eighth of the agent's
        // memory budget. Appends touch the table's tail and a few pages of
        // each of its three indexes; 512 KiB holds them (README, edge
        // bench: same rate).
        conn.pragma_update(None, "cache_size", -512)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        match version {
            0 => {
                let tx = conn.unchecked_transaction()?;
                tx.execute_batch(SCHEMA)?;
                tx.execute_batch(MIGRATE_2)?;
                tx.execute_batch(INDEXES_2)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()?;
            }
            1 => migrate_from_1(&conn)?,
            SCHEMA_VERSION => {}
            v => {
                return Err(BufferError::Corrupt(format!(
                    "schema version {v} is newer than this agent's {SCHEMA_VERSION}"
                )))
            }
        }
        let next_seq = meta_get(&conn, "next_seq")?
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| BufferError::Corrupt("meta.next_seq is missing".into()))?;
        Ok(Store {
            conn,
            next_seq,
            options,
        })
    }

    /// The seq the next appended reading will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Stores `readings` with consecutive seqs in one transaction; a raw
    /// reading already held (same sensor and timestamp) is skipped and
    /// counted. Nothing is stored if it fails.
    pub fn append(&mut self, readings: &[Reading]) -> Result<Appended, BufferError> {
        Ok(self.append_groups(&[readings])?[0])
    }

    /// [`Store::append`] for several groups in one transaction (a group
    /// commit), with what each group stored.
    pub fn append_groups(&mut self, groups: &[&[Reading]]) -> Result<Vec<Appended>, BufferError> {
        let tx = self.conn.transaction()?;
        let mut seq = self.next_seq;
        let mut out = Vec::with_capacity(groups.len());
        let mut duplicates = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO readings (seq, ts_ms, sensor, kind, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for group in groups {
                let mut done = Appended {
                    first: seq,
                    ..Appended::default()
                };
                for r in group.iter() {
                    let kind = i64::from(r.flags & FLAG_AGGREGATE != 0);
                    let n =
                        insert.execute(params![seq as i64, r.ts_ms, r.sensor, kind, encode(r)])?;
                    if n == 1 {
                        seq += 1;
                        done.stored += 1;
                    } else {
                        done.duplicates += 1;
                    }
                }
                duplicates += done.duplicates;
                out.push(done);
            }
        }
        if seq != self.next_seq {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [seq as i64],
            )?;
        }
        meta_add(&tx, "duplicates", duplicates)?;
        tx.commit()?;
        self.next_seq = seq;
        Ok(out)
    }

    /// A write that changes nothing, to learn whether the file is writable.
    pub fn probe_write(&mut self) -> Result<(), BufferError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('probe', 0)
             ON CONFLICT (key) DO UPDATE SET value = value + 1",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Up to `max` unsent readings with seq >= `from`, in seq order. Rows
    /// that cannot be decoded are deleted, counted as `corrupt` losses and
    /// returned separately.
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
                "SELECT seq, body FROM readings WHERE seq >= ?1 AND acked_ms IS NULL
                 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![from.min(i64::MAX as u64) as i64, max as i64], |r| {
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
        if !bad.is_empty() {
            let tx = self.conn.transaction()?;
            for row in &bad {
                tx.execute("DELETE FROM readings WHERE seq = ?1", [row.seq as i64])?;
            }
            meta_add(&tx, "lost_corrupt", bad.len() as u64)?;
            tx.commit()?;
        }
        Ok((good, bad))
    }

    /// Marks the readings `first..=last` acknowledged at `now_ms` (deletes
    /// them when there is no grace period); returns how many were unsent.
    pub fn ack_range(&mut self, first: u64, last: u64, now_ms: i64) -> Result<usize, BufferError> {
        let (first, last) = (
            first.min(i64::MAX as u64) as i64,
            last.min(i64::MAX as u64) as i64,
        );
        if self.options.acked_grace_ms <= 0 {
            return Ok(self.conn.execute(
                "DELETE FROM readings WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL",
                params![first, last],
            )?);
        }
        Ok(self.conn.execute(
            "UPDATE readings SET acked_ms = ?3 WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL",
            params![first, last, now_ms],
        )?)
    }

    /// Deletes acknowledged readings whose grace period is over.
    pub fn purge_acked(&mut self, now_ms: i64) -> Result<usize, BufferError> {
        Ok(self.conn.execute(
            "DELETE FROM readings WHERE acked_ms IS NOT NULL AND acked_ms < ?1",
            [now_ms.saturating_sub(self.options.acked_grace_ms)],
        )?)
    }

    /// The cloud lacks what it acknowledged from `seq` on (restored from an
    /// older backup): every held reading from there is unsent again.
    pub fn unack_from(&mut self, seq: u64) -> Result<usize, BufferError> {
        Ok(self.conn.execute(
            "UPDATE readings SET acked_ms = NULL WHERE seq >= ?1 AND acked_ms IS NOT NULL",
            [seq.min(i64::MAX as u64) as i64],
        )?)
    }

    pub fn depth(&self) -> Result<Depth, BufferError> {
        let (readings, bytes, oldest_ts_ms) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(length(body)), 0), min(ts_ms)
             FROM readings WHERE acked_ms IS NULL",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get(2)?,
                ))
            },
        )?;
        let acked_held = self.conn.query_row(
            "SELECT count(*) FROM readings WHERE acked_ms IS NOT NULL",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        Ok(Depth {
            readings,
            bytes,
            oldest_ts_ms,
            acked_held,
            used_bytes: self.used_bytes()?,
        })
    }

    /// Bytes of the database file holding data (free pages excluded).
    pub fn used_bytes(&self) -> Result<u64, BufferError> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((pages - free).max(0) as u64 * size.max(0) as u64)
    }

    /// Readings lost since the buffer was created, by reason.
    pub fn losses(&self) -> Result<BTreeMap<String, u64>, BufferError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM meta WHERE key LIKE 'lost\\_%' ESCAPE '\\'")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, v) = row?;
            if v > 0 {
                out.insert(k.trim_start_matches("lost_").to_owned(), v as u64);
            }
        }
        Ok(out)
    }

    /// Brings the database back under its budget if it is over: acked rows
    /// first, then the oldest raw readings become window aggregates, and
    /// only when nothing is left to downsample are the oldest rows dropped.
    pub fn enforce_budget(&mut self) -> Result<Evicted, BufferError> {
        let mut done = Evicted::default();
        if self.used_bytes()? <= self.options.max_bytes {
            return Ok(done);
        }
        let target = (self.options.max_bytes as f64 * LOW_WATER) as u64;
        while self.used_bytes()? > target {
            let acked = self.conn.execute(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings
                 WHERE acked_ms IS NOT NULL ORDER BY acked_ms LIMIT ?1)",
                [DOWNSAMPLE_CHUNK],
            )? as u64;
            if acked > 0 {
                done.acked += acked;
                continue;
            }
            let (replaced, written) = self.downsample_oldest()?;
            if replaced > 0 {
                done.downsampled += replaced;
                done.aggregates += written;
                continue;
            }
            let dropped = self.drop_oldest()?;
            if dropped == 0 {
                // Nothing unsent is left; the rest is SQLite's own overhead.
                break;
            }
            done.dropped += dropped;
        }
        Ok(done)
    }

    fn window_of(&self, sensor: &str) -> i64 {
        self.options
            .window_ms
            .get(sensor)
            .copied()
            .unwrap_or(self.options.default_window_ms)
            .max(1)
    }

    /// Replaces the oldest unsent raw readings that share a window with
    /// their aggregates. Returns (raw readings replaced, aggregates written);
    /// (0, 0) when no window among the oldest holds two readings.
    fn downsample_oldest(&mut self) -> Result<(u64, u64), BufferError> {
        let rows: Vec<(u64, Vec<u8>)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, body FROM readings WHERE acked_ms IS NULL AND kind = 0
                 ORDER BY ts_ms LIMIT ?1",
            )?;
            let rows = stmt.query_map([DOWNSAMPLE_CHUNK], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        // (sensor, window start) -> readings, in time order.
        let mut groups: BTreeMap<(String, i64), Vec<(u64, Reading)>> = BTreeMap::new();
        let mut corrupt = Vec::new();
        for (seq, body) in rows {
            match decode::<Reading>(&body) {
                Ok(r) => {
                    let len = self.window_of(&r.sensor);
                    let start = r.ts_ms - r.ts_ms.rem_euclid(len);
                    groups
                        .entry((r.sensor.clone(), start))
                        .or_default()
                        .push((seq, r));
                }
                Err(_) => corrupt.push(seq),
            }
        }
        let tx = self.conn.transaction()?;
        for seq in &corrupt {
            tx.execute("DELETE FROM readings WHERE seq = ?1", [*seq as i64])?;
        }
        meta_add(&tx, "lost_corrupt", corrupt.len() as u64)?;
        let mut seq = self.next_seq;
        let (mut replaced, mut written) = (0u64, 0u64);
        for ((_, start), members) in groups.into_iter().filter(|(_, m)| m.len() >= 2) {
            let aggregate = aggregate(start, &members);
            for (s, _) in &members {
                tx.execute("DELETE FROM readings WHERE seq = ?1", [*s as i64])?;
            }
            tx.execute(
                "INSERT INTO readings (seq, ts_ms, sensor, kind, body) VALUES (?1, ?2, ?3, 1, ?4)",
                params![
                    seq as i64,
                    aggregate.ts_ms,
                    aggregate.sensor,
                    encode(&aggregate)
                ],
            )?;
            seq += 1;
            replaced += members.len() as u64;
            written += 1;
        }
        if written > 0 {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [seq as i64],
            )?;
            meta_add(&tx, "lost_downsampled", replaced)?;
        }
        tx.commit()?;
        self.next_seq = seq;
        Ok((replaced, written))
    }

    /// Deletes the oldest unsent rows, raw or aggregate; returns how many.
    fn drop_oldest(&mut self) -> Result<u64, BufferError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings
             WHERE acked_ms IS NULL ORDER BY ts_ms LIMIT ?1)",
            [DOWNSAMPLE_CHUNK / 4],
        )? as u64;
        meta_add(&tx, "lost_dropped", n)?;
        tx.commit()?;
        Ok(n)
    }
}

/// The aggregate of one sensor's readings in the window starting at `start`:
/// per quantity the mean under its own name, and `.min`, `.max`, `.n`. The
/// position is the last reading's; the flags are all of theirs, plus
/// [`FLAG_AGGREGATE`].
fn aggregate(start: i64, members: &[(u64, Reading)]) -> Reading {
    let mut stats: BTreeMap<&str, (f64, f64, f64, u64)> = BTreeMap::new();
    let mut flags = FLAG_AGGREGATE;
    for (_, r) in members {
        flags |= r.flags;
        for v in &r.values {
            let e = stats.entry(v.quantity.as_str()).or_insert((
                0.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
                0,
            ));
            e.0 += v.value;
            e.1 = e.1.min(v.value);
            e.2 = e.2.max(v.value);
            e.3 += 1;
        }
    }
    // Four values per quantity while they fit; the mean of every quantity
    // always.
    let full = stats.len() * 4 <= aeris_wire::message::MAX_VALUES_PER_READING;
    let mut values = Vec::new();
    for (q, (sum, min, max, n)) in &stats {
        values.push(Value {
            quantity: (*q).to_owned(),
            value: sum / *n as f64,
        });
        if full {
            for (suffix, v) in [("min", *min), ("max", *max), ("n", *n as f64)] {
                values.push(Value {
                    quantity: format!("{q}.{suffix}"),
                    value: v,
                });
            }
        }
    }
    values.truncate(aeris_wire::message::MAX_VALUES_PER_READING);
    let last = &members[members.len() - 1].1;
    Reading {
        sensor: last.sensor.clone(),
        ts_ms: start,
        lat: last.lat,
        lon: last.lon,
        flags,
        values,
    }
}

/// Schema 1 to 2: fills the new `sensor` column from the bodies; copies of
/// the same raw reading (the redelivery case schema 1 could not recognise)
/// keep their lowest seq and are counted as `duplicates`.
fn migrate_from_1(conn: &Connection) -> Result<(), BufferError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(MIGRATE_2)?;
    let rows: Vec<(i64, Vec<u8>)> = {
        let mut stmt = tx.prepare("SELECT seq, body FROM readings ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0u64;
    for (seq, body) in rows {
        // Undecodable rows stay; reading them back counts them as corrupt.
        let Ok(r) = decode::<Reading>(&body) else {
            tx.execute(
                "UPDATE readings SET sensor = ?2 WHERE seq = ?1",
                params![seq, format!("\u{0}corrupt-{seq}")],
            )?;
            continue;
        };
        if seen.insert((r.sensor.clone(), r.ts_ms)) {
            tx.execute(
                "UPDATE readings SET sensor = ?2 WHERE seq = ?1",
                params![seq, r.sensor],
            )?;
        } else {
            tx.execute("DELETE FROM readings WHERE seq = ?1", [seq])?;
            duplicates += 1;
        }
    }
    tx.execute_batch(INDEXES_2)?;
    meta_add(&tx, "duplicates", duplicates)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn open(path: &Path) -> Store {
        Store::open(
            path,
            Options {
                acked_grace_ms: 0,
                ..Options::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn seqs_are_consecutive_and_survive_reopen_without_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let mut s = open(&path);
        let a = s.append(&[reading(1), reading(2)]).unwrap();
        assert_eq!((a.first, a.stored), (1, 2));
        assert_eq!(s.append(&[reading(3)]).unwrap().first, 3);
        // Everything acked: the table is empty, yet seqs must not restart.
        assert_eq!(s.ack_range(1, 3, 0).unwrap(), 3);
        assert_eq!(s.depth().unwrap().readings, 0);
        drop(s);
        let mut s = open(&path);
        assert_eq!(s.next_seq(), 4);
        assert_eq!(s.append(&[reading(4)]).unwrap().first, 4);
    }

    #[test]
    fn a_redelivered_reading_gets_no_second_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("b.db"));
        s.append(&[reading(1), reading(2)]).unwrap();
        let a = s.append(&[reading(2), reading(3)]).unwrap();
        assert_eq!((a.first, a.stored, a.duplicates), (3, 1, 1));
        let (rows, _) = s.read_from(0, 10).unwrap();
        let got: Vec<(u64, i64)> = rows.iter().map(|(q, r)| (*q, r.ts_ms)).collect();
        let t = 1_700_000_000_000;
        assert_eq!(got, vec![(1, t + 1), (2, t + 2), (3, t + 3)]);
        // Same instant, another sensor: a different reading.
        let mut other = reading(2);
        other.sensor = "x".into();
        assert_eq!(s.append(&[other]).unwrap().stored, 1);
    }

    #[test]
    fn read_from_returns_unsent_readings_in_order_and_depth_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("b.db"));
        let rs: Vec<_> = (0..10).map(reading).collect();
        s.append(&rs).unwrap();
        s.ack_range(3, 5, 0).unwrap();
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
    fn acked_readings_are_kept_for_the_grace_period_and_can_be_unacked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(
            &dir.path().join("b.db"),
            Options {
                acked_grace_ms: 1000,
                ..Options::default()
            },
        )
        .unwrap();
        s.append(&(0..6).map(reading).collect::<Vec<_>>()).unwrap();
        assert_eq!(s.ack_range(1, 4, 10_000).unwrap(), 4);
        // Acking twice does not count twice.
        assert_eq!(s.ack_range(1, 4, 10_500).unwrap(), 0);
        let d = s.depth().unwrap();
        assert_eq!((d.readings, d.acked_held), (2, 4));
        assert_eq!(s.read_from(0, 10).unwrap().0.len(), 2);
        // The cloud lost what it acked from seq 3 on.
        assert_eq!(s.unack_from(3).unwrap(), 2);
        let seqs: Vec<u64> = s.read_from(0, 10).unwrap().0.iter().map(|r| r.0).collect();
        assert_eq!(seqs, vec![3, 4, 5, 6]);
        // Grace over for seqs 1-2 (acked at 10_000) only after 11_000.
        assert_eq!(s.purge_acked(10_999).unwrap(), 0);
        assert_eq!(s.purge_acked(11_001).unwrap(), 2);
        assert_eq!(s.depth().unwrap().acked_held, 0);
        assert_eq!(s.next_seq(), 7);
    }

    fn series(sensor: &str, n: i64, step_ms: i64) -> Vec<Reading> {
        (0..n)
            .map(|i| Reading {
                sensor: sensor.into(),
                ts_ms: 1_700_000_000_000 + i * step_ms,
                lat: 1.0,
                lon: 2.0,
                flags: if i == 300 { 1 << 1 } else { 0 },
                values: vec![
                    Value {
                        quantity: "pm25".into(),
                        value: i as f64,
                    },
                    Value {
                        quantity: "pm10".into(),
                        value: 2.0 * i as f64,
                    },
                ],
            })
            .collect()
    }

    #[test]
    fn over_budget_the_oldest_raw_readings_become_aggregates_then_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(
            &dir.path().join("b.db"),
            Options {
                max_bytes: 1 << 20,
                acked_grace_ms: 3_600_000,
                window_ms: HashMap::new(),
                default_window_ms: 60_000,
            },
        )
        .unwrap();
        // 20,000 readings one second apart: ~3 MB, three times the budget.
        let all = series("a", 20_000, 1000);
        for chunk in all.chunks(1000) {
            s.append(chunk).unwrap();
        }
        // Acked readings go first.
        s.ack_range(1, 100, 0).unwrap();
        let e = s.enforce_budget().unwrap();
        assert_eq!(e.acked, 100);
        assert!(e.downsampled > 0 && e.aggregates > 0, "{e:?}");
        assert!(s.used_bytes().unwrap() <= 1 << 20);
        let losses = s.losses().unwrap();
        assert_eq!(losses.get("downsampled"), Some(&e.downsampled));
        // Every raw reading is accounted for: still raw, inside an
        // aggregate's `.n`, or counted as dropped.
        let (rows, _) = s.read_from(0, 100_000).unwrap();
        let mut raw = 0u64;
        let mut in_aggregates = 0f64;
        for (_, r) in &rows {
            if r.flags & FLAG_AGGREGATE != 0 {
                let n = r.values.iter().find(|v| v.quantity == "pm25.n").unwrap();
                in_aggregates += n.value;
                assert_eq!(r.ts_ms % 60_000, 0, "aggregates start at their window");
                let mean = r.values.iter().find(|v| v.quantity == "pm25").unwrap();
                let min = r.values.iter().find(|v| v.quantity == "pm25.min").unwrap();
                let max = r.values.iter().find(|v| v.quantity == "pm25.max").unwrap();
                assert_eq!(mean.value, (min.value + max.value) / 2.0);
            } else {
                raw += 1;
            }
        }
        let dropped = losses.get("dropped").copied().unwrap_or(0);
        assert_eq!(dropped, e.dropped);
        assert_eq!(
            raw + in_aggregates as u64 + 100,
            20_000,
            "raw {raw} + aggregated {in_aggregates} + acked 100"
        );
        assert_eq!(dropped, 0, "downsampling alone fits this budget");
        // The flag of reading 300 survives in its aggregate.
        assert!(rows.iter().any(|(_, r)| r.flags == FLAG_AGGREGATE | 1 << 1));
        // Seqs of aggregates are new, never reused.
        let max_seq = rows.iter().map(|r| r.0).max().unwrap();
        assert_eq!(max_seq + 1, s.next_seq());
        assert!(s.next_seq() > 20_001);
    }

    #[test]
    fn readings_that_share_no_window_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(
            &dir.path().join("b.db"),
            Options {
                max_bytes: 1 << 20,
                acked_grace_ms: 0,
                window_ms: HashMap::new(),
                default_window_ms: 1000,
            },
        )
        .unwrap();
        // One reading per window: nothing to aggregate.
        let all = series("b", 20_000, 5000);
        for chunk in all.chunks(1000) {
            s.append(chunk).unwrap();
        }
        let e = s.enforce_budget().unwrap();
        assert_eq!(e.downsampled, 0);
        assert!(e.dropped > 0);
        assert!(s.used_bytes().unwrap() <= 1 << 20);
        let held = s.depth().unwrap().readings;
        assert_eq!(held + e.dropped, 20_000);
        assert_eq!(s.losses().unwrap().get("dropped"), Some(&e.dropped));
        // The newest survive.
        let (rows, _) = s.read_from(0, 1_000_000).unwrap();
        assert_eq!(rows.last().unwrap().1.ts_ms, all[19_999].ts_ms);
    }

    #[test]
    fn a_corrupt_row_is_reported_and_removed_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("b.db"));
        s.append(&[reading(1), reading(2), reading(3)]).unwrap();
        s.conn
            .execute("UPDATE readings SET body = x'01ff' WHERE seq = 2", [])
            .unwrap();
        let (good, bad) = s.read_from(0, 10).unwrap();
        assert_eq!(good.len(), 2);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].seq, 2);
        assert_eq!(s.depth().unwrap().readings, 2);
        assert_eq!(s.losses().unwrap().get("corrupt"), Some(&1));
    }

    #[test]
    fn a_version_1_buffer_is_migrated_and_its_duplicates_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for (seq, r) in [(1, reading(1)), (2, reading(2)), (3, reading(1))] {
                conn.execute(
                    "INSERT INTO readings (seq, ts_ms, body) VALUES (?1, ?2, ?3)",
                    params![seq, r.ts_ms, encode(&r)],
                )
                .unwrap();
            }
            conn.execute("UPDATE meta SET value = 4 WHERE key = 'next_seq'", [])
                .unwrap();
        }
        let mut s = open(&path);
        let seqs: Vec<u64> = s.read_from(0, 10).unwrap().0.iter().map(|r| r.0).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(s.next_seq(), 4);
        assert_eq!(s.append(&[reading(2)]).unwrap().duplicates, 1);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        match Store::open(&path, Options::default()) {
            Err(BufferError::Corrupt(_)) => {}
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("opened garbage as a buffer"),
        }
    }
}
