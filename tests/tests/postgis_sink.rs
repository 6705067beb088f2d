//! The PostGIS sink against a fresh database: migrations, duplicates,
//! geometry.

use aeris_sink::postgis::{applied_version, MIGRATIONS};
use aeris_sink::{PostgisSink, Sink, WriteOutcome};
use aeris_tests::postgres::TestDb;
use aeris_wire::{Batch, Reading, Status, Value};

/// Readings `first_seq..first_seq + n`; reading `i` of the device (seq
/// `i + 1`) is always the same, so a resend is identical.
fn batch(device: &str, first_seq: u64, n: usize) -> Batch {
    Batch {
        device: device.into(),
        first_seq,
        readings: (first_seq as usize - 1..first_seq as usize - 1 + n)
            .map(|i| Reading {
                sensor: format!("s{i}"),
                ts_ms: 1_600_000_000_000 + i as i64 * 1000,
                lat: -33.5 + i as f64 / 8.0,
                lon: 151.25 - i as f64 / 16.0,
                flags: 0,
                values: vec![
                    Value {
                        quantity: "pm25".into(),
                        value: 3.5 + i as f64,
                    },
                    Value {
                        quantity: "rh".into(),
                        value: 50.0,
                    },
                ],
            })
            .collect(),
    }
}

#[tokio::test]
async fn migrations_apply_once_even_when_gateways_start_together() {
    let db = TestDb::create().await;
    // Three gateways starting at the same moment.
    let (a, b, c) = tokio::join!(
        PostgisSink::connect(&db.url),
        PostgisSink::connect(&db.url),
        PostgisSink::connect(&db.url)
    );
    for s in [a, b, c] {
        s.expect("connect and migrate");
    }
    let client = db.client().await;
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    assert_eq!(applied_version(&client).await.unwrap(), latest);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM aeris_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, MIGRATIONS.len() as i64);
    // A restart applies nothing new.
    PostgisSink::connect(&db.url).await.unwrap();
    assert_eq!(applied_version(&client).await.unwrap(), latest);
}

#[tokio::test]
async fn duplicates_are_ignored_and_geometry_matches() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let out = sink
        .write(&[batch("d1", 1, 10), batch("d2", 1, 3)])
        .await
        .unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            inserted: 13,
            ..Default::default()
        }
    );
    // The same range again, overlapping a new one: only 11..=15 are new.
    let out = sink.write(&[batch("d1", 6, 10)]).await.unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            inserted: 5,
            duplicates: 5,
            ..Default::default()
        }
    );

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT seq, ST_X(geom), ST_Y(geom), pm25, sensor_id
             FROM readings WHERE device_id = 'd1' ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 15);
    let expected = batch("d1", 1, 10);
    for (row, r) in rows.iter().zip(&expected.readings) {
        assert_eq!(row.get::<_, f64>(1), r.lon);
        assert_eq!(row.get::<_, f64>(2), r.lat);
        assert_eq!(row.get::<_, f64>(3), r.values[0].value);
        assert_eq!(row.get::<_, String>(4), r.sensor);
    }
    // A spatial query uses the geometry: readings within 20 km of s0's spot.
    let near: i64 = client
        .query_one(
            "SELECT count(*) FROM readings WHERE device_id = 'd1' AND
             ST_DWithin(geom::geography, ST_SetSRID(ST_MakePoint(151.25, -33.5), 4326)::geography, 20000)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // s0 (at the point) and s1 (~15 km away); s2 is ~28 km away, and the
    // resend added s5..s9, further still.
    assert_eq!(near, 2);
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let port = aeris_tests::free_port();
    let url = format!("postgres://nobody@127.0.0.1:{port}/none");
    let err = PostgisSink::connect(&url).await.err().expect("must fail");
    assert!(err.to_string().contains("unavailable"), "{err}");
}

