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
//!   committed under that packet id. That is the delivery log: one row per
//!   commit holding an entry (packet id, digest, first seq, count) per
//!   message, written in the same transaction as the messages' readings.
//!   The broker reuses a packet id only after the previous message under
//!   it was acknowledged, and redelivers only messages still in flight, so
//!   the log keeps the newest 65,536 to 131,072 entries and is searched
//!   newest first;
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
//!   published (in `sent`) and not acknowledged may already be committed in
//!   the cloud: it is never downsampled (the cloud would hold it twice, raw
//!   and in the aggregate), and dropped only when nothing else is left.
//!   Published rows are recorded as seq ranges (table `sent`), one row per
//!   batch rather than a write per reading; every new row takes a seq above
//!   all of them, so a range never covers a row written after it;
//! - when the cloud says seqs are held there by other readings
//!   ([`Store::renumber`]), the rows in that range move to new seqs above
//!   the cloud's highest, unsent, and `next_seq` never goes below it;
//! - only a published row (in `sent`) can be acknowledged; the ranges go
//!   with the acks.
//!
//! Layout (schema version 5, `PRAGMA user_version`):
//! `readings(seq INTEGER PRIMARY KEY, ts_ms, sensor, kind, acked_ms, fmt,
//! body)` where `kind` is 0 for a raw reading and 1 for an aggregate,
//! `acked_ms` is when the cloud acknowledged it (NULL = unsent), and `body`
//! is the reading in row format `fmt` ([`super::row`]);
//! `sent(first INTEGER PRIMARY KEY, last)`, disjoint seq ranges published
//! and not yet acknowledged; `delivery_log(id INTEGER PRIMARY KEY, n,
//! entries BLOB)` with `n` entries of [`LOG_ENTRY_BYTES`] each;
//! `meta(key TEXT PRIMARY KEY, value INTEGER)` with `next_seq`, the loss
//! counters `lost_<reason>` and the running totals `unsent_rows`,
//! `unsent_bytes` (bytes of the bodies) and `acked_rows`, changed in the
//! same transaction as the rows they count. Files of versions 1 to 4 are
//! migrated on open; rows of versions 1 and 2 keep row format 1.

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

const SCHEMA_VERSION: i64 = 5;
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
/// Version 3 to 4: published rows as seq ranges, the delivery ledger as a
/// log with one row per commit (both were a write per reading or message).
const MIGRATE_4: &str = "
CREATE TABLE sent (first INTEGER PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE delivery_log (id INTEGER PRIMARY KEY, n INTEGER NOT NULL,
                           entries BLOB NOT NULL);
";
const DROP_3: &str = "
DROP TABLE deliveries;
ALTER TABLE readings DROP COLUMN sent_ms;
";

/// Version 4 to 5: running totals of what the buffer holds, kept in `meta`
/// in the transaction of every change, so that the depth gauges cost no
/// scan of the table (computed once, by [`migrate_to_5`]).
const TOTALS: [&str; 3] = ["unsent_rows", "unsent_bytes", "acked_rows"];

/// One delivery log entry: packet id (u16), digest, first seq (u64),
/// readings stored (u32), little-endian.
pub const LOG_ENTRY_BYTES: usize = 2 + 16 + 8 + 4;
/// The log is cut back to this many newest entries once it holds twice as
/// many: a packet id's previous message is always among them.
const LOG_KEEP: u64 = 65_536;
/// A row is not published if its seq is in a range of `sent`.
const UNSENT: &str = "NOT EXISTS (SELECT 1 FROM sent WHERE sent.first <= readings.seq
                                  AND sent.last >= readings.seq)";

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
    /// Entries in `delivery_log`.
    log_entries: u64,
}

/// A message's delivery as the log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogEntry {
    pkid: u16,
    digest: [u8; 16],
    first: u64,
    n: u32,
}

impl LogEntry {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pkid.to_le_bytes());
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.first.to_le_bytes());
        out.extend_from_slice(&self.n.to_le_bytes());
    }

    /// The entries of one log row, newest last; `None` if the blob is not
    /// a whole number of entries.
    fn parse(blob: &[u8]) -> Option<impl DoubleEndedIterator<Item = LogEntry> + '_> {
        blob.len().is_multiple_of(LOG_ENTRY_BYTES).then(|| {
            blob.chunks_exact(LOG_ENTRY_BYTES).map(|c| {
                let mut digest = [0u8; 16];
                digest.copy_from_slice(&c[2..18]);
                let mut first = [0u8; 8];
                first.copy_from_slice(&c[18..26]);
                let mut n = [0u8; 4];
                n.copy_from_slice(&c[26..30]);
                LogEntry {
                    pkid: u16::from_le_bytes([c[0], c[1]]),
                    digest,
                    first: u64::from_le_bytes(first),
                    n: u32::from_le_bytes(n),
                }
            })
        })
    }
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

