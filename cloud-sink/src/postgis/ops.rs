//! Audit log and re-send points on PostGIS (migration 0003), dead letters
//! (migration 0005). Fixed SQL.

use tokio_postgres::Client;

use crate::ops::{AuditEntry, AuditRecord, ResendPoint};
use crate::DeadLetter;

const INSERT_AUDIT: &str = "INSERT INTO audit_log (actor, action, target, outcome, detail)
    VALUES ($1, $2, $3, $4, $5)";

const LIST_AUDIT: &str = "SELECT id, (extract(epoch FROM at) * 1000)::int8, actor, action,
    target, outcome, detail FROM audit_log ORDER BY id DESC LIMIT $1";

/// Every device with a status or a stored reading, and the lowest seq it
/// lacks (see [`ResendPoint`]); one index scan of `reading_runs`' primary
/// key per device, a row per run of seqs. The runs outlive retention, so
/// readings dropped with their partition are not asked for again.
const RESEND_POINTS: &str = "
WITH known AS (
    SELECT device_id FROM devices
    UNION
    SELECT DISTINCT device_id FROM reading_runs
)
SELECT k.device_id, s.stored,
       coalesce(h.first_missing, s.max_seq + 1) AS from_seq
FROM known k
CROSS JOIN LATERAL (
    SELECT coalesce(sum(last_seq - first_seq + 1), 0)::int8 AS stored,
           coalesce(max(last_seq), 0) AS max_seq
    FROM reading_runs r WHERE r.device_id = k.device_id
) s
CROSS JOIN LATERAL (
    SELECT min(prev + 1) AS first_missing
    FROM (SELECT first_seq, lag(last_seq, 1, 0::int8) OVER (ORDER BY last_seq) AS prev
          FROM reading_runs r WHERE r.device_id = k.device_id) w
    WHERE first_seq - prev > 1
) h
ORDER BY k.device_id";

const INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters
    (device_id, first_seq, last_seq, reason, payload) VALUES ($1, $2, $3, $4, $5)";

pub(super) async fn dead_letter(c: &Client, d: &DeadLetter) -> Result<u64, tokio_postgres::Error> {
    let seq = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    c.execute(
        INSERT_DEAD_LETTER,
        &[
            &d.device,
            &seq(d.first_seq),
            &seq(d.last_seq),
            &d.reason,
            &d.payload,
        ],
    )
    .await
}

pub(super) async fn record_audit(c: &Client, e: &AuditEntry) -> Result<u64, tokio_postgres::Error> {
    c.execute(
        INSERT_AUDIT,
        &[&e.actor, &e.action, &e.target, &e.outcome, &e.detail],
    )
    .await
}

pub(super) async fn audit(
    c: &Client,
    limit: i64,
) -> Result<Vec<AuditRecord>, tokio_postgres::Error> {
    let rows = c.query(LIST_AUDIT, &[&limit]).await?;
    Ok(rows
        .iter()
        .map(|r| AuditRecord {
            id: r.get(0),
            at_ms: r.get(1),
            actor: r.get(2),
            action: r.get(3),
            target: r.get(4),
            outcome: r.get(5),
            detail: r.get(6),
        })
        .collect())
}

pub(super) async fn resend_points(c: &Client) -> Result<Vec<ResendPoint>, tokio_postgres::Error> {
    let rows = c.query(RESEND_POINTS, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| ResendPoint {
            device: r.get(0),
            stored: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
            from_seq: u64::try_from(r.get::<_, i64>(2)).unwrap_or(1).max(1),
        })
        .collect())
}

/// For `aeris-gateway verify`: the schema version of the database at `url`
/// without migrating it (0 when no migration ran).
pub async fn schema_version(url: &str) -> Result<i32, crate::SinkError> {
    let client = super::connect(url).await?;
    super::migrate::applied_version(&client).await
}

/// Rows stored for `device`.
pub async fn device_rows(url: &str, device: &str) -> Result<i64, crate::SinkError> {
    let client = super::connect(url).await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM readings WHERE device_id = $1",
            &[&device],
        )
        .await
        .map_err(super::unavailable)?;
    Ok(row.get(0))
}

/// Deletes every row of `device` (readings, their runs and status), under
/// the device's write lock:
/// removes the canary of `aeris-gateway verify`. Returns the readings
/// removed. A small DELETE of one device's rows, not retention.
pub async fn remove_device(url: &str, device: &str) -> Result<u64, crate::SinkError> {
    let mut client = super::connect(url).await?;
    let tx = client.transaction().await.map_err(super::unavailable)?;
    super::runs::lock(&tx, &[device])
        .await
        .map_err(super::unavailable)?;
    let n = tx
        .execute("DELETE FROM readings WHERE device_id = $1", &[&device])
        .await
        .map_err(super::unavailable)?;
    tx.execute("DELETE FROM reading_runs WHERE device_id = $1", &[&device])
        .await
        .map_err(super::unavailable)?;
    tx.execute("DELETE FROM devices WHERE device_id = $1", &[&device])
        .await
        .map_err(super::unavailable)?;
    tx.commit().await.map_err(super::unavailable)?;
    Ok(n)
}
