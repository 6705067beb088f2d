//! Versioned, idempotent schema migrations.
//!
//! `aeris_schema_migrations(version, name, applied_at)` records what ran.
//! Each migration runs in its own transaction together with its record, under
//! a transaction-scoped advisory lock, so two gateways starting at once apply
//! each migration exactly once and a failed migration leaves no trace.

use tokio_postgres::Client;

use crate::SinkError;

/// Every migration, in order. Append only: a released migration never changes.
/// Versions need not be contiguous: each is applied unless recorded.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "readings",
        include_str!("../../migrations/0001_readings.sql"),
    ),
    (
        2,
        "pollutant_columns_and_devices",
        include_str!("../../migrations/0002_pollutant_columns_and_devices.sql"),
    ),
    (
        3,
        "audit_log",
        include_str!("../../migrations/0003_audit_log.sql"),
    ),
    (
        4,
        "seq_collisions",
        include_str!("../../migrations/0004_seq_collisions.sql"),
    ),
    (
        5,
        "dead_letters",
        include_str!("../../migrations/0005_dead_letters.sql"),
    ),
    (
        6,
        "readings_partitioned",
        include_str!("../../migrations/0006_readings_partitioned.sql"),
    ),
    (
        7,
        "device_models_and_drain",
        include_str!("../../migrations/0007_device_models_and_drain.sql"),
    ),
    (
        8,
        "rollouts",
        include_str!("../../migrations/0008_rollouts.sql"),
    ),
    (
        9,
        "hourly_rollups",
        include_str!("../../migrations/0009_hourly_rollups.sql"),
    ),
    (
        10,
        "device_config",
        include_str!("../../migrations/0010_device_config.sql"),
    ),
    (
        11,
        "readings_write_indexes",
        include_str!("../../migrations/0011_readings_write_indexes.sql"),
    ),
    (
        12,
        "correction_and_channel_qc",
        include_str!("../../migrations/0012_correction_and_channel_qc.sql"),
    ),
    (
        13,
        "api_ids",
        include_str!("../../migrations/0013_api_ids.sql"),
    ),
    (
        14,
        "reading_runs",
        include_str!("../../migrations/0014_reading_runs.sql"),
    ),
    (
        15,
        "location_sites",
        include_str!("../../migrations/0015_location_sites.sql"),
    ),
];

/// Arbitrary constant naming the migration lock.
const LOCK_KEY: i64 = 0x0AE1_5001;

const CREATE_TABLE: &str = "
CREATE TABLE IF NOT EXISTS aeris_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

fn failed(e: tokio_postgres::Error) -> SinkError {
    SinkError::Migration(e.to_string())
}

/// The highest applied migration (0 for none).
pub async fn applied_version(client: &Client) -> Result<i32, SinkError> {
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM aeris_schema_migrations",
            &[],
        )
        .await
        .map_err(failed)?;
    Ok(row.get(0))
}

/// Applies what is missing; returns the resulting version.
pub async fn run(client: &mut Client) -> Result<i32, SinkError> {
    run_to(client, i32::MAX).await
}

/// Applies what is missing up to `last` (tests build a database of an
/// older schema with it); returns the resulting version.
pub async fn run_to(client: &mut Client, last: i32) -> Result<i32, SinkError> {
    {
        let tx = client.transaction().await.map_err(failed)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(failed)?;
        tx.batch_execute(CREATE_TABLE).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 <= last) {
        let tx = client.transaction().await.map_err(failed)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(failed)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM aeris_schema_migrations WHERE version = $1",
                &[&version],
            )
            .await
            .map_err(failed)?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| SinkError::Migration(format!("{version} {name}: {e}")))?;
        tx.execute(
            "INSERT INTO aeris_schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version, name, "migration applied");
    }
    applied_version(client).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migrations land from branches in parallel (0008 and 0009 were
    /// written side by side): the list must stay in version order, each
    /// version once, whatever order the merges came in.
    #[test]
    fn migrations_are_listed_once_each_in_version_order() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
