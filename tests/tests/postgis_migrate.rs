//! Migration 0006 converts a `readings` table filled under migration 0005
//! in place: every row as it was, the indexes, the keys, and the API's
//! answers the same; duplicates and collisions against the old rows are
//! recognised after it.

use std::time::Duration;

use aeris_sink::postgis::migrate_to;
use aeris_sink::postgis::partition::{self, Plan};
use aeris_sink::query::ReadingsQuery;
use aeris_sink::{PostgisSink, Sink};
use aeris_tests::postgres::TestDb;
use aeris_wire::{Batch, Reading, Value};

const DAY_MS: i64 = 86_400_000;
/// 2020-09-13T12:26:40Z
const T0: i64 = 1_600_000_000_000;

/// The statement the 0005-era sink merged its staging table with (`ON
/// CONFLICT (device_id, seq)`, the old primary key), one row at a time.
const OLD_INSERT: &str = "
INSERT INTO readings (device_id, seq, sensor_id, ts, geom, flags,
                      pm1, pm25, pm10, no2, o3, co, so2, measurements, model_outputs)
VALUES ($1, $2, $3, 'epoch'::timestamptz + $4::int8 * interval '1 millisecond',
        ST_SetSRID(ST_MakePoint($5, $6), 4326), $7,
        NULL, $8, NULL, NULL, NULL, NULL, NULL, $9, $10)
ON CONFLICT (device_id, seq) DO NOTHING";

