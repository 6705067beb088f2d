//! Migration 0011 (`readings`' index set for the write rate) converts a
//! table filled under migration 10 in place, partitions and 0006's legacy
//! partition included: every row as it was, the API's reads answer the
//! same, and a `(device_id, seq)` stays stored once when delivered again
//! after the change, across partitions, and after its partition was
//! dropped.

use aeris_sink::postgis::{migrate_to, partition, rollup, READINGS_SQL};
use aeris_sink::{PostgisSink, Sink};
use aeris_tests::partitions::{batch_at, count, plan, rows_by_partition, DAY_MS, T0};
use aeris_tests::postgres::TestDb;
use aeris_wire::Batch;
use tokio_postgres::Client;

/// How the sink of migrations 6 to 10 stored a reading: its key, then
/// the row (the staging and `ON CONFLICT` around it do not matter here).
const OLD_KEY: &str = "
INSERT INTO reading_keys (device_id, seq, ts)
VALUES ($1, $2, 'epoch'::timestamptz + $3::int8 * interval '1 millisecond')";
const OLD_ROW: &str = "
INSERT INTO readings (device_id, seq, sensor_id, ts, geom, flags, pm25, measurements)
VALUES ($1, $2, $3, 'epoch'::timestamptz + $4::int8 * interval '1 millisecond',
        ST_SetSRID(ST_MakePoint($5, $6), 4326), 0, $7, '{}')";
/// Before 0006 the table had its own key; rows went in directly.
const OLD_ROW_0005: &str = "
INSERT INTO readings (device_id, seq, sensor_id, ts, geom, flags, pm25, measurements)
VALUES ($1, $2, $3, 'epoch'::timestamptz + $4::int8 * interval '1 millisecond',
        ST_SetSRID(ST_MakePoint($5, $6), 4326), 0, $7, '{}')
ON CONFLICT (device_id, seq) DO NOTHING";

async fn store_old(client: &Client, b: &Batch, with_keys: bool) {
    for (seq, r) in b.with_seqs() {
        let seq = seq as i64;
        let pm25 = r.values[0].value;
        let row: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&b.device, &seq, &r.sensor, &r.ts_ms, &r.lon, &r.lat, &pm25];
        if with_keys {
            client
                .execute(OLD_KEY, &[&b.device, &seq, &r.ts_ms])
                .await
                .unwrap();
            client.execute(OLD_ROW, &row).await.unwrap();
        } else {
            client.execute(OLD_ROW_0005, &row).await.unwrap();
        }
    }
}

