//! Rollouts on PostGIS (migration 0008); see [`crate::rollouts`]. Fixed
//! SQL; times cross as Unix milliseconds.

use tokio_postgres::{Client, Row};

use crate::rollouts::{Lease, RolloutState, StoredOutcome, StoredRollout};

/// The rollout row (renewing the owner's lease) and the changed device rows
/// in one statement, so both or neither are stored. An existing rollout is
/// updated only by its owner and only until it finished; the answer is the
/// number of rollout rows written (0: another gateway owns it).
const SAVE: &str = "
WITH r AS (
    INSERT INTO rollouts (id, version, payload, stages, stage, state, halted_reason, started_by,
        max_failures, device_timeout_ms, devices_total, confirmed, failed,
        created_at, updated_at, finished_at, owner, lease_until)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
        'epoch'::timestamptz + $14::int8 * interval '1 millisecond',
        'epoch'::timestamptz + $15::int8 * interval '1 millisecond',
        'epoch'::timestamptz + $16::int8 * interval '1 millisecond',
        $17, now() + $18::int8 * interval '1 millisecond')
    ON CONFLICT (id) DO UPDATE SET stage = excluded.stage, state = excluded.state,
        halted_reason = excluded.halted_reason, confirmed = excluded.confirmed,
        failed = excluded.failed, updated_at = excluded.updated_at,
        finished_at = excluded.finished_at, lease_until = excluded.lease_until
    WHERE rollouts.owner = excluded.owner AND rollouts.finished_at IS NULL
    RETURNING id
), d AS (
    INSERT INTO rollout_devices (rollout_id, device_id, stage, outcome, detail, sent_at, updated_at)
    SELECT r.id, v.device, v.stage, v.outcome, v.detail,
        'epoch'::timestamptz + v.sent * interval '1 millisecond',
        'epoch'::timestamptz + v.updated * interval '1 millisecond'
    FROM r CROSS JOIN unnest($19::text[], $20::int4[], $21::text[], $22::text[], $23::int8[], $24::int8[])
        AS v(device, stage, outcome, detail, sent, updated)
    ON CONFLICT (rollout_id, device_id) DO UPDATE SET outcome = excluded.outcome,
        detail = excluded.detail, sent_at = excluded.sent_at, updated_at = excluded.updated_at
    RETURNING 1
)
SELECT count(*) FROM r";

const ROLLOUTS: &str = "SELECT id, version, payload, stages, stage, state, halted_reason,
    started_by, max_failures, device_timeout_ms, confirmed, failed,
    (extract(epoch FROM created_at) * 1000)::int8, (extract(epoch FROM updated_at) * 1000)::int8,
    (extract(epoch FROM finished_at) * 1000)::int8
    FROM rollouts WHERE id = ANY($1) ORDER BY id";

const DEVICES: &str = "SELECT rollout_id, device_id, stage, outcome, detail,
    (extract(epoch FROM sent_at) * 1000)::int8, (extract(epoch FROM updated_at) * 1000)::int8
    FROM rollout_devices WHERE rollout_id = ANY($1) ORDER BY rollout_id, device_id";

/// Renews the caller's leases and takes over unfinished rollouts whose
/// lease expired. Two gateways claiming at once: the row lock makes the
/// second re-check the first's fresh lease, so one wins.
const CLAIM: &str = "UPDATE rollouts SET owner = $1,
        lease_until = now() + $2::int8 * interval '1 millisecond'
    WHERE finished_at IS NULL AND state IN ('running', 'halted')
      AND (owner = $1 OR lease_until < now())
    RETURNING id";

const COUNTS: &str = "SELECT state, count(*) FROM rollouts GROUP BY state";

fn id(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

pub(super) async fn save(
    c: &Client,
    r: &StoredRollout,
    lease: &Lease,
) -> Result<bool, tokio_postgres::Error> {
    let stages = serde_json::json!(r.stages);
    let total = int(r.stages.iter().map(|s| s.len() as u32).sum());
    let devices: Vec<&str> = r.devices.iter().map(|d| d.device.as_str()).collect();
    let stage: Vec<i32> = r.devices.iter().map(|d| int(d.stage)).collect();
    let outcome: Vec<&str> = r.devices.iter().map(|d| d.outcome.as_str()).collect();
    let detail: Vec<Option<&str>> = r.devices.iter().map(|d| d.detail.as_deref()).collect();
    let sent: Vec<Option<i64>> = r.devices.iter().map(|d| d.sent_ms).collect();
    let updated: Vec<i64> = r.devices.iter().map(|d| d.updated_ms).collect();
    let row = c
        .query_one(
            SAVE,
            &[
                &id(r.id),
                &r.version,
                &r.update,
                &stages,
                &int(r.stage),
                &r.state.as_str(),
                &r.halted,
                &r.started_by,
                &int(r.max_failures),
                &r.device_timeout_ms,
                &total,
                &int(r.confirmed),
                &int(r.failed),
                &r.created_ms,
                &r.updated_ms,
                &r.finished_ms,
                &lease.owner,
                &lease.millis,
                &devices,
                &stage,
                &outcome,
                &detail,
                &sent,
                &updated,
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// The rollouts with these ids (those that exist), with every device.
pub(super) async fn load(
    c: &Client,
    ids: &[i64],
) -> Result<Vec<StoredRollout>, tokio_postgres::Error> {
    let ids = ids.to_vec();
    let mut out: Vec<StoredRollout> = c
        .query(ROLLOUTS, &[&ids])
        .await?
        .iter()
        .map(rollout)
        .collect();
    for row in c.query(DEVICES, &[&ids]).await? {
        let owner = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        if let Some(r) = out.iter_mut().find(|r| r.id == owner) {
            r.devices.push(StoredOutcome {
                device: row.get(1),
                stage: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
                outcome: row.get(3),
                detail: row.get(4),
                sent_ms: row.get(5),
                updated_ms: row.get(6),
            });
        }
    }
    Ok(out)
}

fn rollout(row: &Row) -> StoredRollout {
    let count = |i: usize| u32::try_from(row.get::<_, i32>(i)).unwrap_or(0);
    let state: String = row.get(5);
    StoredRollout {
        id: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        version: row.get(1),
        update: row.get(2),
        // Written by `save` from a `Vec<Vec<String>>`; the CHECK keeps
        // `state` to the four known values.
        stages: serde_json::from_value(row.get(3)).unwrap_or_default(),
        stage: count(4),
        state: RolloutState::parse(&state).unwrap_or(RolloutState::Halted),
        halted: row.get(6),
        started_by: row.get(7),
        max_failures: count(8),
        device_timeout_ms: row.get(9),
        confirmed: count(10),
        failed: count(11),
        created_ms: row.get(12),
        updated_ms: row.get(13),
        finished_ms: row.get(14),
        devices: Vec::new(),
    }
}

pub(super) async fn claim(
    c: &Client,
    lease: &Lease,
) -> Result<Vec<StoredRollout>, tokio_postgres::Error> {
    let ids: Vec<i64> = c
        .query(CLAIM, &[&lease.owner, &lease.millis])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    load(c, &ids).await
}

pub(super) async fn counts(c: &Client) -> Result<Vec<(RolloutState, u64)>, tokio_postgres::Error> {
    Ok(c.query(COUNTS, &[])
        .await?
        .iter()
        .filter_map(|r| {
            let state = RolloutState::parse(r.get(0))?;
            Some((state, u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
        })
        .collect())
}