/// A change to the running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    unsent_rows: i64,
    unsent_bytes: i64,
    acked_rows: i64,
}

impl Totals {
    /// Unsent rows with this many body bytes.
    fn unsent(rows: i64, bytes: i64) -> Totals {
        Totals {
            unsent_rows: rows,
            unsent_bytes: bytes,
            acked_rows: 0,
        }
    }

    fn acked(rows: i64) -> Totals {
        Totals {
            acked_rows: rows,
            ..Totals::default()
        }
    }

    fn neg(self) -> Totals {
        Totals {
            unsent_rows: -self.unsent_rows,
            unsent_bytes: -self.unsent_bytes,
            acked_rows: -self.acked_rows,
        }
    }

    /// Adds `self` to the totals in `meta`.
    fn add_to(self, conn: &Connection) -> Result<(), BufferError> {
        if self == Totals::default() {
            return Ok(());
        }
        conn.prepare_cached(
            "UPDATE meta SET value = value + CASE key WHEN 'unsent_rows' THEN ?1
             WHEN 'unsent_bytes' THEN ?2 ELSE ?3 END
             WHERE key IN ('unsent_rows', 'unsent_bytes', 'acked_rows')",
        )?
        .execute(params![
            self.unsent_rows,
            self.unsent_bytes,
            self.acked_rows
        ])?;
        Ok(())
    }
}

