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

mod budget;
mod ledger;
mod schema;
mod sent;
mod totals;

pub use ledger::Delivery;
use ledger::*;
pub use read::Columns;
#[cfg(test)]
use schema::*;
use sent::*;
use totals::*;

pub use aeris_wire::flags::FLAG_AGGREGATE;

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
    #[error("cannot start the buffer thread: {0}")]
    Thread(std::io::Error),
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
            BufferError::Thread(_) => "thread",
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
        schema::upgrade(&conn)?;
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

    /// Replaces the aggregation windows of the next budget passes.
    pub fn set_windows(&mut self, by_sensor: HashMap<String, i64>, default_ms: i64) {
        self.options.window_ms = by_sensor;
        self.options.default_window_ms = default_ms;
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
}

fn clamp(seq: u64) -> i64 {
    seq.min(i64::MAX as u64) as i64
}

mod read;

#[cfg(test)]
mod tests;
