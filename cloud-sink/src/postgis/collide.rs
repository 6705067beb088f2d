//! Seq collisions: staged readings whose `(device_id, seq)` the database
//! holds for another reading (another sensor, timestamp, flags or value; a
//! resend of the same reading has all of them equal). It happens when a device lost its buffer
//! or had it restored from an old image and numbers new readings again
//! from an old seq. `ON CONFLICT DO NOTHING` skipped them; this finds them,
//! in the write's transaction, so the gateway neither acks them nor loses
//! them silently.
//!
//! Cost: nothing when the `INSERT` stored every staged row (the caller
//! compares the counts); otherwise one primary-key probe of `reading_keys`
//! and one of a partition per staged row, and per colliding
//! device one backward index scan for its highest seq and one upsert of
//! its count in `devices` (migration 0004).

use std::collections::BTreeMap;

use tokio_postgres::Transaction;

/// Staged readings that differ from the stored reading under their key.
/// The key's timestamp (`reading_keys`, migration 0006) differing is a
/// collision on its own; otherwise the stored row is compared, found in
/// the one partition of that timestamp. A key whose row was dropped by
/// retention, with the same timestamp, is a duplicate: nothing is left to
/// compare. Each `LIMIT 1` keeps its lateral subquery from being flattened
/// into a join, so each staged row is one primary-key probe of
/// `reading_keys` and at most one of a partition whatever the planner
/// guesses of the (never analyzed) staging table: never a scan.
const COLLISIONS: &str = "
SELECT s.batch, s.seq, s.device_id
FROM aeris_staging s
CROSS JOIN LATERAL (
    SELECT k.ts FROM reading_keys k
    WHERE k.device_id = s.device_id AND k.seq = s.seq
    LIMIT 1
) k
LEFT JOIN LATERAL (
    SELECT r.sensor_id, r.ts, r.flags, r.pm1, r.pm25, r.pm10, r.no2, r.o3, r.co, r.so2,
           r.measurements, r.model_outputs
    FROM readings r
    WHERE r.device_id = s.device_id AND r.seq = s.seq AND r.ts = k.ts
    LIMIT 1
) r ON true
WHERE k.ts <> 'epoch'::timestamptz + s.ts_ms * interval '1 millisecond'
   OR r.sensor_id <> s.sensor_id
   OR (r.sensor_id IS NOT NULL
       AND (r.flags, r.pm1, r.pm25, r.pm10, r.no2, r.o3, r.co, r.so2, r.measurements, r.model_outputs)
           IS DISTINCT FROM
           (s.flags, s.pm1, s.pm25, s.pm10, s.no2, s.o3, s.co, s.so2, s.measurements, s.model_outputs))
ORDER BY s.batch, s.seq";

const MAX_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM reading_keys WHERE device_id = $1";

/// Counts collisions on the device's row; a device with no status yet gets
/// a row with an empty status at the epoch, which its first status replaces
/// (the status upsert leaves the collision columns alone).
const RECORD: &str = "
INSERT INTO devices (device_id, boot_id, status_ts, online, agent_version, last_seq,
                     queued_readings, queued_bytes, seq_collisions, last_seq_collision)
VALUES ($1, 0, 'epoch', false, '', 0, 0, 0, $2, now())
ON CONFLICT (device_id) DO UPDATE SET
    seq_collisions = devices.seq_collisions + EXCLUDED.seq_collisions,
    last_seq_collision = EXCLUDED.last_seq_collision";

/// What [`find`] found: `(batch index, seq)` of each colliding reading, and
/// each colliding device's highest stored seq.
pub(super) type Found = (Vec<(usize, u64)>, BTreeMap<String, u64>);

/// Finds the staged readings that collide, records them per device, and
/// returns them. Call after the merge, before the commit.
pub(super) async fn find(tx: &Transaction<'_>) -> Result<Found, tokio_postgres::Error> {
    let rows = tx.query(COLLISIONS, &[]).await?;
    let mut collisions = Vec::with_capacity(rows.len());
    let mut per_device: BTreeMap<String, i64> = BTreeMap::new();
    for row in &rows {
        let batch = usize::try_from(row.get::<_, i32>(0)).unwrap_or(0);
        let seq = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
        collisions.push((batch, seq));
        *per_device.entry(row.get(2)).or_default() += 1;
    }
    let mut max_seq = BTreeMap::new();
    for (device, n) in per_device {
        tx.execute(RECORD, &[&device, &n]).await?;
        let max: i64 = tx.query_one(MAX_SEQ, &[&device]).await?.get(0);
        max_seq.insert(device, u64::try_from(max).unwrap_or(0));
    }
    Ok((collisions, max_seq))
}
