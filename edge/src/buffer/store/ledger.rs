//! Appending sensor messages, and the delivery log that recognises a
//! broker's redelivery of a message already committed.

use super::*;

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

/// One delivery log entry: packet id (u16), digest, first seq (u64),
/// readings stored (u32), little-endian.
pub const LOG_ENTRY_BYTES: usize = 2 + 16 + 8 + 4;

/// The log is cut back to this many newest entries once it holds twice as
/// many: a packet id's previous message is always among them.
pub(super) const LOG_KEEP: u64 = 65_536;

/// A message's delivery as the log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LogEntry {
    pub(super) pkid: u16,
    pub(super) digest: [u8; 16],
    pub(super) first: u64,
    pub(super) n: u32,
}

impl LogEntry {
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pkid.to_le_bytes());
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.first.to_le_bytes());
        out.extend_from_slice(&self.n.to_le_bytes());
    }

    /// The entries of one log row, newest last; `None` if the blob is not
    /// a whole number of entries.
    pub(super) fn parse(blob: &[u8]) -> Option<impl DoubleEndedIterator<Item = LogEntry> + '_> {
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

/// Writes `entries` as one log row.
pub(super) fn append_log(conn: &Connection, entries: &[LogEntry]) -> Result<(), BufferError> {
    let mut blob = Vec::with_capacity(entries.len() * LOG_ENTRY_BYTES);
    for e in entries {
        e.write(&mut blob);
    }
    conn.prepare_cached("INSERT INTO delivery_log (n, entries) VALUES (?1, ?2)")?
        .execute(params![entries.len() as i64, blob])?;
    Ok(())
}

/// The newest log entry under packet id `pkid`. Redeliveries are of
/// messages still in flight, so the search usually ends in the newest rows.
pub(super) fn last_logged(conn: &Connection, pkid: u16) -> Result<Option<LogEntry>, BufferError> {
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
pub(super) fn trim_log(conn: &Connection) -> Result<u64, BufferError> {
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

impl Store {
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
        let mut commit = GroupCommit::new(start, groups.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (seq, ts_ms, sensor, kind, fmt, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for group in groups {
                let appended = match commit.redelivery_of(&tx, group)? {
                    Some(original) => original,
                    None => commit.store(&mut insert, group)?,
                };
                commit.out.push(appended);
            }
        }
        let log_entries = commit.write_log(&tx, self.log_entries)?;
        commit.write_counts(&tx, start)?;
        tx.commit()?;
        self.next_seq = commit.seq;
        self.log_entries = log_entries;
        Ok(commit.out)
    }
}

/// One group commit's progress: the next seq, what each message stored,
/// the delivery-log entries and counts to write before the commit.
struct GroupCommit {
    seq: u64,
    out: Vec<Appended>,
    logged: Vec<LogEntry>,
    redelivered: u64,
    bytes: i64,
}

impl GroupCommit {
    fn new(start: u64, messages: usize) -> GroupCommit {
        GroupCommit {
            seq: start,
            out: Vec::with_capacity(messages),
            logged: Vec::new(),
            redelivered: 0,
            bytes: 0,
        }
    }

    /// What the original stored, when `group` is a DUP copy of the message
    /// last logged under its packet id (this commit's entries first: they
    /// are the newest).
    fn redelivery_of(
        &mut self,
        tx: &Connection,
        group: &Message<'_>,
    ) -> Result<Option<Appended>, BufferError> {
        let Some(d) = group.delivery.filter(|d| d.dup) else {
            return Ok(None);
        };
        let last = match self.logged.iter().rev().find(|e| e.pkid == d.pkid) {
            Some(e) => Some(*e),
            None => last_logged(tx, d.pkid)?,
        };
        let Some(original) = last.filter(|e| e.digest == d.digest) else {
            return Ok(None);
        };
        self.redelivered += 1;
        Ok(Some(Appended {
            first: original.first,
            stored: u64::from(original.n),
            redelivered: true,
        }))
    }

    /// Inserts `group`'s readings under the next seqs and logs its delivery.
    fn store(
        &mut self,
        insert: &mut rusqlite::CachedStatement<'_>,
        group: &Message<'_>,
    ) -> Result<Appended, BufferError> {
        let first = self.seq;
        for r in group.readings {
            let kind = i64::from(r.flags & FLAG_AGGREGATE != 0);
            let body = row::encode(r);
            self.bytes += body.len() as i64;
            insert.execute(params![
                self.seq as i64,
                r.ts_ms,
                r.sensor,
                kind,
                ROW_FORMAT,
                body
            ])?;
            self.seq += 1;
        }
        if let Some(d) = group.delivery {
            self.logged.push(LogEntry {
                pkid: d.pkid,
                digest: d.digest,
                first,
                n: u32::try_from(group.readings.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(Appended {
            first,
            stored: self.seq - first,
            redelivered: false,
        })
    }

    /// Appends this commit's delivery-log row, trimming the log when it
    /// has grown to twice what is kept; returns the entries it holds.
    fn write_log(&self, tx: &Connection, entries: u64) -> Result<u64, BufferError> {
        if self.logged.is_empty() {
            return Ok(entries);
        }
        append_log(tx, &self.logged)?;
        let entries = entries + self.logged.len() as u64;
        if entries > 2 * LOG_KEEP {
            return trim_log(tx);
        }
        Ok(entries)
    }

    /// The next seq, the running totals and the redelivery count.
    fn write_counts(&self, tx: &Connection, start: u64) -> Result<(), BufferError> {
        if self.seq != start {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [self.seq as i64],
            )?;
        }
        Totals::unsent((self.seq - start) as i64, self.bytes).add_to(tx)?;
        meta_add(tx, "redelivered", self.redelivered)
    }
}
