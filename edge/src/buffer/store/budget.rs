//! The disk budget: acked rows first, then window aggregates in place of
//! the oldest raw readings, then the oldest rows.

use super::*;

/// Raw readings examined per downsampling step.
pub(super) const DOWNSAMPLE_CHUNK: i64 = 2048;

/// The budget, once exceeded, is enforced down to this share of it, so that
/// eviction runs in steps rather than on every commit.
pub(super) const LOW_WATER: f64 = 0.9;

/// The aggregate of one sensor's readings in the window starting at `start`:
/// per quantity the mean under its own name, and `.min`, `.max`, `.n`. The
/// position is the last reading's; the flags are all of theirs, plus
/// [`FLAG_AGGREGATE`].
pub(super) fn aggregate(start: i64, members: &[(u64, Reading)]) -> Reading {
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

impl Store {
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

    pub(super) fn window_of(&self, sensor: &str) -> i64 {
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
    pub(super) fn downsample_oldest(&mut self) -> Result<(u64, u64), BufferError> {
        let (groups, corrupt) = self.oldest_raw_by_window()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Rows leave by seq; what they held comes back from the delete.
        let mut left = Totals::default();
        for seq in &corrupt {
            delete_counted(&tx, *seq, &mut left)?;
        }
        meta_add(&tx, "lost_corrupt", corrupt.len() as u64)?;
        let mut seq = meta_get(&tx, "next_seq")?
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| BufferError::Corrupt("meta.next_seq is missing".into()))?;
        let (mut replaced, mut written) = (0u64, 0u64);
        for ((_, start), members) in groups.into_iter().filter(|(_, m)| m.len() >= 2) {
            for (s, _) in &members {
                delete_counted(&tx, *s, &mut left)?;
            }
            insert_aggregate(&tx, seq, &aggregate(start, &members), &mut left)?;
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

    /// The oldest unsent raw readings ([`DOWNSAMPLE_CHUNK`] at most),
    /// grouped by (sensor, window start) in time order, and the seqs of
    /// rows that do not decode.
    fn oldest_raw_by_window(&self) -> Result<(ByWindow, Vec<u64>), BufferError> {
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
        let mut groups = ByWindow::new();
        let mut corrupt = Vec::new();
        for row in rows {
            let (seq, fmt, body) = row?;
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
        Ok((groups, corrupt))
    }

    /// Deletes the oldest unacknowledged rows, raw or aggregate, never
    /// published ones first; returns how many.
    pub(super) fn drop_oldest(&mut self) -> Result<u64, BufferError> {
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

/// Readings by (sensor, window start), each with its seq, in time order.
type ByWindow = BTreeMap<(String, i64), Vec<(u64, Reading)>>;

/// Deletes row `seq`, taking what it held off `left`.
fn delete_counted(tx: &Connection, seq: u64, left: &mut Totals) -> Result<(), BufferError> {
    let (n, bytes) = touched(
        tx.prepare_cached("DELETE FROM readings WHERE seq = ?1 RETURNING length(body)")?,
        [seq as i64],
    )?;
    left.unsent_rows -= n;
    left.unsent_bytes -= bytes;
    Ok(())
}

/// Stores `aggregate` as an unsent row under `seq`, adding it to `left`.
fn insert_aggregate(
    tx: &Connection,
    seq: u64,
    aggregate: &Reading,
    left: &mut Totals,
) -> Result<(), BufferError> {
    let body = row::encode(aggregate);
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
    Ok(())
}