/// Every row as text, in key order.
async fn all_rows(client: &Client) -> Vec<String> {
    client
        .query(
            // Every column as of migration 10 (0012 adds the two raw-value
            // columns, NULL on old rows; postgis_migrate.rs checks them).
            "SELECT (to_jsonb(t) - 'pm25_raw' - 'pm25_correction')::text
             FROM readings t ORDER BY device_id, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `/api/readings`' statement under migration 10, before 0012 added the
/// raw value's columns (`READINGS_SQL` reads them).
const READINGS_SQL_AT_10: &str = "
SELECT seq, (extract(epoch FROM ts) * 1000)::int8, ST_Y(geom), ST_X(geom), flags,
       jsonb_strip_nulls(jsonb_build_object('pm1', pm1, 'pm25', pm25, 'pm10', pm10, 'no2', no2,
                                            'o3', o3, 'co', co, 'so2', so2)) || measurements,
       model_outputs
FROM readings
WHERE device_id = $1 AND sensor_id = $2
  AND ts >= 'epoch'::timestamptz + $3::int8 * interval '1 millisecond'
  AND ts <  'epoch'::timestamptz + $4::int8 * interval '1 millisecond'
ORDER BY ts, seq
LIMIT $5";

/// What `/api/readings` and the rollups' recompute read for a few
/// (device, sensor, range)s: names repeat across devices, ranges cross
/// partitions.
async fn answers(client: &Client, day0: i64, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (device, sensor, from, to) in [
        ("a", "s0", day0, day0 + 3 * DAY_MS),
        ("a", "s1", day0 + DAY_MS / 2, day0 + 2 * DAY_MS),
        ("a", "s2", day0 + DAY_MS, day0 + DAY_MS + 3_600_000),
        ("b", "s0", day0, day0 + 3 * DAY_MS),
        ("old", "s1", T0, T0 + 3_600_000),
        ("c", "s0", day0, day0 + 60 * DAY_MS),
    ] {
        let rows = client
            .query(sql, &[&device, &sensor, &from, &to, &1000i64])
            .await
            .unwrap();
        out.push(format!("{device} {sensor} {from}: {} rows", rows.len()));
        for r in rows {
            let (seq, ts, lat, lon): (i64, i64, f64, f64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let v: serde_json::Value = r.get(5);
            out.push(format!("{seq} {ts} {lat} {lon} {v}"));
        }
        let raw = client
            .query(rollup::RAW, &[&device, &sensor, &from, &to])
            .await
            .unwrap();
        let mut raw: Vec<(i64, Option<f64>)> = raw.iter().map(|r| (r.get(0), r.get(2))).collect();
        raw.sort_by_key(|r| r.0);
        out.push(format!("raw {raw:?}"));
    }
    out
}

/// Indexes of `readings` and of each partition, by name.
async fn indexes(client: &Client) -> (Vec<String>, Vec<(String, i64)>) {
    let parent = client
        .query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = 'readings'::regclass AND i.indisvalid ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let parts = client
        .query(
            "SELECT p.relid::text, (SELECT count(*) FROM pg_index i WHERE i.indrelid = p.relid)
             FROM pg_partition_tree('readings') p WHERE p.isleaf ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    (parent, parts)
}

#[tokio::test]
async fn migration_11_converts_a_table_filled_under_migration_10_and_keys_stay_single() {
    let db = TestDb::create().await;
    let mut client = db.client().await;
    // Under migration 5: device `old` in 2020, to become readings_legacy.
    assert_eq!(migrate_to(&mut client, 5).await.unwrap(), 5);
    let old = batch_at("old", 1, 30, T0);
    store_old(&client, &old, false).await;
    assert_eq!(migrate_to(&mut client, 10).await.unwrap(), 10);

    // Under migration 10: three day partitions from the day after
    // tomorrow (the legacy partition covers up to tomorrow); device a
    // every 20 minutes across all three, device b (the same sensor names)
    // every hour, device c in the default partition (a clock far ahead).
    let now = aeris_wire::now_ms();
    let day0 = (now / DAY_MS + 2) * DAY_MS;
    client
        .execute(
            "SELECT aeris_readings_add_day(DATE '1970-01-01' + d)
             FROM generate_series($1::int4, $1::int4 + 2) d",
            &[&((day0 / DAY_MS) as i32)],
        )
        .await
        .unwrap();
    let spaced = |device: &str, n: usize, step_ms: i64, t0: i64| {
        let mut b = batch_at(device, 1, n, t0);
        for (i, r) in b.readings.iter_mut().enumerate() {
            r.ts_ms = t0 + i as i64 * step_ms;
        }
        b
    };
    let a = spaced("a", 200, 20 * 60_000, day0 + 60_000);
    let b = spaced("b", 60, 3_600_000, day0 + 30 * 60_000);
    let c = spaced("c", 5, 1000, day0 + 40 * DAY_MS);
    for batch in [&a, &b, &c] {
        store_old(&client, batch, true).await;
    }
    let before_rows = all_rows(&client).await;
    assert_eq!(before_rows.len(), 30 + 200 + 60 + 5);
    let before = answers(&client, day0, READINGS_SQL_AT_10).await;
    let spread: Vec<String> = rows_by_partition(&db, "a")
        .await
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(
        spread.len(),
        3,
        "device a spans three partitions: {spread:?}"
    );

    let sink = PostgisSink::connect(&db.url).await.unwrap();
    assert!(aeris_sink::postgis::applied_version(&client).await.unwrap() >= 11);
    assert_eq!(all_rows(&client).await, before_rows, "rows changed");
    assert_eq!(
        answers(&client, day0, READINGS_SQL).await,
        before,
        "the API answers differently"
    );
    let (parent, parts) = indexes(&client).await;
    assert_eq!(parent, vec!["readings_device_ts", "readings_ts_brin"]);
    // readings_legacy, three days, the default: each with exactly the two.
    assert_eq!(parts.len(), 5, "{parts:?}");
    assert!(parts.iter().all(|p| p.1 == 2), "{parts:?}");

    // Every old reading sent again after the change: duplicates, across
    // the partitions and the legacy one; nothing stored twice.
    for batch in [&a, &b, &c, &old] {
        let out = sink.write(std::slice::from_ref(batch)).await.unwrap();
        assert_eq!(
            (out.inserted, out.duplicates, out.collisions.len()),
            (0, batch.readings.len() as u64, 0),
            "{}: {out:?}",
            batch.device
        );
    }
    // A stored seq with another timestamp (another partition), with
    // another sensor, with another value: collisions, found through the
    // new index; the new seqs in the same write are stored once, also the
    // one sent twice in it.
    let mut moved = batch_at("a", 10, 1, 0);
    moved.readings[0] = a.readings[9].clone();
    moved.readings[0].ts_ms += DAY_MS;
    let mut renamed = batch_at("a", 50, 1, 0);
    renamed.readings[0] = a.readings[49].clone();
    renamed.readings[0].sensor = "s9".into();
    let mut changed = batch_at("b", 7, 1, 0);
    changed.readings[0] = b.readings[6].clone();
    changed.readings[0].values[0].value += 1.0;
    let fresh = spaced("a", 3, 60_000, day0 + 2 * DAY_MS + 1000);
    let fresh = Batch {
        first_seq: 201,
        ..fresh
    };
    let out = sink
        .write(&[moved, renamed, changed, fresh.clone(), fresh.clone()])
        .await
        .unwrap();
    assert_eq!(out.collisions, vec![(0, 10), (1, 50), (2, 7)], "{out:?}");
    assert_eq!((out.inserted, out.duplicates), (3, 3), "{out:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await, 298);

    // Retention drops the first day and the legacy partition; their keys
    // stay: sent again, still duplicates, not stored again.
    let report = partition::maintain(&db.url, &plan(day0 + DAY_MS + 400 * DAY_MS, Some(400)))
        .await
        .unwrap();
    assert!(
        report.dropped.contains(&"readings_legacy".to_owned()),
        "{report:?}"
    );
    let first_day = format!(
        "readings_p{}",
        humantime::format_rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(day0 as u64)
        )
        .to_string()[..10]
            .replace('-', "")
    );
    assert!(report.dropped.contains(&first_day), "{report:?}");
    let left = count(&db, "SELECT count(*) FROM readings").await;
    assert!(left < 298, "nothing dropped: {left}");
    for batch in [&a, &old] {
        let out = sink.write(std::slice::from_ref(batch)).await.unwrap();
        assert_eq!(
            (out.inserted, out.duplicates),
            (0, batch.readings.len() as u64),
            "{}: {out:?}",
            batch.device
        );
    }
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await, left);
}