#[tokio::test]
async fn copy_path_puts_pollutants_in_columns_and_keeps_model_versions_and_flags() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let mut b = batch("d1", 1, 2);
    b.readings[0].flags = 5;
    b.readings[0].values.extend([
        Value {
            quantity: "no2".into(),
            value: 21.0,
        },
        Value {
            quantity: "model:pm25_cal@1.2.0".into(),
            value: 3.25,
        },
        Value {
            quantity: "voc_index".into(),
            value: 120.0,
        },
    ]);
    sink.write(&[b]).await.unwrap();
    let row = db
        .client()
        .await
        .query_one(
            "SELECT pm25, no2, pm10, measurements, model_outputs, flags,
                    round(extract(epoch FROM ts) * 1000)::int8
             FROM readings WHERE device_id = 'd1' AND seq = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<f64>>(0), Some(3.5));
    assert_eq!(row.get::<_, Option<f64>>(1), Some(21.0));
    assert_eq!(row.get::<_, Option<f64>>(2), None);
    assert_eq!(
        row.get::<_, serde_json::Value>(3),
        serde_json::json!({"rh": 50.0, "voc_index": 120.0})
    );
    assert_eq!(
        row.get::<_, serde_json::Value>(4),
        serde_json::json!({"pm25_cal@1.2.0": 3.25})
    );
    assert_eq!(row.get::<_, i32>(5), 5);
    assert_eq!(row.get::<_, i64>(6), 1_600_000_000_000);
}

#[tokio::test]
async fn migration_2_splits_rows_written_under_migration_1() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client.batch_execute(MIGRATIONS[0].2).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE aeris_schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO aeris_schema_migrations (version, name) VALUES (1, 'readings');
             INSERT INTO readings (device_id, seq, sensor_id, ts, geom, measurements)
             VALUES ('old', 1, 's', now(), ST_SetSRID(ST_MakePoint(1, 2), 4326),
                     '{\"pm10\": 7, \"rh\": 40, \"model:m@2\": 1.5}')",
        )
        .await
        .unwrap();
    PostgisSink::connect(&db.url).await.unwrap();
    let row = client
        .query_one(
            "SELECT pm10, measurements, model_outputs FROM readings WHERE device_id = 'old'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<f64>>(0), Some(7.0));
    assert_eq!(
        row.get::<_, serde_json::Value>(1),
        serde_json::json!({"rh": 40})
    );
    assert_eq!(
        row.get::<_, serde_json::Value>(2),
        serde_json::json!({"m@2": 1.5})
    );
}

/// A `(device_id, seq)` stored with another reading is a collision, not a
/// duplicate: not stored, reported per batch with the device's highest
/// seq, and counted on the device's row (a device without a status too).
#[tokio::test]
async fn a_seq_holding_another_reading_is_a_collision_not_a_duplicate() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    sink.write(&[batch("d1", 1, 10)]).await.unwrap();
    // Group: d2 new (no conflict); d1 5..=14 where 5..=7 are resends, 8..=10
    // are other readings under stored seqs, 11..=14 new.
    let mut mixed = batch("d1", 5, 10);
    for r in &mut mixed.readings[3..6] {
        r.ts_ms += 1;
    }
    let out = sink.write(&[batch("d2", 1, 3), mixed]).await.unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            inserted: 7,
            duplicates: 3,
            collisions: vec![(1, 8), (1, 9), (1, 10)],
            max_seq: [("d1".to_owned(), 14)].into(),
        }
    );
    let client = db.client().await;
    let moved: i64 = client
        .query_one(
            "SELECT count(*) FROM readings WHERE device_id = 'd1'
             AND ts <> '2020-09-13 12:26:40+00'::timestamptz + (seq - 1) * interval '1 s'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(moved, 0, "a colliding reading replaced the stored one");
    let report = sink.devices().await.unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(
        (report[0].device.as_str(), report[0].seq_collisions),
        ("d1", 3)
    );
    assert!(report[0].last_seq_collision_ms.is_some());
    // Its first status replaces the empty one and keeps the count.
    sink.record_status(&Status {
        device: "d1".into(),
        boot_id: 1,
        ts_ms: 1_700_000_000_000,
        state: aeris_wire::DeviceState::Online,
        agent_version: "1.2.3".into(),
        last_seq: 14,
        queued_readings: 0,
        queued_bytes: 0,
        oldest_unsent_ms: None,
        losses: vec![],
        models: vec![],
        drain_eta_s: None,
    })
    .await
    .unwrap();
    let report = sink.devices().await.unwrap();
    assert_eq!(report[0].agent_version, "1.2.3");
    assert_eq!(report[0].seq_collisions, 3);
    // A group without any conflict reports none.
    let out = sink.write(&[batch("d1", 15, 2)]).await.unwrap();
    assert_eq!(out.collisions, vec![]);
}

