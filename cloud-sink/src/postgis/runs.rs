//! Exactly once per `(device_id, seq)`, kept per run of seqs (migration
//! 0014): a row of `reading_runs` says that a device's readings
//! `first_seq..=last_seq` are stored, with each one's timestamp in `ts_ms`.
//! A batch is a run (consecutive seqs), so a write adds about one key row
//! per batch instead of one per reading; the readings themselves are copied
//! straight into `readings` with no staging table, no sort and no join.
//!
//! A write, in its transaction:
//! 1. locks its devices (`pg_advisory_xact_lock`, ordered, so two writers
//!    never wait on each other in a circle): from here until the commit
//!    no other writer reads or adds runs of these devices;
//! 2. reads the stored runs its batches overlap ([`known`]);
//! 3. sorts each reading ([`classify`]): new; stored under another
//!    timestamp (a collision); stored under the same timestamp (compared
//!    row by row in the database, [`super::collide`]); or repeated within
//!    the write (compared with its first occurrence);
//! 4. stores the new readings and their runs ([`insert`]).
//!
//! The lock is what makes step 2's answer still true at step 4. The table
//! also refuses overlapping runs by itself (an exclusion constraint), so a
//! writer that skipped the lock would fail, never store a reading twice.
//! Runs outlive retention like the keys did: a reading whose partition was
//! dropped is still known, and a resend of it is a duplicate.

use std::collections::{BTreeMap, HashMap};

use aeris_wire::{Batch, Reading};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

/// Longest run stored in one row (its `ts_ms` array: 32 KiB).
const RUN_MAX: usize = 4096;

/// First key of the per-device write lock (the second is the device's
/// `hashtext`); the two-key form never meets the single-key locks of the
/// migrations, the partitions and the rollups.
const LOCK_CLASS: i32 = 0x0AE1;

/// Locks each device of `$1` for the transaction, in the order of the lock
/// keys (a subquery with `ORDER BY` is not flattened, so the aggregate
/// takes the locks in that order).
const LOCK: &str = "
SELECT count(pg_advisory_xact_lock($2::int4, k))
FROM (SELECT DISTINCT hashtext(d) AS k FROM unnest($1::text[]) d ORDER BY 1) s";

/// The stored runs overlapping each `($1, $2..=$3)`: a range scan of the
/// primary key `(device_id, last_seq)` from the batch's first seq.
const KNOWN: &str = "
SELECT r.device_id, r.first_seq, r.ts_ms
FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(device_id, lo, hi)
JOIN reading_runs r ON r.device_id = u.device_id AND r.last_seq >= u.lo AND r.first_seq <= u.hi";

const COPY_RUNS: &str =
    "COPY reading_runs (device_id, first_seq, last_seq, ts_ms) FROM STDIN (FORMAT binary)";

const MAX_SEQ: &str = "SELECT coalesce(max(last_seq), 0) FROM reading_runs WHERE device_id = $1";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Takes the write lock of `devices` until the transaction ends.
pub(super) async fn lock(
    tx: &Transaction<'_>,
    devices: &[&str],
) -> Result<(), tokio_postgres::Error> {
    tx.query_one(LOCK, &[&devices, &LOCK_CLASS])
        .await
        .map(|_| ())
}

/// Stored runs of a device: first seq → timestamps, by first seq.
pub(super) type Known = HashMap<String, BTreeMap<u64, Vec<i64>>>;

/// The stored runs that `batches` overlap. Call under [`lock`].
pub(super) async fn known(
    tx: &Transaction<'_>,
    batches: &[Batch],
) -> Result<Known, tokio_postgres::Error> {
    let devices: Vec<&str> = batches.iter().map(|b| b.device.as_str()).collect();
    let lo: Vec<i64> = batches.iter().map(|b| to_i64(b.first_seq)).collect();
    let hi: Vec<i64> = batches
        .iter()
        .map(|b| to_i64(b.last_seq().unwrap_or(b.first_seq)))
        .collect();
    let rows = tx.query(KNOWN, &[&devices, &lo, &hi]).await?;
    let mut known = Known::new();
    for row in rows {
        let first = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
        known
            .entry(row.get(0))
            .or_default()
            .insert(first, row.get(2));
    }
    Ok(known)
}

