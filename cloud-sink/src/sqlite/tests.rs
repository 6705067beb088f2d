//! The SQLite sink on a temporary file.

use super::*;
use aeris_wire::{Batch, Reading, Status, Value};

/// Readings `first_seq..first_seq + n` of `device`; each follows from its
/// seq (sensor `s{seq % 6}`, at `1000 + seq` ms), so a resend is identical.
fn batch(device: &str, first_seq: u64, n: usize) -> Batch {
    Batch {
        device: device.into(),
        first_seq,
        readings: (first_seq..first_seq + n as u64)
            .map(|seq| Reading {
                sensor: format!("s{}", seq % 6),
                ts_ms: 1_000 + seq as i64,
                lat: 50.0 + seq as f64,
                lon: 8.0,
                flags: 0,
                values: vec![Value {
                    quantity: "pm10".into(),
                    value: seq as f64,
                }],
            })
            .collect(),
    }
}

#[tokio::test]
async fn reports_device_status_and_the_gaps_in_its_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SqliteSink::open(&dir.path().join("cloud.db")).unwrap();
    sink.write(&[batch("a", 1, 3), batch("a", 7, 2)])
        .await
        .unwrap();
    let status = |ts_ms, last_seq| Status {
        device: "a".into(),
        // Above i64::MAX: stored bit for bit.
        boot_id: u64::MAX - 6,
        ts_ms,
        state: aeris_wire::DeviceState::Online,
        agent_version: "1.0".into(),
        last_seq,
        queued_readings: 2,
        queued_bytes: 100,
        oldest_unsent_ms: Some(5),
        losses: vec![aeris_wire::Loss {
            reason: "evicted".into(),
            count: 4,
        }],
        models: vec![aeris_wire::ModelVersion {
            name: "pm-corrector".into(),
            version: "1.2.0".into(),
        }],
        drain_eta_s: Some(30),
    };
    sink.record_status(&status(20, 10)).await.unwrap();
    // An older status arriving late changes nothing.
    sink.record_status(&status(10, 3)).await.unwrap();
    let d = sink.devices().await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].last_seq, 10);
    assert_eq!(d[0].received, 5);
    assert_eq!(d[0].gaps, vec![[4, 6]]);
    assert_eq!(d[0].not_yet_received, 2);
    assert_eq!(d[0].losses.get("evicted"), Some(&4));
    assert_eq!(d[0].boot_id, u64::MAX - 6);
    assert_eq!(
        d[0].models,
        [("pm-corrector".to_owned(), "1.2.0".to_owned())].into()
    );
    assert_eq!(d[0].drain_eta_s, Some(30));
    // Reported at 5 ms after the epoch: decades old.
    assert!(d[0].oldest_unsent_age_s.is_some_and(|a| a > 1_000_000_000));
    let r = sink
        .readings(&ReadingsQuery {
            device: "a".into(),
            sensor: "s1".into(),
            from_ms: 0,
            to_ms: i64::MAX,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 7]);
}