/// What PostgreSQL refuses in the data (a value out of its range, a NUL in
/// text, a constraint) fails the write as `Data`, which the writer sets
/// aside instead of retrying; the dead letter keeps the batch's bytes.
#[tokio::test]
async fn refused_values_are_data_errors_and_dead_letters_keep_the_batch() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let mut far = batch("d1", 1, 2);
    far.readings[1].ts_ms = 10_i64.pow(16);
    let mut nul = batch("d1", 1, 2);
    nul.readings[0].sensor = "s\0".into();
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE readings ADD CONSTRAINT no_poison CHECK (sensor_id <> 'poison')",
        )
        .await
        .unwrap();
    let mut poison = batch("d1", 1, 2);
    poison.readings[1].sensor = "poison".into();
    for (what, bad, sqlstate) in [
        ("ts", far, "22008"),
        ("nul", nul, "22021"),
        ("check", poison, "23514"),
    ] {
        let err = sink.write(&[batch("d2", 1, 3), bad]).await.unwrap_err();
        assert!(
            matches!(err, aeris_sink::SinkError::Data(_)),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains(sqlstate), "{what}: {err}");
    }
    // The connection is still good, and the failed groups stored nothing.
    let out = sink.write(&[batch("d2", 1, 3)]).await.unwrap();
    assert_eq!(out.inserted, 3);

    let letter = aeris_sink::DeadLetter {
        device: "d1".into(),
        first_seq: 1,
        last_seq: 2,
        reason: "value refused (SQLSTATE 23514)".into(),
        payload: vec![1, 0, 255, 7],
    };
    sink.dead_letter(&letter).await.unwrap();
    let row = db
        .client()
        .await
        .query_one(
            "SELECT device_id, first_seq, last_seq, reason, payload, now() - at < interval '1 min'
             FROM dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "d1");
    assert_eq!((row.get::<_, i64>(1), row.get::<_, i64>(2)), (1, 2));
    assert_eq!(row.get::<_, String>(3), letter.reason);
    assert_eq!(row.get::<_, Vec<u8>>(4), letter.payload);
    assert!(row.get::<_, bool>(5));
}

/// Issue 17 (5): the device row carries the whole status: boot id (a u64,
/// bit for bit), models with their versions, the drain estimate, losses by
/// reason and the data debt; `/api/devices` reads it back with the age of
/// the oldest unsent reading. A later status without models clears them.
#[tokio::test]
async fn a_status_is_stored_whole_and_read_back_with_its_debt_age() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let now = aeris_wire::now_ms();
    let mut status = Status {
        device: "d1".into(),
        boot_id: u64::MAX - 41,
        ts_ms: now,
        state: aeris_wire::DeviceState::Online,
        agent_version: "1.4.0".into(),
        last_seq: 900,
        queued_readings: 120,
        queued_bytes: 7_200,
        oldest_unsent_ms: Some(now - 600_000),
        losses: vec![
            aeris_wire::Loss {
                reason: "dropped".into(),
                count: 5,
            },
            aeris_wire::Loss {
                reason: "downsampled".into(),
                count: 40,
            },
        ],
        models: vec![
            aeris_wire::ModelVersion {
                name: "pm-corrector".into(),
                version: "1.2.0".into(),
            },
            aeris_wire::ModelVersion {
                name: "no2-drift".into(),
                version: "0.3.1".into(),
            },
        ],
        drain_eta_s: Some(95),
    };
    sink.record_status(&status).await.unwrap();
    let d = &sink.devices().await.unwrap()[0];
    assert_eq!(d.boot_id, u64::MAX - 41);
    assert_eq!(
        d.models,
        [
            ("no2-drift".to_owned(), "0.3.1".to_owned()),
            ("pm-corrector".to_owned(), "1.2.0".to_owned()),
        ]
        .into()
    );
    assert_eq!(d.drain_eta_s, Some(95));
    assert_eq!(
        d.losses,
        [("downsampled".to_owned(), 40), ("dropped".to_owned(), 5)].into()
    );
    assert_eq!((d.queued_readings, d.queued_bytes), (120, 7_200));
    assert_eq!(d.oldest_unsent_ms, Some(now - 600_000));
    assert!(
        d.oldest_unsent_age_s
            .is_some_and(|a| (600..700).contains(&a)),
        "{d:?}"
    );
    status.ts_ms += 1000;
    status.models.clear();
    status.drain_eta_s = None;
    status.queued_readings = 0;
    status.oldest_unsent_ms = None;
    sink.record_status(&status).await.unwrap();
    let d = &sink.devices().await.unwrap()[0];
    assert!(d.models.is_empty());
    assert_eq!((d.drain_eta_s, d.oldest_unsent_age_s), (None, None));
}

