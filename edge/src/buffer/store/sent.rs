//! What happens to rows after they are appended: published (the seq
//! ranges in `sent`), acknowledged, purged, unacknowledged again, renumbered.

use super::*;

/// A row is not published if its seq is in a range of `sent`.
pub(super) const UNSENT: &str = "NOT EXISTS (SELECT 1 FROM sent WHERE sent.first <= readings.seq
                                  AND sent.last >= readings.seq)";

/// Records the seqs `first..=last` as published, merged with the ranges
/// they overlap or touch; returns how many unacknowledged rows were not
/// published before.
pub(super) fn mark_range(conn: &Connection, first: i64, last: i64) -> Result<usize, BufferError> {
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
pub(super) fn unmark(
    conn: &Connection,
    first: i64,
    last: i64,
) -> Result<Vec<(i64, i64)>, BufferError> {
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

impl Store {
    /// Marks the unacknowledged rows `first..=last` published:
    /// from now on they may be committed in the cloud.
    ///
    /// Committed without its own fsync (`synchronous=NORMAL` for this one
    /// transaction): in WAL mode the mark reaches the disk with the next
    /// synced commit, which under load is milliseconds away, and it saves
    /// one fsync per batch on the thread every append waits for. A power
    /// cut inside that gap can only let the disk budget downsample a batch
    /// that was published in it (the double count of decisions.md).
    pub fn mark_sent(&mut self, first: u64, last: u64) -> Result<usize, BufferError> {
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
            // Counted first, then changed without `RETURNING`: a result row
            // per reading costs more than a second pass over the range.
            let (n, len): (i64, i64) = tx
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(length(body)), 0) FROM readings
                     WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL",
                )?
                .query_row(params![a, b], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if n == 0 {
                continue;
            }
            if keep {
                tx.prepare_cached(
                    "UPDATE readings SET acked_ms = ?3
                     WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL",
                )?
                .execute(params![a, b, now_ms])?;
            } else {
                tx.prepare_cached(
                    "DELETE FROM readings WHERE seq BETWEEN ?1 AND ?2 AND acked_ms IS NULL",
                )?
                .execute(params![a, b])?;
            }
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
}