/// Runs `stmt` (an UPDATE or DELETE ending in `RETURNING length(body)`);
/// returns the rows it touched and their body bytes.
fn touched<P: rusqlite::Params>(
    mut stmt: rusqlite::CachedStatement<'_>,
    p: P,
) -> Result<(i64, i64), BufferError> {
    let mut rows = stmt.query(p)?;
    let (mut n, mut bytes) = (0i64, 0i64);
    while let Some(row) = rows.next()? {
        n += 1;
        bytes += row.get::<_, i64>(0)?;
    }
    Ok((n, bytes))
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
                tx.execute_batch(MIGRATE_4)?;
                tx.execute_batch(DROP_3)?;
                tx.pragma_update(None, "user_version", 4)?;
                tx.commit()?;
                migrate_to_5(&conn)?;
            }
            1 => {
                migrate_from_1(&conn)?;
                migrate_from_2(&conn)?;
                migrate_from_3(&conn)?;
                migrate_to_5(&conn)?;
            }
            2 => {
                migrate_from_2(&conn)?;
                migrate_from_3(&conn)?;
                migrate_to_5(&conn)?;
            }
            3 => {
                migrate_from_3(&conn)?;
                migrate_to_5(&conn)?;
            }
            4 => migrate_to_5(&conn)?,
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
        let log_entries: i64 =
            conn.query_row("SELECT coalesce(sum(n), 0) FROM delivery_log", [], |r| {
                r.get(0)
            })?;
        Ok(Store {
            conn,
            next_seq,
            options,
            log_entries: log_entries.max(0) as u64,
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
        let mut logged: Vec<LogEntry> = Vec::new();
        let mut redelivered = 0u64;
        let mut bytes = 0i64;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (seq, ts_ms, sensor, kind, fmt, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for group in groups {
                if let Some(d) = group.delivery.filter(|d| d.dup) {
                    // This commit's own entries are the newest.
                    let last = match logged.iter().rev().find(|e| e.pkid == d.pkid) {
                        Some(e) => Some(*e),
                        None => last_logged(&tx, d.pkid)?,
                    };
                    if let Some(original) = last.filter(|e| e.digest == d.digest) {
                        redelivered += 1;
                        out.push(Appended {
                            first: original.first,
                            stored: u64::from(original.n),
                            redelivered: true,
                        });
                        continue;
                    }
                }
                let first = seq;
                for r in group.readings {
                    let kind = i64::from(r.flags & FLAG_AGGREGATE != 0);
                    let body = row::encode(r);
                    bytes += body.len() as i64;
                    insert.execute(params![
                        seq as i64, r.ts_ms, r.sensor, kind, ROW_FORMAT, body
                    ])?;
                    seq += 1;
                }
                if let Some(d) = group.delivery {
                    logged.push(LogEntry {
                        pkid: d.pkid,
                        digest: d.digest,
                        first,
                        n: u32::try_from(group.readings.len()).unwrap_or(u32::MAX),
                    });
                }
                out.push(Appended {
                    first,
                    stored: seq - first,
                    redelivered: false,
                });
            }
        }
        let mut log_entries = self.log_entries;
        if !logged.is_empty() {
            let mut blob = Vec::with_capacity(logged.len() * LOG_ENTRY_BYTES);
            for e in &logged {
                e.write(&mut blob);
            }
            tx.execute(
                "INSERT INTO delivery_log (n, entries) VALUES (?1, ?2)",
                params![logged.len() as i64, blob],
            )?;
            log_entries += logged.len() as u64;
            if log_entries > 2 * LOG_KEEP {
                log_entries = trim_log(&tx)?;
            }
        }
        if seq != start {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [seq as i64],
            )?;
        }
        Totals::unsent((seq - start) as i64, bytes).add_to(&tx)?;
        meta_add(&tx, "redelivered", redelivered)?;
        tx.commit()?;
        self.next_seq = seq;
        self.log_entries = log_entries;
        Ok(out)
    }

    /// Marks the unacknowledged rows `first..=last` published at `now_ms`:
    /// from now on they may be committed in the cloud.
    ///
    /// Committed without its own fsync (`synchronous=NORMAL` for this one
    /// transaction): in WAL mode the mark reaches the disk with the next
    /// synced commit, which under load is milliseconds away, and it saves
    /// one fsync per batch on the thread every append waits for. A power
    /// cut inside that gap can only let the disk budget downsample a batch
    /// that was published in it (the double count of decisions.md).
    pub fn mark_sent(&mut self, first: u64, last: u64, now_ms: i64) -> Result<usize, BufferError> {
        let _ = now_ms;
        // Only seqs already handed out; later rows must stay outside.
        let last = last.min(self.next_seq.saturating_sub(1));
        if first > last {
            return Ok(0);
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let marked = mark_range(&self.conn, clamp(first), clamp(last));
        // Every other commit stays synced, whatever the update did.
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        marked
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
        let (seqs, acked): (Vec<i64>, Vec<Option<i64>>) = {
            let mut stmt = tx.prepare(
                "SELECT seq, CASE WHEN acked_ms IS NULL THEN NULL ELSE length(body) END
                 FROM readings WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![clamp(first), clamp(last)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
            })?;
            rows.collect::<Result<Vec<_>, _>>()?.into_iter().unzip()
        };
        // Acked rows in the range are unsent again.
        let unacked: Vec<i64> = acked.into_iter().flatten().collect();
        let n = unacked.len() as i64;
        Totals {
            unsent_rows: n,
            unsent_bytes: unacked.iter().sum(),
            acked_rows: -n,
        }
        .add_to(&tx)?;
        for old in &seqs {
            tx.execute(
                "UPDATE readings SET seq = ?2, acked_ms = NULL WHERE seq = ?1",
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
        // The moved rows are unsent at their new seqs; nothing takes the
        // old ones again.
        unmark(&tx, clamp(first), clamp(last))?;
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
        let mut bad_bytes = 0i64;
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
                    Err(e) => {
                        bad_bytes += body.len() as i64;
                        bad.push(CorruptRow {
                            seq,
                            error: e.to_string(),
                        })
                    }
                }
            }
        }
        if !bad.is_empty() {
            let tx = self.conn.transaction()?;
            for row in &bad {
                tx.execute("DELETE FROM readings WHERE seq = ?1", [row.seq as i64])?;
            }
            Totals::unsent(bad.len() as i64, bad_bytes)
                .neg()
                .add_to(&tx)?;
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
        let (first, last) = (clamp(first), clamp(last));
        let tx = self.conn.transaction()?;
        let (mut acked, mut bytes) = (0, 0);
        let keep = self.options.acked_grace_ms > 0;
        for (a, b) in unmark(&tx, first, last)? {
            let (n, len) = if keep {
                touched(
                    tx.prepare_cached(
                        "UPDATE readings SET acked_ms = ?3
                         WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL
                         RETURNING length(body)",
                    )?,
                    params![a, b, now_ms],
                )?
            } else {
                touched(
                    tx.prepare_cached(
                        "DELETE FROM readings WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL
                         RETURNING length(body)",
                    )?,
                    params![a, b],
                )?
            };
            acked += n;
            bytes += len;
        }
        Totals {
            unsent_rows: -acked,
            unsent_bytes: -bytes,
            acked_rows: if keep { acked } else { 0 },
        }
        .add_to(&tx)?;
        tx.commit()?;
        Ok(acked as usize)
    }

    /// Deletes acknowledged readings whose grace period is over.
    /// Also forgets published ranges that hold no unacknowledged row any
    /// more (their rows were dropped by the budget or renumbered).
    pub fn purge_acked(&mut self, now_ms: i64) -> Result<usize, BufferError> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached(
            "DELETE FROM sent WHERE NOT EXISTS (SELECT 1 FROM readings
             WHERE readings.seq BETWEEN sent.first AND sent.last
             AND readings.acked_ms IS NULL)",
        )?
        .execute([])?;
        let purged = tx
            .prepare_cached("DELETE FROM readings WHERE acked_ms IS NOT NULL AND acked_ms < ?1")?
            .execute([now_ms.saturating_sub(self.options.acked_grace_ms)])?;
        Totals::acked(-(purged as i64)).add_to(&tx)?;
        tx.commit()?;
        Ok(purged)
    }

    /// The cloud lacks what it acknowledged from `seq` on (restored from an
    /// older backup): every held reading from there is unsent again.
    pub fn unack_from(&mut self, seq: u64) -> Result<usize, BufferError> {
        let tx = self.conn.transaction()?;
        let (n, bytes) = touched(
            tx.prepare_cached(
                "UPDATE readings SET acked_ms = NULL WHERE seq >= ?1 AND acked_ms IS NOT NULL
                 RETURNING length(body)",
            )?,
            [clamp(seq)],
        )?;
        Totals {
            unsent_rows: n,
            unsent_bytes: bytes,
            acked_rows: -n,
        }
        .add_to(&tx)?;
        tx.commit()?;
        Ok(n as usize)
    }

    /// What the buffer holds, from the running totals and two index
    /// lookups: the same cost with ten readings or ten million.
    pub fn depth(&self) -> Result<Depth, BufferError> {
        let mut totals = [0u64; 3];
        for (slot, key) in totals.iter_mut().zip(TOTALS) {
            *slot = meta_get(&self.conn, key)?.unwrap_or(0).max(0) as u64;
        }
        // One index seek per kind on `readings_unsent`.
        let oldest_ts_ms = self
            .conn
            .prepare_cached(
                "SELECT min(t) FROM (
                   SELECT min(ts_ms) AS t FROM readings WHERE kind = 0 AND acked_ms IS NULL
                   UNION ALL
                   SELECT min(ts_ms) FROM readings WHERE kind = 1 AND acked_ms IS NULL)",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(Depth {
            readings: totals[0],
            bytes: totals[1],
            oldest_ts_ms,
            acked_held: totals[2],
            used_bytes: self.used_bytes()?,
        })
    }

    /// [`Store::depth`] counted from the rows themselves (a full scan).
    pub fn depth_scanned(&self) -> Result<Depth, BufferError> {
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
            let tx = self.conn.transaction()?;
            let acked = tx.execute(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings
                 WHERE acked_ms IS NOT NULL ORDER BY acked_ms LIMIT ?1)",
                [DOWNSAMPLE_CHUNK],
            )? as u64;
            Totals::acked(-(acked as i64)).add_to(&tx)?;
            tx.commit()?;
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
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT seq, fmt, body FROM readings
                 WHERE acked_ms IS NULL AND kind = 0 AND {UNSENT}
                 ORDER BY ts_ms LIMIT ?1"
            ))?;
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
        // Rows leave by seq; what they held comes back from the delete.
        let mut left = Totals::default();
        let delete = |seq: u64, left: &mut Totals| -> Result<(), BufferError> {
            let (n, bytes) = touched(
                tx.prepare_cached("DELETE FROM readings WHERE seq = ?1 RETURNING length(body)")?,
                [seq as i64],
            )?;
            left.unsent_rows -= n;
            left.unsent_bytes -= bytes;
            Ok(())
        };
        for seq in &corrupt {
            delete(*seq, &mut left)?;
        }
        meta_add(&tx, "lost_corrupt", corrupt.len() as u64)?;
        let mut seq = meta_get(&tx, "next_seq")?
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| BufferError::Corrupt("meta.next_seq is missing".into()))?;
        let (mut replaced, mut written) = (0u64, 0u64);
        for ((_, start), members) in groups.into_iter().filter(|(_, m)| m.len() >= 2) {
            let aggregate = aggregate(start, &members);
            for (s, _) in &members {
                delete(*s, &mut left)?;
            }
            let body = row::encode(&aggregate);
            left.unsent_rows += 1;
            left.unsent_bytes += body.len() as i64;
            tx.execute(
                "INSERT INTO readings (seq, ts_ms, sensor, kind, fmt, body)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5)",
                params![
                    seq as i64,
                    aggregate.ts_ms,
                    aggregate.sensor,
                    ROW_FORMAT,
                    body
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
        left.add_to(&tx)?;
        tx.commit()?;
        self.next_seq = seq;
        Ok((replaced, written))
    }

    /// Deletes the oldest unacknowledged rows, raw or aggregate, never
    /// published ones first; returns how many.
    fn drop_oldest(&mut self) -> Result<u64, BufferError> {
        let tx = self.conn.transaction()?;
        let (mut n, mut bytes) = touched(
            tx.prepare_cached(&format!(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings
                 WHERE acked_ms IS NULL AND {UNSENT} ORDER BY ts_ms LIMIT ?1)
                 RETURNING length(body)"
            ))?,
            [DOWNSAMPLE_CHUNK / 4],
        )?;
        if n == 0 {
            (n, bytes) = touched(
                tx.prepare_cached(
                    "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings
                     WHERE acked_ms IS NULL ORDER BY ts_ms LIMIT ?1)
                     RETURNING length(body)",
                )?,
                [DOWNSAMPLE_CHUNK / 4],
            )?;
        }
        Totals::unsent(n, bytes).neg().add_to(&tx)?;
        meta_add(&tx, "lost_dropped", n as u64)?;
        tx.commit()?;
        Ok(n as u64)
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
    tx.pragma_update(None, "user_version", 3)?;
    tx.commit()?;
    Ok(())
}