/// A stored rollout of three devices in two stages, as the gateway's
/// first save writes it.
fn stored_rollout() -> aeris_sink::rollouts::StoredRollout {
    use aeris_sink::rollouts::{RolloutState, StoredOutcome, StoredRollout};
    let device = |d: &str, stage| StoredOutcome {
        device: d.into(),
        stage,
        outcome: "pending".into(),
        detail: None,
        sent_ms: None,
        updated_ms: 1_000,
    };
    StoredRollout {
        id: 42,
        version: "0.2.0".into(),
        update: serde_json::json!({"format": 1, "url": "http://u/", "manifest": "{}", "signature": "s"}),
        stages: vec![vec!["a".into()], vec!["b".into(), "c".into()]],
        stage: 0,
        state: RolloutState::Running,
        halted: None,
        started_by: "release-manager".into(),
        max_failures: 0,
        device_timeout_ms: 600_000,
        confirmed: 0,
        failed: 0,
        created_ms: 1_000,
        updated_ms: 1_000,
        finished_ms: None,
        devices: vec![device("a", 0), device("b", 1), device("c", 1)],
    }
}

/// Who may write a rollout: its owner while the lease runs, another
/// gateway once it expired, nobody once it finished. A save of some
/// devices keeps the others.
async fn rollout_leases(sink: &dyn Sink) {
    use aeris_sink::rollouts::{Lease, RolloutState};
    let lease = |owner: &str| Lease {
        owner: owner.into(),
        millis: 600,
    };
    let (a, b) = (lease("gw-a"), lease("gw-b"));
    let mut r = stored_rollout();
    assert!(sink.save_rollout(&r, &a).await.unwrap());
    assert!(
        sink.claim_rollouts(&b).await.unwrap().is_empty(),
        "a's lease runs"
    );
    assert!(
        !sink.save_rollout(&r, &b).await.unwrap(),
        "b does not own it"
    );
    let mine = sink.claim_rollouts(&a).await.unwrap();
    assert_eq!(mine, vec![r.clone()]);

    // The canary confirmed; only its row is written.
    r.devices[0].outcome = "confirmed".into();
    r.devices[0].sent_ms = Some(2_000);
    r.devices.truncate(1);
    (r.stage, r.confirmed, r.updated_ms) = (1, 1, 3_000);
    assert!(sink.save_rollout(&r, &a).await.unwrap());
    let got = sink.rollout(42).await.unwrap().unwrap();
    assert_eq!((got.stage, got.confirmed, got.devices.len()), (1, 1, 3));
    assert_eq!(got.devices[0].outcome, "confirmed");
    assert_eq!(got.devices[0].sent_ms, Some(2_000));
    assert_eq!(got.devices[1].outcome, "pending");
    assert_eq!(got.devices[2].stage, 1);

    // a stops renewing: b takes it over, and a can no longer write.
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    let taken = sink.claim_rollouts(&b).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].devices, got.devices);
    assert!(!sink.save_rollout(&r, &a).await.unwrap());

    r.state = RolloutState::Completed;
    r.finished_ms = Some(4_000);
    assert!(sink.save_rollout(&r, &b).await.unwrap());
    assert!(sink.claim_rollouts(&b).await.unwrap().is_empty());
    assert!(
        !sink.save_rollout(&r, &b).await.unwrap(),
        "finished is final"
    );
    assert_eq!(
        sink.rollout_counts().await.unwrap(),
        vec![(RolloutState::Completed, 1)]
    );
    let done = sink.rollout(42).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.finished_ms),
        (RolloutState::Completed, Some(4_000))
    );
    assert_eq!(done.started_by, "release-manager");
    assert!(sink.rollout(43).await.unwrap().is_none());
}

#[tokio::test]
async fn a_rollout_belongs_to_one_gateway_until_its_lease_expires() {
    let db = TestDb::create().await;
    let postgis = PostgisSink::connect(&db.url).await.unwrap();
    rollout_leases(&postgis).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = aeris_sink::SqliteSink::open(&dir.path().join("c.db")).unwrap();
    rollout_leases(&sqlite).await;
}
