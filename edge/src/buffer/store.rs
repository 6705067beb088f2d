//! The on-disk buffer: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed transaction survives power loss.
//!
//! Invariants:
//! - a reading and its seq are written in one transaction, together with the
//!   next free seq in `meta`; a seq is never handed out twice, also across
//!   restarts, because `next_seq` only moves forward in the same commit;
//! - a sensor message delivered for the first time is always stored, whatever
//!   its sensor and timestamp: several readings may share a second, or have
//!   no timestamp of their own. Only a broker *redelivery* is recognised and
//!   not stored again: a QoS 1 PUBLISH with the DUP flag whose packet id,
//!   topic and payload (a SHA-256 digest of both) match the last message
//!   committed under that packet id (table `deliveries`, one row per packet
//!   id, written in the same transaction as the message's readings). The
//!   broker reuses a packet id only after the previous message under it was
//!   acknowledged, so the ledger never needs more than 65,535 rows;
//! - seqs are taken from `meta.next_seq` inside an immediate transaction and
//!   inserted with a plain `INSERT`: a seq that is already used is an error,
//!   never a silently ignored row;
//! - a reading is unsent until the cloud acknowledges its seq; acknowledged
//!   readings stay for `acked_grace` so the cloud can ask for them again
//!   (after restoring an older backup), then are deleted;
//! - past the disk budget, unsent data leaves only as counted losses: the
//!   oldest raw readings are first replaced by their window aggregates
//!   (`downsampled`), and only when nothing is left to downsample are the
//!   oldest rows deleted (`dropped`). The counts live in `meta`, in the same
//!   transaction as the change, so they survive restarts. A row that was
//!   published (`sent_ms`) and not acknowledged may already be committed in
//!   the cloud: it is never downsampled (the cloud would hold it twice, raw
//!   and in the aggregate), and dropped only when nothing else is left;
//! - when the cloud says seqs are held there by other readings
//!   ([`Store::renumber`]), the rows in that range move to new seqs above
//!   the cloud's highest, unsent, and `next_seq` never goes below it;
//! - only a published row (`sent_ms`) can be acknowledged.
//!
//! Layout (schema version 3, `PRAGMA user_version`):
//! `readings(seq INTEGER PRIMARY KEY, ts_ms, sensor, kind, acked_ms, fmt,
//! sent_ms, body)` where `kind` is 0 for a raw reading and 1 for an
//! aggregate, `acked_ms` is when the cloud acknowledged it (NULL = unsent),
//! `sent_ms` when it was last published unacknowledged (NULL = never),
//! and `body` is the reading in row format `fmt` ([`super::row`]);
//! `deliveries(pkid INTEGER PRIMARY KEY, digest BLOB, first_seq, n)`;
//! `meta(key TEXT PRIMARY KEY, value INTEGER)` with `next_seq` and the loss
//! counters `lost_<reason>`. Version 1 and 2 files are migrated on open;
//! their rows keep row format 1.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aeris_wire::{Reading, Value};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::row::{self, ROW_FORMAT};

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

const SCHEMA_VERSION: i64 = 3;
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
#[cfg(test)]
const IDENTITY_2: &str = "
CREATE UNIQUE INDEX readings_identity ON readings (sensor, ts_ms) WHERE kind = 0;
";
const INDEXES_2: &str = "
CREATE INDEX readings_unsent ON readings (kind, ts_ms) WHERE acked_ms IS NULL;
CREATE INDEX readings_acked ON readings (acked_ms) WHERE acked_ms IS NOT NULL;
";
/// Version 2 to 3: distinct readings that share a sensor and timestamp are
/// all kept (redeliveries are recognised by the ledger instead), rows carry
/// their format, and published rows are marked.
const MIGRATE_3: &str = "
DROP INDEX IF EXISTS readings_identity;
ALTER TABLE readings ADD COLUMN fmt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE readings ADD COLUMN sent_ms INTEGER;
CREATE TABLE deliveries (pkid INTEGER PRIMARY KEY, digest BLOB NOT NULL,
                         first_seq INTEGER NOT NULL, n INTEGER NOT NULL);
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
    /// The message was a broker redelivery of one already committed: nothing
    /// was stored, and `first` and `stored` name what the original got.
    pub redelivered: bool,
}