/// Records the seqs `first..=last` as published, merged with the ranges
/// they overlap or touch; returns how many unacknowledged rows were not
/// published before.
fn mark_range(conn: &Connection, first: i64, last: i64) -> Result<usize, BufferError> {
    let tx = conn.unchecked_transaction()?;
    let (lo, hi) = (first.saturating_sub(1), last.saturating_add(1));
    let touching: Vec<(i64, i64)> = {
        let mut stmt =
            tx.prepare_cached("SELECT first, last FROM sent WHERE first <= ?2 AND last >= ?1")?;
        let rows = stmt.query_map([lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let unacked = |a: i64, b: i64| -> Result<i64, BufferError> {
        Ok(tx
            .prepare_cached(
                "SELECT count(*) FROM readings WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL",
            )?
            .query_row([a, b], |r| r.get(0))?)
    };
    let mut marked = unacked(first, last)?;
    let (mut from, mut to) = (first, last);
    for &(f, l) in &touching {
        if f.max(first) <= l.min(last) {
            marked -= unacked(f.max(first), l.min(last))?;
        }
        from = from.min(f);
        to = to.max(l);
    }
    tx.prepare_cached("DELETE FROM sent WHERE first <= ?2 AND last >= ?1")?
        .execute([lo, hi])?;
    tx.prepare_cached("INSERT INTO sent (first, last) VALUES (?1, ?2)")?
        .execute([from, to])?;
    tx.commit()?;
    Ok(marked.max(0) as usize)
}

/// Takes the seqs `first..=last` out of the published ranges; returns the
/// parts of `first..=last` that were published.
fn unmark(conn: &Connection, first: i64, last: i64) -> Result<Vec<(i64, i64)>, BufferError> {
    let ranges: Vec<(i64, i64)> = {
        let mut stmt =
            conn.prepare_cached("SELECT first, last FROM sent WHERE first <= ?2 AND last >= ?1")?;
        let rows = stmt.query_map([first, last], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut hit = Vec::with_capacity(ranges.len());
    for (f, l) in ranges {
        let (a, b) = (f.max(first), l.min(last));
        hit.push((a, b));
        conn.prepare_cached("DELETE FROM sent WHERE first = ?1")?
            .execute([f])?;
        let mut keep = conn.prepare_cached("INSERT INTO sent (first, last) VALUES (?1, ?2)")?;
        if f < a {
            keep.execute([f, a - 1])?;
        }
        if b < l {
            keep.execute([b + 1, l])?;
        }
    }
    Ok(hit)
}

/// The newest log entry under packet id `pkid`. Redeliveries are of
/// messages still in flight, so the search usually ends in the newest rows.
fn last_logged(conn: &Connection, pkid: u16) -> Result<Option<LogEntry>, BufferError> {
    let mut stmt = conn.prepare_cached("SELECT entries FROM delivery_log ORDER BY id DESC")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let blob = row.get_ref(0)?.as_blob().unwrap_or_default();
        // A damaged row is skipped: it can only make a redelivery look new.
        if let Some(mut entries) = LogEntry::parse(blob) {
            if let Some(e) = entries.rfind(|e| e.pkid == pkid) {
                return Ok(Some(e));
            }
        }
    }
    Ok(None)
}

/// Deletes the log rows older than the newest [`LOG_KEEP`] entries;
/// returns the entries left.
fn trim_log(conn: &Connection) -> Result<u64, BufferError> {
    let mut kept = 0u64;
    let mut cut = None;
    {
        let mut stmt = conn.prepare_cached("SELECT id, n FROM delivery_log ORDER BY id DESC")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            if kept >= LOG_KEEP {
                cut = Some(row.get::<_, i64>(0)?);
                break;
            }
            kept += row.get::<_, i64>(1)?.max(0) as u64;
        }
    }
    if let Some(id) = cut {
        conn.execute("DELETE FROM delivery_log WHERE id <= ?1", [id])?;
    }
    Ok(kept)
}

/// Schema 3 to 4 ([`MIGRATE_4`]): the per-row sent marks become ranges
/// (a run of consecutive published rows is one range), the ledger one log
/// row.
fn migrate_from_3(conn: &Connection) -> Result<(), BufferError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(MIGRATE_4)?;
    let marks: Vec<(i64, bool)> = {
        let mut stmt = tx.prepare(
            "SELECT seq, sent_ms IS NOT NULL FROM readings WHERE acked_ms IS NULL ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut run: Option<(i64, i64)> = None;
    for (seq, sent) in marks.into_iter().chain([(i64::MAX, false)]) {
        match (sent, run) {
            (true, Some((first, _))) => run = Some((first, seq)),
            (true, None) => run = Some((seq, seq)),
            (false, Some((first, last))) => {
                tx.execute(
                    "INSERT INTO sent (first, last) VALUES (?1, ?2)",
                    [first, last],
                )?;
                run = None;
            }
            (false, None) => {}
        }
    }
    let entries: Vec<LogEntry> = {
        let mut stmt = tx.prepare("SELECT pkid, digest, first_seq, n FROM deliveries")?;
        let rows = stmt.query_map([], |r| {
            let digest: Vec<u8> = r.get(1)?;
            Ok((
                r.get::<_, i64>(0)?,
                digest,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.filter_map(|row| match row {
            Ok((pkid, digest, first, n)) => Some(Ok(LogEntry {
                pkid: u16::try_from(pkid).ok()?,
                digest: digest.try_into().ok()?,
                first: u64::try_from(first).ok()?,
                n: u32::try_from(n).ok()?,
            })),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?
    };
    if !entries.is_empty() {
        let mut blob = Vec::with_capacity(entries.len() * LOG_ENTRY_BYTES);
        for e in &entries {
            e.write(&mut blob);
        }
        tx.execute(
            "INSERT INTO delivery_log (n, entries) VALUES (?1, ?2)",
            params![entries.len() as i64, blob],
        )?;
    }
    tx.execute_batch(DROP_3)?;
    tx.pragma_update(None, "user_version", 4)?;
    tx.commit()?;
    Ok(())
}

/// Schema 4 to 5: the running totals, counted once from the rows.
fn migrate_to_5(conn: &Connection) -> Result<(), BufferError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value)
         SELECT 'unsent_rows', count(*) FROM readings WHERE acked_ms IS NULL
         UNION ALL
         SELECT 'unsent_bytes', coalesce(sum(length(body)), 0) FROM readings
         WHERE acked_ms IS NULL
         UNION ALL
         SELECT 'acked_rows', count(*) FROM readings WHERE acked_ms IS NOT NULL",
        [],
    )?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

fn clamp(seq: u64) -> i64 {
    seq.min(i64::MAX as u64) as i64
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
