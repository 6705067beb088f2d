//! Seq collisions: readings whose `(device_id, seq)` the database holds
//! for another reading (another sensor, timestamp, flags or value; a
//! resend of the same reading has all of them equal). It happens when a
//! device lost its buffer or had it restored from an old image and numbers
//! new readings again from an old seq. The write stores none of them; this
//! finds them, in the write's transaction, so the gateway neither acks
//! them nor loses them silently.
//!
//! Cost: nothing when every reading of the write was new. A reading whose
//! key a stored run holds under another timestamp is a collision without
//! reading `readings` ([`super::runs::classify`]); one stored under the
//! same timestamp is staged and compared with the stored row, one probe of
//! `(device_id, ts)` in that day's partition each. Per colliding device,
//! one probe for its highest seq and one upsert of its count in `devices`
//! (migration 0004).

use std::collections::BTreeMap;

use aeris_wire::Batch;
use tokio_postgres::Transaction;

use super::runs;

/// Staged readings that differ from the stored reading under their key,
/// stored under the same timestamp (the run's timestamp differing is a
/// collision found before). The stored row is found in the one partition
/// of that timestamp; a key whose row retention dropped is a duplicate:
/// nothing is left to compare. The `LIMIT 1` keeps the lateral subquery
/// from being flattened into a join, so each staged row is one probe
/// whatever the planner guesses of the (never analyzed) staging table.
const COLLISIONS: &str = "
SELECT s.batch, s.seq
FROM aeris_staging s
LEFT JOIN LATERAL (
    SELECT r.sensor_id, r.flags, r.pm1, r.pm25, r.pm10, r.no2, r.o3, r.co, r.so2,
           r.measurements, r.model_outputs
    FROM readings r
    WHERE r.device_id = s.device_id
      AND r.ts = 'epoch'::timestamptz + s.ts_ms * interval '1 millisecond'
      AND r.seq = s.seq
    LIMIT 1
) r ON true
WHERE r.sensor_id <> s.sensor_id
   OR (r.sensor_id IS NOT NULL
       AND (r.flags, r.pm1, r.pm25, r.pm10, r.no2, r.o3, r.co, r.so2, r.measurements, r.model_outputs)
           IS DISTINCT FROM
           (s.flags, s.pm1, s.pm25, s.pm10, s.no2, s.o3, s.co, s.so2, s.measurements, s.model_outputs))
ORDER BY s.batch, s.seq";

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

/// The collisions of a write: `known` (found without the database) and
/// those among the staged readings (see [`COLLISIONS`]; pass `staged`
/// false when none were staged), recorded per device and returned in
/// `(batch, seq)` order. Call after the write's runs are stored, before
/// the commit.
pub(super) async fn find(
    tx: &Transaction<'_>,
    batches: &[Batch],
    mut collisions: Vec<(usize, u64)>,
    staged: bool,
) -> Result<Found, tokio_postgres::Error> {
    if staged {
        for row in tx.query(COLLISIONS, &[]).await? {
            let batch = usize::try_from(row.get::<_, i32>(0)).unwrap_or(0);
            let seq = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
            collisions.push((batch, seq));
        }
    }
    collisions.sort_unstable();
    let mut per_device: BTreeMap<&str, i64> = BTreeMap::new();
    for (batch, _) in &collisions {
        if let Some(b) = batches.get(*batch) {
            *per_device.entry(b.device.as_str()).or_default() += 1;
        }
    }
    let mut max_seq = BTreeMap::new();
    for (device, n) in per_device {
        tx.execute(RECORD, &[&device, &n]).await?;
        max_seq.insert(device.to_owned(), runs::max_seq(tx, device).await?);
    }
    Ok((collisions, max_seq))
}
