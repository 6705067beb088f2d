//! Reads for the HTTP API and the device-status upsert. Fixed SQL; data
//! travels only as parameters.

use std::collections::BTreeMap;

use aeris_wire::{DeviceState, Status};
use tokio_postgres::Client;

use crate::query::{DeviceReport, ReadingsQuery, StoredReading};

/// Newer statuses replace older ones; a late retained copy does not.
const UPSERT_STATUS: &str = "
INSERT INTO devices (device_id, boot_id, status_ts, online, agent_version, last_seq,
                     queued_readings, queued_bytes, oldest_unsent, losses, models, drain_eta_s)
VALUES ($1, $2, 'epoch'::timestamptz + $3::int8 * interval '1 millisecond', $4, $5, $6, $7, $8,
        'epoch'::timestamptz + $9::int8 * interval '1 millisecond', $10, $11, $12)
ON CONFLICT (device_id) DO UPDATE SET
    boot_id = EXCLUDED.boot_id, status_ts = EXCLUDED.status_ts, online = EXCLUDED.online,
    agent_version = EXCLUDED.agent_version, last_seq = EXCLUDED.last_seq,
    queued_readings = EXCLUDED.queued_readings, queued_bytes = EXCLUDED.queued_bytes,
    oldest_unsent = EXCLUDED.oldest_unsent, losses = EXCLUDED.losses,
    models = EXCLUDED.models, drain_eta_s = EXCLUDED.drain_eta_s, updated_at = now()
WHERE devices.status_ts <= EXCLUDED.status_ts";

pub const READINGS: &str = "
SELECT seq, (extract(epoch FROM ts) * 1000)::int8, ST_Y(geom), ST_X(geom), flags,
       jsonb_strip_nulls(jsonb_build_object('pm1', pm1, 'pm25', pm25, 'pm10', pm10, 'no2', no2,
                                            'o3', o3, 'co', co, 'so2', so2)) || measurements
       || CASE WHEN pm25_correction IS NULL OR pm25_raw IS NULL THEN '{}'::jsonb
               ELSE jsonb_build_object('raw:pm25:' || pm25_correction, pm25_raw) END,
       model_outputs
FROM readings
WHERE device_id = $1 AND sensor_id = $2
  AND ts >= 'epoch'::timestamptz + $3::int8 * interval '1 millisecond'
  AND ts <  'epoch'::timestamptz + $4::int8 * interval '1 millisecond'
ORDER BY ts, seq
LIMIT $5";

/// Counts and gaps are computed in the database from `reading_runs`
/// (migration 0014): each run compared with the one before it (`lag`), the
/// first against 0, a row per run of seqs rather than per reading. The
/// runs outlive retention, so a reading whose partition was dropped still
/// counts as received and is not reported as a gap.
const DEVICES: &str = "
SELECT d.device_id, d.online, d.agent_version, (extract(epoch FROM d.status_ts) * 1000)::int8,
       d.last_seq, d.queued_readings, d.queued_bytes,
       (extract(epoch FROM d.oldest_unsent) * 1000)::int8, d.losses,
       s.received, s.max_seq, g.gaps,
       d.seq_collisions, (extract(epoch FROM d.last_seq_collision) * 1000)::int8,
       d.boot_id, d.models, d.drain_eta_s
FROM devices d
CROSS JOIN LATERAL (
    SELECT coalesce(sum(last_seq - first_seq + 1), 0)::int8 AS received,
           coalesce(max(last_seq), 0) AS max_seq
    FROM reading_runs r WHERE r.device_id = d.device_id
) s
CROSS JOIN LATERAL (
    SELECT coalesce(jsonb_agg(jsonb_build_array(first, last) ORDER BY first), '[]') AS gaps
    FROM (
        SELECT prev + 1 AS first, first_seq - 1 AS last
        FROM (SELECT first_seq, lag(last_seq, 1, 0::int8) OVER (ORDER BY last_seq) AS prev
              FROM reading_runs r WHERE r.device_id = d.device_id) w
        WHERE first_seq - prev > 1
        ORDER BY first
        LIMIT 100
    ) h
) g
ORDER BY d.device_id";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) async fn record_status(
    client: &Client,
    s: &Status,
) -> Result<u64, tokio_postgres::Error> {
    let losses = serde_json::Value::Object(
        s.losses
            .iter()
            .map(|l| (l.reason.clone(), serde_json::json!(l.count)))
            .collect(),
    );
    let models = crate::query::models_json(&s.models);
    client
        .execute(
            UPSERT_STATUS,
            &[
                &s.device,
                &(s.boot_id as i64),
                &s.ts_ms,
                &(s.state == DeviceState::Online),
                &s.agent_version,
                &to_i64(s.last_seq),
                &to_i64(s.queued_readings),
                &to_i64(s.queued_bytes),
                &s.oldest_unsent_ms,
                &losses,
                &models,
                &s.drain_eta_s.map(to_i64),
            ],
        )
        .await
}

fn numbers(v: serde_json::Value) -> BTreeMap<String, f64> {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_f64()?)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

pub(super) async fn readings(
    client: &Client,
    q: &ReadingsQuery,
) -> Result<Vec<StoredReading>, tokio_postgres::Error> {
    let rows = client
        .query(
            READINGS,
            &[&q.device, &q.sensor, &q.from_ms, &q.to_ms, &q.limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredReading {
            seq: to_u64(r.get(0)),
            ts_ms: r.get(1),
            lat: r.get(2),
            lon: r.get(3),
            flags: r.get::<_, i32>(4) as u32,
            values: numbers(r.get(5)),
            model_outputs: numbers(r.get(6)),
        })
        .collect())
}

pub(super) async fn devices(client: &Client) -> Result<Vec<DeviceReport>, tokio_postgres::Error> {
    let rows = client.query(DEVICES, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let last_seq = to_u64(r.get(4));
            let max_seq = to_u64(r.get(10));
            let losses = numbers(r.get(8))
                .into_iter()
                .map(|(k, v)| (k, v as u64))
                .collect();
            let gaps = match r.get::<_, serde_json::Value>(11) {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|g| Some([g.get(0)?.as_u64()?, g.get(1)?.as_u64()?]))
                    .collect(),
                _ => Vec::new(),
            };
            DeviceReport {
                device: r.get(0),
                online: r.get(1),
                agent_version: r.get(2),
                status_ts_ms: r.get(3),
                last_seq,
                queued_readings: to_u64(r.get(5)),
                queued_bytes: to_u64(r.get(6)),
                oldest_unsent_ms: r.get(7),
                losses,
                received: to_u64(r.get(9)),
                gaps,
                not_yet_received: last_seq.saturating_sub(max_seq),
                seq_collisions: to_u64(r.get(12)),
                last_seq_collision_ms: r.get(13),
                // The wire's u64, stored bit for bit in a bigint.
                boot_id: r.get::<_, i64>(14) as u64,
                models: crate::query::models_from_json(r.get(15)),
                drain_eta_s: r.get::<_, Option<i64>>(16).map(to_u64),
                oldest_unsent_age_s: None,
            }
            .with_age(aeris_wire::now_ms())
        })
        .collect())
}

/// Keeps the column list of [`POLLUTANT_COLUMNS`] and the SQL above in step.
#[cfg(test)]
mod tests {
    #[test]
    fn readings_query_names_every_pollutant_column() {
        for c in crate::query::POLLUTANT_COLUMNS {
            assert!(super::READINGS.contains(&format!("'{c}', {c}")), "{c}");
        }
    }
}
