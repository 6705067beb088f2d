//! Reading unsent rows back for the uplink; rows that cannot be decoded
//! are taken out and counted as losses.

use super::*;

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
}