/// How a sensor message reached the agent, to recognise a redelivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The MQTT packet id (QoS 1).
    pub pkid: u16,
    /// The broker set DUP: it may have delivered this message before.
    pub dup: bool,
    /// SHA-256 of the topic and payload, truncated to 16 bytes.
    pub digest: [u8; 16],
}

impl Delivery {
    pub fn new(pkid: u16, dup: bool, topic: &str, payload: &[u8]) -> Delivery {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Length-prefixed, so topic/payload boundaries cannot shift.
        h.update((topic.len() as u64).to_le_bytes());
        h.update(topic.as_bytes());
        h.update(payload);
        let full = h.finalize();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        Delivery { pkid, dup, digest }
    }
}

/// One sensor message's readings for [`Store::append_groups`].
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub delivery: Option<Delivery>,
    pub readings: &'a [Reading],
}

/// What renumbering did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Renumbered {
    /// Rows moved, and the first new seq they got.
    pub moved: u64,
    pub first_new: u64,
    /// The seq the next reading gets.
    pub next_seq: u64,
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
                tx.execute_batch(MIGRATE_3)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()?;
            }
            1 => {
                migrate_from_1(&conn)?;
                migrate_from_2(&conn)?;
            }
            2 => migrate_from_2(&conn)?,
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

    /// Stores `readings` with consecutive seqs in one transaction. Nothing
    /// is stored if it fails.
    pub fn append(&mut self, readings: &[Reading]) -> Result<Appended, BufferError> {
        let msg = Message {
            delivery: None,
            readings,
        };
        Ok(self.append_groups(&[msg])?[0])
    }

    /// Stores several sensor messages in one transaction (a group commit),
    /// with what each stored. A redelivered message (see the module's
    /// invariants) stores nothing. Nothing is stored if it fails.
    pub fn append_groups(&mut self, groups: &[Message<'_>]) -> Result<Vec<Appended>, BufferError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the write lock: the file, not this process's memory,
        // says which seqs are free.
        let start = meta_get(&tx, "next_seq")?
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| BufferError::Corrupt("meta.next_seq is missing".into()))?;
        let mut seq = start;
        let mut out = Vec::with_capacity(groups.len());
        let mut redelivered = 0u64;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (seq, ts_ms, sensor, kind, fmt, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut known = tx.prepare_cached(
                "SELECT first_seq, n FROM deliveries WHERE pkid = ?1 AND digest = ?2",
            )?;
            let mut record = tx.prepare_cached(
                "INSERT OR REPLACE INTO deliveries (pkid, digest, first_seq, n)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for group in groups {
                if let Some(d) = group.delivery.filter(|d| d.dup) {
                    let original: Option<(i64, i64)> = known
                        .query_row(params![d.pkid, &d.digest[..]], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()?;
                    if let Some((first, n)) = original {
                        redelivered += 1;
                        out.push(Appended {
                            first: first as u64,
                            stored: n as u64,
                            redelivered: true,
                        });
                        continue;
                    }
                }
                let first = seq;
                for r in group.readings {
                    let kind = i64::from(r.flags & FLAG_AGGREGATE != 0);
                    insert.execute(params![
                        seq as i64,
                        r.ts_ms,
                        r.sensor,
                        kind,
                        ROW_FORMAT,
                        row::encode(r)
                    ])?;
                    seq += 1;
                }
                if let Some(d) = group.delivery {
                    record.execute(params![
                        d.pkid,
                        &d.digest[..],
                        first as i64,
                        group.readings.len() as i64
                    ])?;
                }
                out.push(Appended {
                    first,
                    stored: seq - first,
                    redelivered: false,
                });
            }
        }
        if seq != start {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [seq as i64],
            )?;
        }
        meta_add(&tx, "redelivered", redelivered)?;
        tx.commit()?;
        self.next_seq = seq;
        Ok(out)
    }

    /// Marks the unacknowledged rows `first..=last` published at `now_ms`:
    /// from now on they may be committed in the cloud.
    pub fn mark_sent(&mut self, first: u64, last: u64, now_ms: i64) -> Result<usize, BufferError> {
        Ok(self.conn.execute(
            "UPDATE readings SET sent_ms = ?3
             WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL AND sent_ms IS NULL",
            params![clamp(first), clamp(last), now_ms],
        )?)
    }

    /// The cloud holds other readings under seqs `first..=last`: each row
    /// there gets a new seq, in order, from `max(next_seq, floor)` on, and
    /// is unsent again; `next_seq` never goes below `floor` again. A row
    /// there that is marked acknowledged was acked by mistake (a stale ack
    /// for the same seq of a deleted buffer), so it moves too. A repeated
    /// call finds nothing left to move.
    pub fn renumber(
        &mut self,
        first: u64,
        last: u64,
        floor: u64,
    ) -> Result<Renumbered, BufferError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = meta_get(&tx, "next_seq")?
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| BufferError::Corrupt("meta.next_seq is missing".into()))?;
        let mut next = current.max(floor).min(i64::MAX as u64);
        let first_new = next;
        let seqs: Vec<i64> = {
            let mut stmt =
                tx.prepare("SELECT seq FROM readings WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq")?;
            let rows = stmt.query_map(params![clamp(first), clamp(last)], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for old in &seqs {
            tx.execute(
                "UPDATE readings SET seq = ?2, sent_ms = NULL, acked_ms = NULL WHERE seq = ?1",
                params![old, next as i64],
            )?;
            next += 1;
        }
        if next != current {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [next as i64],
            )?;
        }
        meta_add(&tx, "renumbered", seqs.len() as u64)?;
        tx.commit()?;
        self.next_seq = next;
        Ok(Renumbered {
            moved: seqs.len() as u64,
            first_new,
            next_seq: next,
        })
    }

    /// How often something happened since the buffer was created
    /// (`redelivered`, `renumbered`).
    pub fn count(&self, key: &str) -> Result<u64, BufferError> {
        Ok(meta_get(&self.conn, key)?.map_or(0, |v| v.max(0) as u64))
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
                "SELECT seq, fmt, body FROM readings WHERE seq >= ?1 AND acked_ms IS NULL
                 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![clamp(from), max as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            for row in rows {
                let (seq, fmt, body) = row?;
                match row::decode(fmt, &body) {
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
    /// Only rows that were published can be acknowledged: a stale ack for
    /// seqs of a deleted buffer, arriving after new readings took them,
    /// leaves the new readings unsent.
    pub fn ack_range(&mut self, first: u64, last: u64, now_ms: i64) -> Result<usize, BufferError> {
        let (first, last) = (
            first.min(i64::MAX as u64) as i64,
            last.min(i64::MAX as u64) as i64,
        );
        if self.options.acked_grace_ms <= 0 {
            return Ok(self.conn.execute(
                "DELETE FROM readings
                 WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL AND sent_ms IS NOT NULL",
                params![first, last],
            )?);
        }
        Ok(self.conn.execute(
            "UPDATE readings SET acked_ms = ?3
             WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL AND sent_ms IS NOT NULL",
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
        let rows: Vec<(u64, i64, Vec<u8>)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, fmt, body FROM readings
                 WHERE acked_ms IS NULL AND kind = 0 AND sent_ms IS NULL
                 ORDER BY ts_ms LIMIT ?1",
            )?;
            let rows = stmt.query_map([DOWNSAMPLE_CHUNK], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        // (sensor, window start) -> readings, in time order.
        let mut groups: BTreeMap<(String, i64), Vec<(u64, Reading)>> = BTreeMap::new();
        let mut corrupt = Vec::new();
        for (seq, fmt, body) in rows {
            match row::decode(fmt, &body) {
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for seq in &corrupt {
            tx.execute("DELETE FROM readings WHERE seq = ?1", [*seq as i64])?;
        }
        meta_add(&tx, "lost_corrupt", corrupt.len() as u64)?;
        let mut seq = meta_get(&tx, "next_seq")?
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| BufferError::Corrupt("meta.next_seq is missing".into()))?;
        let (mut replaced, mut written) = (0u64, 0u64);
        for ((_, start), members) in groups.into_iter().filter(|(_, m)| m.len() >= 2) {
            let aggregate = aggregate(start, &members);
            for (s, _) in &members {
                tx.execute("DELETE FROM readings WHERE seq = ?1", [*s as i64])?;
            }
            tx.execute(
                "INSERT INTO readings (seq, ts_ms, sensor, kind, fmt, body)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5)",
                params![
                    seq as i64,
                    aggregate.ts_ms,
                    aggregate.sensor,
                    ROW_FORMAT,
                    row::encode(&aggregate)
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

    /// Deletes the oldest unacknowledged rows, raw or aggregate, never
    /// published ones first; returns how many.
    fn drop_oldest(&mut self) -> Result<u64, BufferError> {
        let tx = self.conn.transaction()?;
        let mut n = tx.execute(
            "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings
             WHERE acked_ms IS NULL AND sent_ms IS NULL ORDER BY ts_ms LIMIT ?1)",
            [DOWNSAMPLE_CHUNK / 4],
        )? as u64;
        if n == 0 {
            n = tx.execute(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings
                 WHERE acked_ms IS NULL ORDER BY ts_ms LIMIT ?1)",
                [DOWNSAMPLE_CHUNK / 4],
            )? as u64;
        }
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

/// Schema 1 to 2: fills the new `sensor` column from the bodies. Every row
/// is kept: schema 2's identity index (which dropped distinct readings
/// sharing a sensor and timestamp) is not created on this path.
fn migrate_from_1(conn: &Connection) -> Result<(), BufferError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(MIGRATE_2)?;
    let rows: Vec<(i64, Vec<u8>)> = {
        let mut stmt = tx.prepare("SELECT seq, body FROM readings ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (seq, body) in rows {
        // Undecodable rows stay; reading them back counts them as corrupt.
        let sensor = match row::decode(1, &body) {
            Ok(r) => r.sensor,
            Err(_) => format!("\u{0}corrupt-{seq}"),
        };
        tx.execute(
            "UPDATE readings SET sensor = ?2 WHERE seq = ?1",
            params![seq, sensor],
        )?;
    }
    tx.execute_batch(INDEXES_2)?;
    tx.pragma_update(None, "user_version", 2)?;
    tx.commit()?;
    Ok(())
}

/// Schema 2 to 3 ([`MIGRATE_3`]); rows keep their bodies, as format 1.
fn migrate_from_2(conn: &Connection) -> Result<(), BufferError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(MIGRATE_3)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

fn clamp(seq: u64) -> i64 {
    seq.min(i64::MAX as u64) as i64
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

    /// Publishes and acknowledges `first..=last`, as the uplink does.
    fn sent_and_acked(
        s: &mut Store,
        first: u64,
        last: u64,
        now_ms: i64,
    ) -> Result<usize, BufferError> {
        s.mark_sent(first, last, now_ms)?;
        s.ack_range(first, last, now_ms)
    }

    #[test]
    fn only_published_readings_can_be_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("b.db"));
        s.append(&[reading(1), reading(2)]).unwrap();
        // A stale ack (for seqs of a deleted buffer) finds nothing sent.
        assert_eq!(s.ack_range(1, 2, 0).unwrap(), 0);
        assert_eq!(s.depth().unwrap().readings, 2);
        s.mark_sent(1, 1, 0).unwrap();
        assert_eq!(s.ack_range(1, 2, 0).unwrap(), 1);
        assert_eq!(s.depth().unwrap().readings, 1);
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
        assert_eq!(sent_and_acked(&mut s, 1, 3, 0).unwrap(), 3);
        assert_eq!(s.depth().unwrap().readings, 0);
        drop(s);
        let mut s = open(&path);
        assert_eq!(s.next_seq(), 4);
        assert_eq!(s.append(&[reading(4)]).unwrap().first, 4);
    }

    fn delivery(pkid: u16, dup: bool, payload: &str) -> Delivery {
        Delivery::new(pkid, dup, "sensors/s1", payload.as_bytes())
    }

    fn msg(delivery: Delivery, readings: &[Reading]) -> Message<'_> {
        Message {
            delivery: Some(delivery),
            readings,
        }
    }

    #[test]
    fn distinct_readings_of_one_sensor_and_second_are_all_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("b.db"));
        // Three quantities on three topics at one `ts`, and a sensor
        // without a clock: same sensor, same millisecond.
        let mut rs = vec![reading(0), reading(0), reading(0)];
        for (i, r) in rs.iter_mut().enumerate() {
            r.values[0].quantity = ["pm25", "no2", "rh"][i].into();
        }
        let a = s.append(&rs).unwrap();
        assert_eq!((a.first, a.stored, a.redelivered), (1, 3, false));
        let (rows, _) = s.read_from(0, 10).unwrap();
        assert_eq!(rows.into_iter().map(|r| r.1).collect::<Vec<_>>(), rs);
    }

    #[test]
    fn only_a_dup_delivery_of_a_committed_message_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("b.db"));
        let (r1, r2) = ([reading(1)], [reading(2)]);
        let first = delivery(7, false, "a");
        let done = s.append_groups(&[msg(first, &r1)]).unwrap();
        assert_eq!(done[0].first, 1);
        // The same payload again without DUP: the sensor sent it twice.
        let again = s
            .append_groups(&[msg(delivery(8, false, "a"), &r1)])
            .unwrap();
        assert_eq!((again[0].first, again[0].redelivered), (2, false));
        // DUP with the packet id and bytes of the first: a redelivery.
        let dup = s
            .append_groups(&[msg(delivery(7, true, "a"), &r1)])
            .unwrap();
        assert_eq!(
            dup[0],
            Appended {
                first: 1,
                stored: 1,
                redelivered: true
            }
        );
        // DUP whose first delivery never committed (the agent died first).
        let fresh = s
            .append_groups(&[msg(delivery(9, true, "b"), &r2)])
            .unwrap();
        assert_eq!((fresh[0].first, fresh[0].redelivered), (3, false));
        // DUP under a reused packet id with other bytes: a new message.
        let reused = s
            .append_groups(&[msg(delivery(7, true, "c"), &r2)])
            .unwrap();
        assert_eq!((reused[0].first, reused[0].redelivered), (4, false));
        // The ledger now names "c" under packet id 7, so "a" is new again.
        let old = s
            .append_groups(&[msg(delivery(7, true, "a"), &r1)])
            .unwrap();
        assert!(!old[0].redelivered);
        // A redelivery of a message committed in the same group commit.
        let both = s
            .append_groups(&[
                msg(delivery(10, false, "d"), &r1),
                msg(delivery(10, true, "d"), &r1),
            ])
            .unwrap();
        assert_eq!((both[0].stored, both[1].redelivered), (1, true));
        assert_eq!(s.depth().unwrap().readings, 6);
        assert_eq!(s.count("redelivered").unwrap(), 2);
    }

    #[test]
    fn two_stores_on_one_file_never_reuse_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let mut a = open(&path);
        let mut b = open(&path);
        for i in 0..20 {
            let s = if i % 2 == 0 { &mut a } else { &mut b };
            assert_eq!(s.append(&[reading(i)]).unwrap().first, i as u64 + 1);
        }
        let (rows, _) = a.read_from(0, 100).unwrap();
        assert_eq!(rows.len(), 20);
    }

    #[test]
    fn renumbering_moves_the_rows_above_the_floor_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("b.db"), Options::default()).unwrap();
        let rs: Vec<_> = (0..10).map(reading).collect();
        s.append(&rs).unwrap();
        // Acked by a stale ack for the same seqs of a deleted buffer.
        sent_and_acked(&mut s, 1, 2, 0).unwrap();
        // The cloud holds other readings under 1..=5 and up to seq 500.
        let r = s.renumber(1, 5, 501).unwrap();
        assert_eq!(
            r,
            Renumbered {
                moved: 5,
                first_new: 501,
                next_seq: 506
            }
        );
        let seqs: Vec<(u64, i64)> = s
            .read_from(0, 100)
            .unwrap()
            .0
            .iter()
            .map(|(q, r)| (*q, r.ts_ms - 1_700_000_000_000))
            .collect();
        assert_eq!(
            seqs,
            vec![
                (6, 5),
                (7, 6),
                (8, 7),
                (9, 8),
                (10, 9),
                (501, 0),
                (502, 1),
                (503, 2),
                (504, 3),
                (505, 4)
            ]
        );
        // Again: nothing left in the range; the floor holds.
        assert_eq!(s.renumber(1, 5, 501).unwrap().moved, 0);
        assert_eq!(s.append(&[reading(11)]).unwrap().first, 506);
        // A floor below next_seq moves rows above next_seq.
        let r = s.renumber(6, 6, 10).unwrap();
        assert_eq!((r.moved, r.first_new, r.next_seq), (1, 507, 508));
        assert_eq!(s.count("renumbered").unwrap(), 6);
    }

    #[test]
    fn published_rows_are_not_downsampled() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(
            &dir.path().join("b.db"),
            Options {
                max_bytes: 1 << 20,
                acked_grace_ms: 0,
                window_ms: HashMap::new(),
                default_window_ms: 60_000,
            },
        )
        .unwrap();
        let all = series("a", 20_000, 1000);
        for chunk in all.chunks(1000) {
            s.append(chunk).unwrap();
        }
        // The oldest batch went out; its fate is unknown.
        assert_eq!(s.mark_sent(1, 2000, 5).unwrap(), 2000);
        let e = s.enforce_budget().unwrap();
        assert!(e.downsampled > 0 && e.dropped == 0, "{e:?}");
        let (rows, _) = s.read_from(1, 2000).unwrap();
        let raw_sent = rows.iter().filter(|(q, _)| *q <= 2000).count();
        assert_eq!(
            raw_sent, 2000,
            "published rows stay raw and keep their seqs"
        );
        assert!(rows[..2000]
            .iter()
            .all(|(_, r)| r.flags & FLAG_AGGREGATE == 0));
    }

    #[test]
    fn a_version_2_buffer_is_read_and_keeps_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let rs: Vec<_> = (0..5).map(reading).collect();
        {
            // What the previous agent wrote: schema 2, wire-framed bodies.
            let conn = Connection::open(&path).unwrap();
            for sql in [SCHEMA, MIGRATE_2, INDEXES_2, IDENTITY_2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            for (i, r) in rs.iter().enumerate() {
                conn.execute(
                    "INSERT INTO readings (seq, ts_ms, sensor, body) VALUES (?1, ?2, ?3, ?4)",
                    params![i as i64 + 1, r.ts_ms, r.sensor, aeris_wire::encode(r)],
                )
                .unwrap();
            }
            conn.execute("UPDATE meta SET value = 6 WHERE key = 'next_seq'", [])
                .unwrap();
        }
        let mut s = open(&path);
        let (rows, bad) = s.read_from(0, 10).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(rows.into_iter().map(|r| r.1).collect::<Vec<_>>(), rs);
        // The old identity index is gone: the same sensor and time again is
        // a new reading.
        assert_eq!(s.append(&[reading(1)]).unwrap().first, 6);
    }

    #[test]
    fn read_from_returns_unsent_readings_in_order_and_depth_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("b.db"));
        let rs: Vec<_> = (0..10).map(reading).collect();
        s.append(&rs).unwrap();
        sent_and_acked(&mut s, 3, 5, 0).unwrap();
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
        assert_eq!(sent_and_acked(&mut s, 1, 4, 10_000).unwrap(), 4);
        // Acking twice does not count twice.
        assert_eq!(sent_and_acked(&mut s, 1, 4, 10_500).unwrap(), 0);
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
        sent_and_acked(&mut s, 1, 100, 0).unwrap();
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
    fn a_version_1_buffer_is_migrated_with_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for (seq, r) in [(1, reading(1)), (2, reading(2)), (3, reading(1))] {
                conn.execute(
                    "INSERT INTO readings (seq, ts_ms, body) VALUES (?1, ?2, ?3)",
                    params![seq, r.ts_ms, aeris_wire::encode(&r)],
                )
                .unwrap();
            }
            conn.execute("UPDATE meta SET value = 4 WHERE key = 'next_seq'", [])
                .unwrap();
        }
        let mut s = open(&path);
        let seqs: Vec<u64> = s.read_from(0, 10).unwrap().0.iter().map(|r| r.0).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(s.next_seq(), 4);
        assert_eq!(s.append(&[reading(2)]).unwrap().stored, 1);
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
