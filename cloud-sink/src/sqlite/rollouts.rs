//! Rollouts on the embedded SQLite sink, same meaning as PostGIS migration
//! 0008 (see [`crate::rollouts`]). Like the audit log, the tables are
//! created on first use and need no schema version of their own. Times are
//! Unix ms of the gateway's clock (one gateway per file).

use aeris_wire::now_ms;
use rusqlite::{params, Connection, OptionalExtension};

use crate::rollouts::{Lease, RolloutState, StoredOutcome, StoredRollout};

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY, version TEXT NOT NULL, payload TEXT NOT NULL, stages TEXT NOT NULL,
    stage INTEGER NOT NULL, state TEXT NOT NULL, halted_reason TEXT, started_by TEXT NOT NULL,
    max_failures INTEGER NOT NULL, device_timeout_ms INTEGER NOT NULL,
    devices_total INTEGER NOT NULL, confirmed INTEGER NOT NULL, failed INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, finished_ms INTEGER,
    owner TEXT NOT NULL, lease_until_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id INTEGER NOT NULL, device_id TEXT NOT NULL, stage INTEGER NOT NULL,
    outcome TEXT NOT NULL, detail TEXT, sent_ms INTEGER, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, device_id)) WITHOUT ROWID;";

const SAVE: &str = "INSERT INTO rollouts (id, version, payload, stages, stage, state,
    halted_reason, started_by, max_failures, device_timeout_ms, devices_total, confirmed, failed,
    created_ms, updated_ms, finished_ms, owner, lease_until_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
    ON CONFLICT (id) DO UPDATE SET stage = excluded.stage, state = excluded.state,
        halted_reason = excluded.halted_reason, confirmed = excluded.confirmed,
        failed = excluded.failed, updated_ms = excluded.updated_ms,
        finished_ms = excluded.finished_ms, lease_until_ms = excluded.lease_until_ms
    WHERE rollouts.owner = excluded.owner AND rollouts.finished_ms IS NULL";

const SAVE_DEVICE: &str = "INSERT INTO rollout_devices
    (rollout_id, device_id, stage, outcome, detail, sent_ms, updated_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (rollout_id, device_id) DO UPDATE SET outcome = excluded.outcome,
        detail = excluded.detail, sent_ms = excluded.sent_ms, updated_ms = excluded.updated_ms";

const ROLLOUT: &str = "SELECT id, version, payload, stages, stage, state, halted_reason,
    started_by, max_failures, device_timeout_ms, confirmed, failed, created_ms, updated_ms,
    finished_ms FROM rollouts WHERE id = ?1";

const DEVICES: &str = "SELECT device_id, stage, outcome, detail, sent_ms, updated_ms
    FROM rollout_devices WHERE rollout_id = ?1 ORDER BY device_id";

const CLAIM: &str = "UPDATE rollouts SET owner = ?1, lease_until_ms = ?2 + ?3
    WHERE finished_ms IS NULL AND state IN ('running', 'halted')
      AND (owner = ?1 OR lease_until_ms < ?2)
    RETURNING id";

pub(super) fn save(conn: &Connection, r: &StoredRollout, lease: &Lease) -> rusqlite::Result<bool> {
    conn.execute_batch(CREATE)?;
    let tx = conn.unchecked_transaction()?;
    let total: usize = r.stages.iter().map(Vec::len).sum();
    let written = tx.execute(
        SAVE,
        params![
            r.id as i64,
            r.version,
            r.update.to_string(),
            serde_json::json!(r.stages).to_string(),
            r.stage,
            r.state.as_str(),
            r.halted,
            r.started_by,
            r.max_failures,
            r.device_timeout_ms,
            total as i64,
            r.confirmed,
            r.failed,
            r.created_ms,
            r.updated_ms,
            r.finished_ms,
            lease.owner,
            now_ms().saturating_add(lease.millis),
        ],
    )?;
    if written != 1 {
        return Ok(false);
    }
    for d in &r.devices {
        tx.execute(
            SAVE_DEVICE,
            params![
                r.id as i64,
                d.device,
                d.stage,
                d.outcome,
                d.detail,
                d.sent_ms,
                d.updated_ms
            ],
        )?;
    }
    tx.commit()?;
    Ok(true)
}

pub(super) fn load(conn: &Connection, id: u64) -> rusqlite::Result<Option<StoredRollout>> {
    conn.execute_batch(CREATE)?;
    let found = conn
        .query_row(ROLLOUT, [id as i64], |row| {
            let payload: String = row.get(2)?;
            let stages: String = row.get(3)?;
            let state: String = row.get(5)?;
            Ok(StoredRollout {
                id: row.get::<_, i64>(0)? as u64,
                version: row.get(1)?,
                update: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                stages: serde_json::from_str(&stages).unwrap_or_default(),
                stage: row.get(4)?,
                state: RolloutState::parse(&state).unwrap_or(RolloutState::Halted),
                halted: row.get(6)?,
                started_by: row.get(7)?,
                max_failures: row.get(8)?,
                device_timeout_ms: row.get(9)?,
                confirmed: row.get(10)?,
                failed: row.get(11)?,
                created_ms: row.get(12)?,
                updated_ms: row.get(13)?,
                finished_ms: row.get(14)?,
                devices: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut r) = found else {
        return Ok(None);
    };
    let mut stmt = conn.prepare(DEVICES)?;
    let devices = stmt.query_map([id as i64], |row| {
        Ok(StoredOutcome {
            device: row.get(0)?,
            stage: row.get(1)?,
            outcome: row.get(2)?,
            detail: row.get(3)?,
            sent_ms: row.get(4)?,
            updated_ms: row.get(5)?,
        })
    })?;
    r.devices = devices.collect::<rusqlite::Result<_>>()?;
    Ok(Some(r))
}

pub(super) fn claim(conn: &Connection, lease: &Lease) -> rusqlite::Result<Vec<StoredRollout>> {
    conn.execute_batch(CREATE)?;
    let ids: Vec<i64> = {
        let mut stmt = conn.prepare(CLAIM)?;
        let rows = stmt.query_map(params![lease.owner, now_ms(), lease.millis], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut out = Vec::new();
    for id in ids {
        out.extend(load(conn, id as u64)?);
    }
    Ok(out)
}

pub(super) fn counts(conn: &Connection) -> rusqlite::Result<Vec<(RolloutState, u64)>> {
    conn.execute_batch(CREATE)?;
    let mut stmt = conn.prepare("SELECT state, count(*) FROM rollouts GROUP BY state")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (state, n) = row?;
        if let Some(state) = RolloutState::parse(&state) {
            out.push((state, n as u64));
        }
    }
    Ok(out)
}
