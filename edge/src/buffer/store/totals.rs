//! The running totals in `meta`, and the depth read from them.

use super::*;

/// Version 4 to 5: running totals of what the buffer holds, kept in `meta`
/// in the transaction of every change, so that the depth gauges cost no
/// scan of the table (computed once, by [`migrate_to_5`]).
pub(super) const TOTALS: [&str; 3] = ["unsent_rows", "unsent_bytes", "acked_rows"];

/// A change to the running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub(super) unsent_rows: i64,
    pub(super) unsent_bytes: i64,
    pub(super) acked_rows: i64,
}

impl Totals {
    /// Unsent rows with this many body bytes.
    pub(super) fn unsent(rows: i64, bytes: i64) -> Totals {
        Totals {
            unsent_rows: rows,
            unsent_bytes: bytes,
            acked_rows: 0,
        }
    }

    pub(super) fn acked(rows: i64) -> Totals {
        Totals {
            acked_rows: rows,
            ..Totals::default()
        }
    }

    pub(super) fn neg(self) -> Totals {
        Totals {
            unsent_rows: -self.unsent_rows,
            unsent_bytes: -self.unsent_bytes,
            acked_rows: -self.acked_rows,
        }
    }

    /// Adds `self` to the totals in `meta`.
    pub(super) fn add_to(self, conn: &Connection) -> Result<(), BufferError> {
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
pub(super) fn touched<P: rusqlite::Params>(
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
}