#[tokio::test]
async fn stores_each_device_seq_once_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.db");
    let sink = SqliteSink::open(&path).unwrap();
    let out = sink
        .write(&[batch("a", 1, 5), batch("b", 1, 2)])
        .await
        .unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            inserted: 7,
            ..Default::default()
        }
    );
    // Overlapping resend: 3..=7 of "a", of which 3..=5 are stored already.
    let out = sink.write(&[batch("a", 3, 5)]).await.unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            inserted: 2,
            duplicates: 3,
            ..Default::default()
        }
    );
    drop(sink);
    let sink = SqliteSink::open(&path).unwrap();
    let conn = sink.conn.lock().unwrap();
    let (n, lat): (i64, f64) = conn
        .query_row(
            "SELECT count(*), max(lat) FROM readings WHERE device_id = 'a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, lat), (7, 57.0));
    let v: String = conn
        .query_row(
            "SELECT measurements FROM readings WHERE device_id='b' AND seq=2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, r#"{"pm10":2.0}"#);
}

/// As on PostGIS: a seq stored with another reading is a collision (not
/// stored, reported, counted on the device), a resend is a duplicate.
#[tokio::test]
async fn a_seq_holding_another_reading_is_a_collision_not_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SqliteSink::open(&dir.path().join("cloud.db")).unwrap();
    sink.write(&[batch("a", 1, 10)]).await.unwrap();
    // a: 5..=7 resent, 8..=10 other readings, 11..=14 new.
    let mut mixed = batch("a", 5, 10);
    for r in &mut mixed.readings[3..6] {
        r.ts_ms += 1;
    }
    let out = sink.write(&[batch("b", 1, 3), mixed]).await.unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            inserted: 7,
            duplicates: 3,
            collisions: vec![(1, 8), (1, 9), (1, 10)],
            max_seq: [("a".to_owned(), 14)].into(),
        }
    );
    let d = sink.devices().await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].device.as_str(), d[0].seq_collisions), ("a", 3));
    assert!(d[0].last_seq_collision_ms.is_some_and(|t| t > 0));
    let r = sink
        .readings(&ReadingsQuery {
            device: "a".into(),
            sensor: "s2".into(),
            from_ms: 0,
            to_ms: i64::MAX,
            limit: 10,
        })
        .await
        .unwrap();
    // s2 is seqs 2, 8 and 14; 8 kept its first reading (ts 1008).
    assert_eq!(
        r.iter().map(|r| (r.seq, r.ts_ms)).collect::<Vec<_>>(),
        vec![(2, 1002), (8, 1008), (14, 1014)]
    );
}

/// A database at schema version 2 (before collisions) is brought to the
/// latest version with its rows.
#[tokio::test]
async fn opens_a_version_2_database_and_migrates_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(SCHEMA_2).unwrap();
        conn.execute(
            "INSERT INTO devices VALUES ('a', 5, 1, '1.0', 3, 0, 0, NULL, '{}')",
            [],
        )
        .unwrap();
    }
    let sink = SqliteSink::open(&path).unwrap();
    let d = sink.devices().await.unwrap();
    assert_eq!(
        (d[0].agent_version.as_str(), d[0].seq_collisions),
        ("1.0", 0)
    );
    // Stored before models were: none, no estimate, until the next status.
    assert!(d[0].models.is_empty());
    assert_eq!((d[0].boot_id, d[0].drain_eta_s), (0, None));
    drop(sink);
    let version: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
}

/// A value the database refuses fails the whole write as `Data` (nothing
/// stored), and the batch can be set aside as a dead letter with its bytes.
#[tokio::test]
async fn a_refused_value_is_a_data_error_and_the_batch_goes_to_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SqliteSink::open(&dir.path().join("cloud.db")).unwrap();
    sink.conn
        .lock()
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON readings WHEN NEW.sensor_id = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poison sensor'); END",
        )
        .unwrap();
    let mut bad = batch("a", 10, 2);
    bad.readings[1].sensor = "poison".into();
    let err = sink
        .write(&[batch("a", 1, 3), bad.clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Data(_)), "{err}");
    assert!(err.to_string().contains("poison sensor"), "{err}");
    let out = sink.write(&[batch("a", 1, 3)]).await.unwrap();
    assert_eq!(out.inserted, 3, "the rolled-back group stored nothing");
    let letter = DeadLetter {
        device: "a".into(),
        first_seq: 10,
        last_seq: 11,
        reason: err.to_string(),
        payload: aeris_wire::encode(&bad),
    };
    sink.dead_letter(&letter).await.unwrap();
    let conn = sink.conn.lock().unwrap();
    let (device, first, last, reason, payload, at): (String, i64, i64, String, Vec<u8>, i64) = conn
        .query_row(
            "SELECT device_id, first_seq, last_seq, reason, payload, at_ms FROM dead_letters",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .unwrap();
    assert_eq!((device.as_str(), first, last), ("a", 10, 11));
    assert_eq!(reason, letter.reason);
    assert_eq!(aeris_wire::decode::<Batch>(&payload).unwrap(), bad);
    assert!(at > 0);
}
