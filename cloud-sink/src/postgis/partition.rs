//! Partitions of `readings` (migration 0006): one per UTC day, created
//! ahead of time, filled from the default partition, and dropped whole by
//! retention.
//!
//! Invariants: a partition is only ever dropped whole (`DROP TABLE`, no
//! `DELETE`), and only when all of its range is older than the retention
//! limit; the default partition is never dropped; every reading's key
//! stays in `reading_runs`, so dropping a partition never lets a reading be
//! stored again. Each step is its own transaction under an advisory lock,
//! so gateways running it at the same time take turns, and with a
//! `lock_timeout`, so a step that waits for a long query gives up (and the
//! next run tries again) instead of queueing every writer behind it.
//!
//! The DDL itself is in the migration's functions
//! (`aeris_readings_add_day`, `aeris_readings_drop_before`); this module
//! only decides which days and passes them as parameters.

use std::time::Duration;

use tokio_postgres::Client;

use crate::SinkError;

/// Arbitrary constant naming the maintenance lock (not the migrations').
const LOCK_KEY: i64 = 0x0AE1_5002;
const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
const DAY_MS: i64 = 86_400_000;

/// Creates the day `$1` (days since 1970-01-01) unless covered; returns
/// whether it did and the partition's name.
const ADD_DAY: &str = "
SELECT aeris_readings_add_day(d), 'readings_p' || to_char(d, 'YYYYMMDD')
FROM (SELECT DATE '1970-01-01' + $1::int4 AS d) x";

/// Days (since 1970-01-01) with rows in the default partition, before `$1`
/// (Unix ms), oldest first, at most `$2`.
const DEFAULT_DAYS: &str = "
SELECT DISTINCT ((ts AT TIME ZONE 'UTC')::date - DATE '1970-01-01')::int4 AS day
FROM readings_default
WHERE ts < 'epoch'::timestamptz + $1::int8 * interval '1 millisecond'
ORDER BY day
LIMIT $2";

const DROP_BEFORE: &str = "
SELECT aeris_readings_drop_before('epoch'::timestamptz + $1::int8 * interval '1 millisecond')";

const DEFAULT_ROWS: &str = "SELECT count(*) FROM readings_default";

const LIST: &str = "
SELECT name, (extract(epoch FROM from_ts) * 1000)::int8, (extract(epoch FROM to_ts) * 1000)::int8
FROM aeris_readings_partitions
ORDER BY from_ts NULLS LAST, name";

/// What one maintenance run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The time it runs at, Unix ms (the clock, or a test's).
    pub now_ms: i64,
    /// Partitions exist from today to this many days ahead.
    pub ahead_days: u32,
    /// Readings older than this go with their partition; `None`: kept
    /// forever.
    pub keep: Option<Duration>,
    /// Days moved out of the default partition in one run, at most (each
    /// is a short exclusive lock; the rest wait for the next run).
    pub max_backfill_days: u32,
    /// Longest wait for a lock in any step.
    pub lock_timeout: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Partitions created, by name (`readings_pYYYYMMDD`).
    pub created: Vec<String>,
    /// Partitions dropped by retention, by name.
    pub dropped: Vec<String>,
    /// Rows left in the default partition: days beyond the horizon (clocks
    /// far ahead), or more days than one run moves.
    pub default_rows: i64,
    /// Steps that failed, each with the database's error. A failed step
    /// does not stop the others: a day that cannot be created does not
    /// hold up retention, nor the other way round.
    pub errors: Vec<String>,
}

/// A partition of `readings` and its range, Unix ms (`None` for the
/// default partition).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionInfo {
    pub name: String,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

fn failed(e: tokio_postgres::Error) -> SinkError {
    match e.as_db_error() {
        Some(db) => {
            SinkError::Rejected(format!("{} (SQLSTATE {})", db.message(), db.code().code()))
        }
        None => SinkError::Unavailable(e.to_string()),
    }
}

/// Days since 1970-01-01 of a Unix ms time (UTC), rounded down.
fn day_of(ms: i64) -> i32 {
    i32::try_from(ms.div_euclid(DAY_MS)).unwrap_or(if ms < 0 { i32::MIN } else { i32::MAX })
}