/// The stored timestamp of `seq`, if a stored run holds it.
fn stored_ts(runs: Option<&BTreeMap<u64, Vec<i64>>>, seq: u64) -> Option<i64> {
    let (first, ts) = runs?.range(..=seq).next_back()?;
    let i = usize::try_from(seq - first).ok()?;
    ts.get(i).copied()
}

/// A reading of the write: its batch's index in the call, its seq, itself.
pub(super) type Entry<'a> = (usize, u64, &'a Reading);

/// Where each reading of a write goes.
#[derive(Default)]
pub(super) struct Plan<'a> {
    /// New: stored by this write.
    pub fresh: Vec<Entry<'a>>,
    /// Stored under the same timestamp: a duplicate unless the stored row
    /// differs ([`super::collide`] compares them).
    pub recheck: Vec<Entry<'a>>,
    /// Collisions known without reading `readings`: `(batch index, seq)`.
    pub collisions: Vec<(usize, u64)>,
}

/// Sorts every reading of `batches` against `known`; `same` tells whether
/// a reading repeated within the write equals its first occurrence (the
/// same comparison [`super::collide`] makes in the database).
pub(super) fn classify<'a>(
    batches: &'a [Batch],
    known: &Known,
    same: impl Fn(&Reading, &Reading) -> bool,
) -> Plan<'a> {
    let mut plan = Plan::default();
    let mut first_seen: HashMap<(&str, u64), &Reading> = HashMap::new();
    for (i, b) in batches.iter().enumerate() {
        let runs = known.get(&b.device);
        for (seq, r) in b.with_seqs() {
            if let Some(ts) = stored_ts(runs, seq) {
                if ts == r.ts_ms {
                    plan.recheck.push((i, seq, r));
                } else {
                    plan.collisions.push((i, seq));
                }
            } else if let Some(first) = first_seen.get(&(b.device.as_str(), seq)) {
                if !same(first, r) {
                    plan.collisions.push((i, seq));
                }
            } else {
                first_seen.insert((b.device.as_str(), seq), r);
                plan.fresh.push((i, seq, r));
            }
        }
    }
    plan
}

/// The runs of `fresh`: per device, maximal stretches of consecutive seqs
/// of at most [`RUN_MAX`], each with its timestamps.
pub(super) fn runs_of<'a>(
    batches: &'a [Batch],
    fresh: &[Entry<'_>],
) -> Vec<(&'a str, u64, Vec<i64>)> {
    let mut per_device: BTreeMap<&str, BTreeMap<u64, i64>> = BTreeMap::new();
    for (i, seq, r) in fresh {
        if let Some(b) = batches.get(*i) {
            per_device
                .entry(b.device.as_str())
                .or_default()
                .insert(*seq, r.ts_ms);
        }
    }
    let mut runs: Vec<(&str, u64, Vec<i64>)> = Vec::new();
    for (device, seqs) in per_device {
        let mut current: Option<(u64, Vec<i64>)> = None;
        for (seq, ts) in seqs {
            match current.as_mut() {
                Some((first, stamps))
                    if *first + stamps.len() as u64 == seq && stamps.len() < RUN_MAX =>
                {
                    stamps.push(ts)
                }
                _ => {
                    if let Some((first, stamps)) = current.take() {
                        runs.push((device, first, stamps));
                    }
                    current = Some((seq, vec![ts]));
                }
            }
        }
        if let Some((first, stamps)) = current {
            runs.push((device, first, stamps));
        }
    }
    runs
}

