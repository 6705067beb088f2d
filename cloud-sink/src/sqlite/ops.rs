//! Audit log and re-send points on the embedded SQLite sink, same meaning
//! as on PostGIS. The audit table is created on first use, so it needs no
//! schema version of its own.

use aeris_wire::now_ms;
use rusqlite::{params, Connection};

use crate::ops::{AuditEntry, AuditRecord, ResendPoint};

const CREATE_AUDIT: &str = "CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
    outcome TEXT NOT NULL, detail TEXT NOT NULL)";

const RESEND_POINTS: &str = "
WITH known AS (SELECT device_id FROM devices UNION SELECT DISTINCT device_id FROM readings)
SELECT k.device_id,
       (SELECT count(*) FROM readings r WHERE r.device_id = k.device_id),
       coalesce(
         (SELECT min(prev + 1) FROM (
             SELECT seq, lag(seq, 1, 0) OVER (ORDER BY seq) AS prev
             FROM readings r WHERE r.device_id = k.device_id) WHERE seq - prev > 1),
         (SELECT coalesce(max(seq), 0) + 1 FROM readings r WHERE r.device_id = k.device_id))
FROM known k ORDER BY k.device_id";

pub(super) fn record_audit(conn: &Connection, e: &AuditEntry) -> rusqlite::Result<()> {
    conn.execute_batch(CREATE_AUDIT)?;
    conn.execute(
        "INSERT INTO audit_log (at_ms, actor, action, target, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            now_ms(),
            e.actor,
            e.action,
            e.target,
            e.outcome,
            e.detail.to_string()
        ],
    )?;
    Ok(())
}

pub(super) fn audit(conn: &Connection, limit: i64) -> rusqlite::Result<Vec<AuditRecord>> {
    conn.execute_batch(CREATE_AUDIT)?;
    let mut stmt = conn.prepare(
        "SELECT id, at_ms, actor, action, target, outcome, detail FROM audit_log
         ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        let detail: String = r.get(6)?;
        Ok(AuditRecord {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            outcome: r.get(5)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        })
    })?;
    rows.collect()
}

pub(super) fn resend_points(conn: &Connection) -> rusqlite::Result<Vec<ResendPoint>> {
    let mut stmt = conn.prepare(RESEND_POINTS)?;
    let rows = stmt.query_map([], |r| {
        Ok(ResendPoint {
            device: r.get(0)?,
            stored: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            from_seq: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(1).max(1),
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use crate::ops::AuditEntry;
    use crate::{Sink, SqliteSink};
    use aeris_wire::{Batch, Reading, Value};

    fn batch(device: &str, first_seq: u64, n: usize) -> Batch {
        let r = Reading {
            sensor: "s".into(),
            ts_ms: 1_000,
            lat: 50.0,
            lon: 8.0,
            flags: 0,
            values: vec![Value {
                quantity: "pm10".into(),
                value: 1.0,
            }],
        };
        Batch {
            device: device.into(),
            first_seq,
            readings: vec![r; n],
        }
    }

    #[tokio::test]
    async fn resend_starts_at_the_first_hole_and_audit_rows_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let sink = SqliteSink::open(&dir.path().join("c.db")).unwrap();
        // a: 1..=3 and 6..=7 (hole 4..=5); b: 1..=4 (no hole); c: from 3.
        sink.write(&[
            batch("a", 1, 3),
            batch("a", 6, 2),
            batch("b", 1, 4),
            batch("c", 3, 1),
        ])
        .await
        .unwrap();
        let p = sink.resend_points().await.unwrap();
        let got: Vec<(&str, u64, u64)> = p
            .iter()
            .map(|p| (p.device.as_str(), p.from_seq, p.stored))
            .collect();
        assert_eq!(got, vec![("a", 4, 5), ("b", 5, 4), ("c", 1, 1)]);

        for (i, outcome) in ["ok", "error: broker down"].iter().enumerate() {
            sink.record_audit(&AuditEntry {
                actor: format!("op{i}"),
                action: "resend".into(),
                target: "fleet".into(),
                outcome: (*outcome).into(),
                detail: serde_json::json!({ "n": i }),
            })
            .await
            .unwrap();
        }
        let rows = sink.audit(10).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].actor, "op1");
        assert_eq!(rows[0].outcome, "error: broker down");
        assert_eq!(rows[1].detail["n"], 0);
        assert!(rows[0].at_ms > 0);
    }
}
