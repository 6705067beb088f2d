//! What the tests of `readings`' partitions share: readings at a given
//! time, a partition run's plan, and where the rows are.

use std::time::Duration;

use aeris_sink::postgis::partition::Plan;
use aeris_wire::{Batch, Reading, Value};

use crate::postgres::TestDb;

pub const DAY_MS: i64 = 86_400_000;
/// 2020-09-13T12:26:40Z
pub const T0: i64 = 1_600_000_000_000;

/// Readings `first_seq..first_seq + n` of `device`, one second apart from
/// `t0_ms` for seq 1; the same arguments give the same readings.
pub fn batch_at(device: &str, first_seq: u64, n: usize, t0_ms: i64) -> Batch {
    Batch {
        device: device.into(),
        first_seq,
        readings: (first_seq - 1..first_seq - 1 + n as u64)
            .map(|i| Reading {
                sensor: format!("s{}", i % 3),
                ts_ms: t0_ms + i as i64 * 1000,
                lat: 52.5 + i as f64 / 100.0,
                lon: 13.4,
                flags: 0,
                values: vec![Value {
                    quantity: "pm25".into(),
                    value: 3.5 + i as f64,
                }],
            })
            .collect(),
    }
}

/// A partition run at `now_ms` keeping readings `keep_days` (`None`:
/// forever), two days ahead.
pub fn plan(now_ms: i64, keep_days: Option<u64>) -> Plan {
    Plan {
        now_ms,
        ahead_days: 2,
        keep: keep_days.map(|d| Duration::from_secs(d * 86_400)),
        max_backfill_days: 64,
        lock_timeout: Duration::from_secs(5),
    }
}

/// Rows per partition, by partition name.
pub async fn rows_by_partition(db: &TestDb, device: &str) -> Vec<(String, i64)> {
    db.client()
        .await
        .query(
            "SELECT tableoid::regclass::text, count(*) FROM readings WHERE device_id = $1
             GROUP BY 1 ORDER BY 1",
            &[&device],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}
