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
            append_log(&tx, &logged)?;
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
}