/// One old row: (device, seq, ts_ms); the rest follows from the seq.
type Key = (&'static str, i64, i64);

fn old_rows(now: i64) -> Vec<Key> {
    let mut rows = Vec::new();
    // Device a: seqs 1..=50 a minute apart in 2020, 20..=24 never received.
    for seq in (1..=50).filter(|s| !(20..=24).contains(s)) {
        rows.push(("a", seq, T0 + seq * 60_000));
    }
    // Device b: ten from the last hour, one from 1970, one from a clock in
    // the year 9000.
    for seq in 1..=10 {
        rows.push(("b", seq, now - 3_600_000 + seq * 1000));
    }
    rows.push(("b", 11, 221_845_392_000_000));
    rows.push(("b", 12, DAY_MS + 1000));
    rows
}

fn sensor(seq: i64) -> String {
    format!("s{}", seq % 2)
}

fn reading(seq: i64, ts_ms: i64) -> Reading {
    Reading {
        sensor: sensor(seq),
        ts_ms,
        lat: 48.0 + seq as f64 / 100.0,
        lon: 11.5,
        flags: (seq % 3) as u32,
        values: vec![
            Value {
                quantity: "pm25".into(),
                value: seq as f64 / 4.0,
            },
            Value {
                quantity: "rh".into(),
                value: 40.0,
            },
            Value {
                quantity: "model:nowcast@1.0.0".into(),
                value: 2.5,
            },
        ],
    }
}

/// Every row as text, in key order (the backup checksum's view).
async fn all_rows(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            // The columns up to migration 6 (later ones add columns, NULL
            // on these rows; checked apart).
            "SELECT (device_id, seq, sensor_id, ts, geom, flags, measurements, received_at,
                     pm1, pm25, pm10, no2, o3, co, so2, model_outputs)::text
             FROM readings ORDER BY device_id, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn migration_6_converts_a_table_filled_under_migration_5_in_place() {
    let db = TestDb::create().await;
    let mut client = db.client().await;
    assert_eq!(migrate_to(&mut client, 5).await.unwrap(), 5);
    let now = aeris_wire::now_ms();
    let rows = old_rows(now);
    // Each twice: the old key kept them single.
    for _ in 0..2 {
        for &(device, seq, ts) in &rows {
            let r = reading(seq, ts);
            client
                .execute(
                    OLD_INSERT,
                    &[
                        &device,
                        &seq,
                        &r.sensor,
                        &ts,
                        &r.lon,
                        &r.lat,
                        &(r.flags as i32),
                        &r.values[0].value,
                        &serde_json::json!({"rh": 40.0}),
                        &serde_json::json!({"nowcast@1.0.0": 2.5}),
                    ],
                )
                .await
                .unwrap();
        }
    }
    client
        .batch_execute(
            "INSERT INTO devices (device_id, boot_id, status_ts, online, agent_version, last_seq,
                                  queued_readings, queued_bytes)
             VALUES ('a', 1, now(), true, '1.0.0', 50, 0, 0), ('b', 1, now(), true, '1.0.0', 14, 2, 300)",
        )
        .await
        .unwrap();
    let before = all_rows(&client).await;
    assert_eq!(before.len(), rows.len());

    assert_eq!(migrate_to(&mut client, 10).await.unwrap(), 10);
    // Every index of the parent is valid: each partition has its own,
    // the old table's reused. (As of migration 10: 0011 replaces the set,
    // tests/postgis_indexes.rs.)
    let indexes = client
        .query(
            "SELECT c.relname::text, i.indisvalid,
                    (SELECT count(*) FROM pg_inherits h WHERE h.inhparent = c.oid)
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = 'readings'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let indexes: Vec<(String, bool, i64)> = indexes
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expect = |name: &str| (name.to_owned(), true, 2);
    assert_eq!(
        indexes,
        vec![
            expect("readings_geom_gist"),
            expect("readings_pkey"),
            expect("readings_sensor_ts"),
            expect("readings_ts_brin"),
        ]
    );
    let legacy_indexes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'readings_legacy'
             AND indexname IN ('readings_legacy_geom_gist', 'readings_legacy_ts_brin',
                               'readings_legacy_sensor_ts')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(legacy_indexes, 3, "the old indexes are reused, not rebuilt");

    let sink = PostgisSink::connect(&db.url).await.unwrap();
    assert_eq!(all_rows(&client).await, before, "rows changed");
    let corrected: i64 = client
        .query_one(
            "SELECT count(*) FROM readings WHERE pm25_raw IS NOT NULL OR pm25_correction IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        corrected, 0,
        "migration 0012's columns are NULL on old rows"
    );
    let keys: i64 = client
        .query_one(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0)::int8 FROM reading_runs",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, rows.len() as i64);

    // The old table is a partition now, from 1970-01-02 to tomorrow; the
    // year-9000 row waits in the default partition.
    let parts = partition::partitions(&db.url).await.unwrap();
    let tomorrow = (now / DAY_MS + 1) * DAY_MS;
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].name, "readings_legacy");
    assert_eq!(
        (parts[0].from_ms, parts[0].to_ms),
        (Some(DAY_MS), Some(tomorrow))
    );
    assert_eq!(parts[1].name, "readings_default");
    let in_default: Vec<i64> = client
        .query("SELECT seq FROM readings_default", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(in_default, vec![11]);

    // The API answers from the old rows: a sensor's readings over a time
    // range, the devices' counts and gaps, the re-send points.
    let got = sink
        .readings(&ReadingsQuery {
            device: "a".into(),
            sensor: "s0".into(),
            from_ms: T0,
            to_ms: T0 + 31 * 60_000,
            limit: 1000,
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![2, 4, 6, 8, 10, 12, 14, 16, 18, 26, 28, 30]);
    for r in &got {
        let want = reading(r.seq as i64, T0 + r.seq as i64 * 60_000);
        assert_eq!(
            (r.ts_ms, r.lat, r.lon, r.flags),
            (want.ts_ms, want.lat, want.lon, want.flags)
        );
        assert_eq!(r.values.get("pm25"), Some(&want.values[0].value));
        assert_eq!(r.values.get("rh"), Some(&40.0));
        assert_eq!(r.model_outputs.get("nowcast@1.0.0"), Some(&2.5));
    }
    let devices = sink.devices().await.unwrap();
    let summary: Vec<(String, u64, Vec<[u64; 2]>, u64)> = devices
        .iter()
        .map(|d| {
            (
                d.device.clone(),
                d.received,
                d.gaps.clone(),
                d.not_yet_received,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a".to_owned(), 45, vec![[20, 24]], 0),
            ("b".to_owned(), 12, vec![], 2),
        ]
    );
    // Migration 0007: rows stored before it read as no models and no drain
    // estimate, with the boot id they had.
    for d in &devices {
        assert!(d.models.is_empty(), "{d:?}");
        assert_eq!((d.boot_id, d.drain_eta_s), (1, None), "{d:?}");
    }
    let points: Vec<(String, u64, u64)> = sink
        .resend_points()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.device, p.from_seq, p.stored))
        .collect();
    assert_eq!(
        points,
        vec![("a".to_owned(), 20, 45), ("b".to_owned(), 13, 12)]
    );

    // The old rows keep their key: sent again they are duplicates, under
    // another timestamp collisions; new seqs are stored.
    let old = |first: i64, n: i64| Batch {
        device: "a".into(),
        first_seq: first as u64,
        readings: (first..first + n)
            .map(|s| reading(s, T0 + s * 60_000))
            .collect(),
    };
    let out = sink.write(&[old(1, 19)]).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (0, 19), "{out:?}");
    let mut moved = old(30, 1);
    moved.readings[0].ts_ms += 1;
    let out = sink.write(&[moved, old(20, 5)]).await.unwrap();
    assert_eq!(out.collisions, vec![(0, 30)]);
    assert_eq!(out.inserted, 5);

    // The legacy partition expires whole, once its last day has.
    let plan = |now_ms| Plan {
        now_ms,
        ahead_days: 1,
        keep: Some(Duration::from_secs(400 * 86_400)),
        max_backfill_days: 64,
        lock_timeout: Duration::from_secs(5),
    };
    let report = partition::maintain(&db.url, &plan(now)).await.unwrap();
    assert!(report.dropped.is_empty(), "{report:?}");
    assert_eq!(
        report.created.len(),
        1,
        "today is the legacy partition's: {report:?}"
    );
    assert_eq!(report.default_rows, 1);
    let report = partition::maintain(&db.url, &plan(tomorrow + 401 * DAY_MS))
        .await
        .unwrap();
    assert!(
        report.dropped.contains(&"readings_legacy".to_owned()),
        "{report:?}"
    );
}