/// Creates partitions ahead, moves rows out of the default partition into
/// partitions of their own, and applies retention; see [`Plan`]. `Err`
/// only when the database cannot be reached; a step that fails is in
/// [`Report::errors`] and the run goes on with the next.
pub async fn maintain(url: &str, plan: &Plan) -> Result<Report, SinkError> {
    let mut client = super::connect(url).await?;
    let timeout = format!("{}ms", plan.lock_timeout.as_millis().max(1));
    client
        .execute("SELECT set_config('lock_timeout', $1, false)", &[&timeout])
        .await
        .map_err(failed)?;
    let mut report = Report::default();
    let today = day_of(plan.now_ms);
    let last = today.saturating_add(i32::try_from(plan.ahead_days).unwrap_or(i32::MAX));
    for day in today..=last {
        add_day(&mut client, day, &mut report).await;
    }
    // Rows of days without a partition, up to the horizon; later ones
    // (clocks far ahead) wait in the default partition for their day.
    let horizon_ms = (i64::from(last) + 1).saturating_mul(DAY_MS);
    let limit = i64::from(plan.max_backfill_days);
    match client.query(DEFAULT_DAYS, &[&horizon_ms, &limit]).await {
        Ok(rows) => {
            for day in rows.iter().map(|r| r.get::<_, i32>(0)) {
                add_day(&mut client, day, &mut report).await;
            }
        }
        Err(e) => report
            .errors
            .push(format!("default partition: {}", failed(e))),
    }
    if let Some(keep) = plan.keep {
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let cutoff_ms = plan.now_ms.saturating_sub(keep_ms);
        match drop_before(&mut client, cutoff_ms).await {
            Ok(names) => report.dropped = names,
            Err(e) => report.errors.push(format!("retention: {e}")),
        }
    }
    match client.query_one(DEFAULT_ROWS, &[]).await {
        Ok(row) => report.default_rows = row.get(0),
        Err(e) => report
            .errors
            .push(format!("default partition: {}", failed(e))),
    }
    Ok(report)
}

/// Creates the partition of `day` (days since 1970-01-01) if it is
/// missing; records what happened in `report`.
async fn add_day(client: &mut Client, day: i32, report: &mut Report) {
    let result = async {
        let tx = client.transaction().await?;
        tx.execute(LOCK, &[&LOCK_KEY]).await?;
        let row = tx.query_one(ADD_DAY, &[&day]).await?;
        tx.commit().await?;
        Ok::<_, tokio_postgres::Error>(row)
    }
    .await;
    match result {
        Ok(row) if row.get::<_, bool>(0) => report.created.push(row.get(1)),
        Ok(_) => {}
        Err(e) => report.errors.push(format!(
            "creating day {day} (days since 1970-01-01): {}",
            failed(e)
        )),
    }
}

/// Drops the partitions that end at or before `cutoff_ms`; their names.
async fn drop_before(client: &mut Client, cutoff_ms: i64) -> Result<Vec<String>, SinkError> {
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute(LOCK, &[&LOCK_KEY]).await.map_err(failed)?;
    let rows = tx.query(DROP_BEFORE, &[&cutoff_ms]).await.map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The partitions of `readings`, oldest first, the default last.
pub async fn partitions(url: &str) -> Result<Vec<PartitionInfo>, SinkError> {
    let client = super::connect(url).await?;
    let rows = client.query(LIST, &[]).await.map_err(failed)?;
    Ok(rows
        .iter()
        .map(|r| PartitionInfo {
            name: r.get(0),
            from_ms: r.get(1),
            to_ms: r.get(2),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::day_of;

    #[test]
    fn days_are_utc_days_rounded_down() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(86_399_999), 0);
        assert_eq!(day_of(86_400_000), 1);
        assert_eq!(day_of(-1), -1);
        // 2025-11-29T00:00:00Z
        assert_eq!(day_of(1_764_374_400_000), 20_421);
    }
}
