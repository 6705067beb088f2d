//! The buffer's SQLite schema, version by version, and the migrations
//! that bring an older file up to the current one.

use super::*;

pub(super) const SCHEMA_VERSION: i64 = 5;

pub(super) const SCHEMA: &str = "
CREATE TABLE readings (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('next_seq', 1);
";

/// Version 1 to 2: raw-reading identity, aggregates, acked-but-kept rows.
pub(super) const MIGRATE_2: &str = "
ALTER TABLE readings ADD COLUMN sensor TEXT NOT NULL DEFAULT '';
ALTER TABLE readings ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE readings ADD COLUMN acked_ms INTEGER;
";

#[cfg(test)]
pub(super) const IDENTITY_2: &str = "
CREATE UNIQUE INDEX readings_identity ON readings (sensor, ts_ms) WHERE kind = 0;
";

pub(super) const INDEXES_2: &str = "
CREATE INDEX readings_unsent ON readings (kind, ts_ms) WHERE acked_ms IS NULL;
CREATE INDEX readings_acked ON readings (acked_ms) WHERE acked_ms IS NOT NULL;
";

/// Version 2 to 3: distinct readings that share a sensor and timestamp are
/// all kept (redeliveries are recognised by the ledger instead), rows carry
/// their format, and published rows are marked.
pub(super) const MIGRATE_3: &str = "
DROP INDEX IF EXISTS readings_identity;
ALTER TABLE readings ADD COLUMN fmt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE readings ADD COLUMN sent_ms INTEGER;
CREATE TABLE deliveries (pkid INTEGER PRIMARY KEY, digest BLOB NOT NULL,
                         first_seq INTEGER NOT NULL, n INTEGER NOT NULL);
";

/// Version 3 to 4: published rows as seq ranges, the delivery ledger as a
/// log with one row per commit (both were a write per reading or message).
pub(super) const MIGRATE_4: &str = "
CREATE TABLE sent (first INTEGER PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE delivery_log (id INTEGER PRIMARY KEY, n INTEGER NOT NULL,
                           entries BLOB NOT NULL);
";

pub(super) const DROP_3: &str = "
DROP TABLE deliveries;
ALTER TABLE readings DROP COLUMN sent_ms;
";

/// Schema 1 to 2: fills the new `sensor` column from the bodies. Every row
/// is kept: schema 2's identity index (which dropped distinct readings
/// sharing a sensor and timestamp) is not created on this path.
pub(super) fn migrate_from_1(conn: &Connection) -> Result<(), BufferError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(MIGRATE_2)?;
    let rows: Vec<(i64, Vec<u8>)> = {
        let mut stmt = tx.prepare("SELECT seq, body FROM readings ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (seq, body) in rows {
        // Undecodable rows stay; reading them back counts them as corrupt.
        let sensor = match row::decode(1, &body) {
            Ok(r) => r.sensor,
            Err(_) => format!("\u{0}corrupt-{seq}"),
        };
        tx.execute(
            "UPDATE readings SET sensor = ?2 WHERE seq = ?1",
            params![seq, sensor],
        )?;
    }
    tx.execute_batch(INDEXES_2)?;
    tx.pragma_update(None, "user_version", 2)?;
    tx.commit()?;
    Ok(())
}

/// Schema 2 to 3 ([`MIGRATE_3`]); rows keep their bodies, as format 1.
pub(super) fn migrate_from_2(conn: &Connection) -> Result<(), BufferError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(MIGRATE_3)?;
    tx.pragma_update(None, "user_version", 3)?;
    tx.commit()?;
    Ok(())
}

/// Schema 3 to 4 ([`MIGRATE_4`]): the per-row sent marks become ranges
/// (a run of consecutive published rows is one range), the ledger one log
/// row.
pub(super) fn migrate_from_3(conn: &Connection) -> Result<(), BufferError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(MIGRATE_4)?;
    let marks: Vec<(i64, bool)> = {
        let mut stmt = tx.prepare(
            "SELECT seq, sent_ms IS NOT NULL FROM readings WHERE acked_ms IS NULL ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut run: Option<(i64, i64)> = None;
    for (seq, sent) in marks.into_iter().chain([(i64::MAX, false)]) {
        match (sent, run) {
            (true, Some((first, _))) => run = Some((first, seq)),
            (true, None) => run = Some((seq, seq)),
            (false, Some((first, last))) => {
                tx.execute(
                    "INSERT INTO sent (first, last) VALUES (?1, ?2)",
                    [first, last],
                )?;
                run = None;
            }
            (false, None) => {}
        }
    }
    let entries: Vec<LogEntry> = {
        let mut stmt = tx.prepare("SELECT pkid, digest, first_seq, n FROM deliveries")?;
        let rows = stmt.query_map([], |r| {
            let digest: Vec<u8> = r.get(1)?;
            Ok((
                r.get::<_, i64>(0)?,
                digest,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.filter_map(|row| match row {
            Ok((pkid, digest, first, n)) => Some(Ok(LogEntry {
                pkid: u16::try_from(pkid).ok()?,
                digest: digest.try_into().ok()?,
                first: u64::try_from(first).ok()?,
                n: u32::try_from(n).ok()?,
            })),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?
    };
    if !entries.is_empty() {
        append_log(&tx, &entries)?;
    }
    tx.execute_batch(DROP_3)?;
    tx.pragma_update(None, "user_version", 4)?;
    tx.commit()?;
    Ok(())
}

/// Schema 4 to 5: the running totals, counted once from the rows.
pub(super) fn migrate_to_5(conn: &Connection) -> Result<(), BufferError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value)
         SELECT 'unsent_rows', count(*) FROM readings WHERE acked_ms IS NULL
         UNION ALL
         SELECT 'unsent_bytes', coalesce(sum(length(body)), 0) FROM readings
         WHERE acked_ms IS NULL
         UNION ALL
         SELECT 'acked_rows', count(*) FROM readings WHERE acked_ms IS NOT NULL",
        [],
    )?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Brings the file at `conn` from its `user_version` up to
/// [`SCHEMA_VERSION`] (a new file gets the whole schema); a file of a newer
/// agent is refused.
pub(super) fn upgrade(conn: &Connection) -> Result<(), BufferError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0 => {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(MIGRATE_2)?;
            tx.execute_batch(INDEXES_2)?;
            tx.execute_batch(MIGRATE_3)?;
            tx.execute_batch(MIGRATE_4)?;
            tx.execute_batch(DROP_3)?;
            tx.pragma_update(None, "user_version", 4)?;
            tx.commit()?;
            migrate_to_5(conn)?;
        }
        1 => {
            migrate_from_1(conn)?;
            migrate_from_2(conn)?;
            migrate_from_3(conn)?;
            migrate_to_5(conn)?;
        }
        2 => {
            migrate_from_2(conn)?;
            migrate_from_3(conn)?;
            migrate_to_5(conn)?;
        }
        3 => {
            migrate_from_3(conn)?;
            migrate_to_5(conn)?;
        }
        4 => migrate_to_5(conn)?,
        SCHEMA_VERSION => {}
        v => {
            return Err(BufferError::Corrupt(format!(
                "schema version {v} is newer than this agent's {SCHEMA_VERSION}"
            )))
        }
    }
    Ok(())
}
