//! Reading unsent rows back for the uplink; rows that cannot be decoded
//! are taken out and counted as losses.

use aeris_wire::columnar::Builder;

use super::*;

/// Held readings read back for a batch: each one's seq, and the readings
/// themselves as columns (no [`Reading`] and strings per row).
#[derive(Debug, Default, Clone)]
pub struct Columns {
    /// Ascending.
    pub seqs: Vec<u64>,
    pub readings: Builder,
}

impl Columns {
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Keeps the first `n`.
    pub fn truncate(&mut self, n: usize) {
        self.seqs.truncate(n);
        self.readings.truncate(n);
    }
}

impl Store {
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
        let bad = self.read_rows(from, max, |seq, fmt, body| {
            good.push((seq, row::decode(fmt, body)?));
            Ok(())
        })?;
        Ok((good, bad))
    }

    /// [`Store::read_from`] appended to `into`: the same rows, the same
    /// corrupt rows taken out.
    pub fn read_columns(
        &mut self,
        from: u64,
        max: usize,
        into: &mut Columns,
    ) -> Result<Vec<CorruptRow>, BufferError> {
        self.read_rows(from, max, |seq, fmt, body| {
            row::decode_into(fmt, body, &mut into.readings)?;
            into.seqs.push(seq);
            Ok(())
        })
    }

    /// Hands up to `max` unsent rows with seq >= `from` to `take` in seq
    /// order; the rows it refuses are deleted as corrupt and returned.
    fn read_rows(
        &mut self,
        from: u64,
        max: usize,
        mut take: impl FnMut(u64, i64, &[u8]) -> Result<(), row::RowError>,
    ) -> Result<Vec<CorruptRow>, BufferError> {
        let mut bad = Vec::new();
        let mut bad_bytes = 0i64;
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, fmt, body FROM readings WHERE seq >= ?1 AND acked_ms IS NULL
                 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![clamp(from), max as i64])?;
            while let Some(r) = rows.next()? {
                let seq = r.get::<_, i64>(0)? as u64;
                let fmt = r.get::<_, i64>(1)?;
                let body = r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
                if let Err(e) = take(seq, fmt, body) {
                    bad_bytes += body.len() as i64;
                    bad.push(CorruptRow {
                        seq,
                        error: e.to_string(),
                    })
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
        Ok(bad)
    }
}