/// Stores the runs of the new readings (binary `COPY`).
pub(super) async fn insert(
    tx: &Transaction<'_>,
    runs: &[(&str, u64, Vec<i64>)],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(COPY_RUNS).await?;
    let types = [Type::TEXT, Type::INT8, Type::INT8, Type::INT8_ARRAY];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for (device, first, stamps) in runs {
        let last = first + (stamps.len() as u64).saturating_sub(1);
        let (first, last) = (to_i64(*first), to_i64(last));
        let values: [&(dyn ToSql + Sync); 4] = [device, &first, &last, stamps];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await.map(|_| ())
}

/// A device's highest stored seq (0 when none).
pub(super) async fn max_seq(
    tx: &Transaction<'_>,
    device: &str,
) -> Result<u64, tokio_postgres::Error> {
    let max: i64 = tx.query_one(MAX_SEQ, &[&device]).await?.get(0);
    Ok(u64::try_from(max).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(ts_ms: i64) -> Reading {
        Reading {
            sensor: "s1".into(),
            ts_ms,
            lat: 0.0,
            lon: 0.0,
            flags: 0,
            values: Vec::new(),
        }
    }

    fn batch(device: &str, first_seq: u64, stamps: &[i64]) -> Batch {
        Batch {
            device: device.into(),
            first_seq,
            readings: stamps.iter().map(|t| reading(*t)).collect(),
        }
    }

    #[test]
    fn sorts_new_stored_and_repeated_readings() {
        // Stored: d1 seqs 10..=12 at 100, 110, 120.
        let mut known = Known::new();
        known
            .entry("d1".into())
            .or_default()
            .insert(10, vec![100, 110, 120]);
        let batches = [
            // 9 new, 10 resent, 11 restamped (collision), 12 resent, 13 new.
            batch("d1", 9, &[90, 100, 999, 120, 130]),
            // 13 again, same (dropped); 14 new; d2's 10 new.
            batch("d1", 13, &[130, 140]),
            batch("d2", 10, &[100]),
            // 14 again with another timestamp: a collision within the write.
            batch("d1", 14, &[141]),
        ];
        let plan = classify(&batches, &known, |a, b| a == b);
        let fresh: Vec<(usize, u64)> = plan.fresh.iter().map(|(i, s, _)| (*i, *s)).collect();
        assert_eq!(fresh, vec![(0, 9), (0, 13), (1, 14), (2, 10)]);
        let recheck: Vec<(usize, u64)> = plan.recheck.iter().map(|(i, s, _)| (*i, *s)).collect();
        assert_eq!(recheck, vec![(0, 10), (0, 12)]);
        assert_eq!(plan.collisions, vec![(0, 11), (3, 14)]);

        let runs = runs_of(&batches, &plan.fresh);
        assert_eq!(
            runs,
            vec![
                ("d1", 9, vec![90]),
                ("d1", 13, vec![130, 140]),
                ("d2", 10, vec![100])
            ]
        );
    }

    #[test]
    fn a_run_never_exceeds_its_cap() {
        let stamps: Vec<i64> = (0..(RUN_MAX as i64 * 2 + 5)).collect();
        let batches = [batch("d", 1, &stamps)];
        let plan = classify(&batches, &Known::new(), |a, b| a == b);
        let runs = runs_of(&batches, &plan.fresh);
        let shape: Vec<(u64, usize)> = runs.iter().map(|(_, f, s)| (*f, s.len())).collect();
        let cap = RUN_MAX as u64;
        assert_eq!(
            shape,
            vec![(1, RUN_MAX), (1 + cap, RUN_MAX), (1 + 2 * cap, 5)]
        );
        assert_eq!(runs[1].2[0], cap as i64);
    }

    #[test]
    fn stored_timestamp_lookup_respects_run_ends() {
        let mut runs = BTreeMap::new();
        runs.insert(5, vec![50, 60]);
        runs.insert(10, vec![100]);
        assert_eq!(stored_ts(Some(&runs), 4), None);
        assert_eq!(stored_ts(Some(&runs), 6), Some(60));
        assert_eq!(stored_ts(Some(&runs), 7), None);
        assert_eq!(stored_ts(Some(&runs), 10), Some(100));
        assert_eq!(stored_ts(Some(&runs), 11), None);
        assert_eq!(stored_ts(None, 10), None);
    }
}
