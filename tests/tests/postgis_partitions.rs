//! `readings` partitioned by day (migration 0006) against a real PostGIS:
//! exactly once per `(device_id, seq)` across partitions, before and after
//! a partition was dropped by retention or detached by hand.

use aeris_sink::postgis::partition;
use aeris_sink::{PostgisSink, Sink, WriteOutcome};
use aeris_tests::partitions::{batch_at, count, plan, rows_by_partition, DAY_MS, T0};
use aeris_tests::postgres::TestDb;

/// The key lives in `reading_runs`, outside the partitions: a resend is a
/// duplicate while its partition exists and still after retention dropped
/// it; a reading under a stored seq with another timestamp is a collision
/// both times; nothing is stored twice or stored again.
#[tokio::test]
async fn a_duplicate_after_its_partition_was_created_and_after_it_was_dropped_stays_single() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let first = sink.write(&[batch_at("d1", 1, 10, T0)]).await.unwrap();
    assert_eq!(first.inserted, 10);
    // No partition for 2020-09-13 yet: the default partition took them.
    assert_eq!(
        rows_by_partition(&db, "d1").await,
        vec![("readings_default".to_owned(), 10)]
    );

    // The gateway's run on the next day creates the day and moves them.
    let report = partition::maintain(&db.url, &plan(T0 + DAY_MS, None))
        .await
        .unwrap();
    assert!(
        report.created.contains(&"readings_p20200913".to_owned()),
        "{report:?}"
    );
    assert_eq!(report.default_rows, 0);
    assert_eq!(
        rows_by_partition(&db, "d1").await,
        vec![("readings_p20200913".to_owned(), 10)]
    );

    // Delivered again after its partition was created: a duplicate.
    let again = sink.write(&[batch_at("d1", 1, 10, T0)]).await.unwrap();
    assert_eq!(
        again,
        WriteOutcome {
            inserted: 0,
            duplicates: 10,
            ..Default::default()
        }
    );
    // Seq 3 again with a timestamp a day later (another partition): a
    // collision, not a second row.
    let mut other = batch_at("d1", 3, 1, T0);
    other.readings[0].ts_ms += DAY_MS;
    let out = sink.write(&[other.clone()]).await.unwrap();
    assert_eq!(out.collisions, vec![(0, 3)], "{out:?}");
    assert_eq!(out.inserted, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await, 10);

    // 400 days later retention drops the partition (and the empty next
    // day, created ahead), not the keys.
    let later = T0 + 402 * DAY_MS;
    let report = partition::maintain(&db.url, &plan(later, Some(400)))
        .await
        .unwrap();
    assert_eq!(
        report.dropped,
        vec![
            "readings_p20200913".to_owned(),
            "readings_p20200914".to_owned()
        ]
    );
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await, 0);
    assert_eq!(
        count(
            &db,
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0)::int8 FROM reading_runs"
        )
        .await,
        10
    );

    // Delivered again after its partition was dropped: still a duplicate,
    // not stored again (not even in the default partition).
    let after = sink.write(&[batch_at("d1", 1, 10, T0)]).await.unwrap();
    assert_eq!(
        after,
        WriteOutcome {
            inserted: 0,
            duplicates: 10,
            ..Default::default()
        }
    );
    let out = sink.write(&[other]).await.unwrap();
    assert_eq!(out.collisions, vec![(0, 3)], "{out:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await, 0);
    // New seqs after them are stored as usual.
    let out = sink.write(&[batch_at("d1", 11, 2, later)]).await.unwrap();
    assert_eq!(out.inserted, 2);

    // Expired readings are neither gaps nor asked for again.
    let devices = sink.devices().await.unwrap_or_default();
    let points = sink.resend_points().await.unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!((points[0].from_seq, points[0].stored), (13, 12));
    // `devices` lists devices with a status or a collision: d1 collided.
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].received, 12);
    assert!(devices[0].gaps.is_empty(), "{devices:?}");
    assert_eq!(devices[0].seq_collisions, 2);
}

/// A partition detached by hand (to archive it) takes its readings out of
/// `readings` but not their keys: sent again they are duplicates, not
/// stored a second time in the default partition.
#[tokio::test]
async fn a_duplicate_after_its_partition_was_detached_stays_single() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    sink.write(&[batch_at("d1", 1, 10, T0)]).await.unwrap();
    partition::maintain(&db.url, &plan(T0, None)).await.unwrap();
    db.client()
        .await
        .batch_execute("ALTER TABLE readings DETACH PARTITION readings_p20200913")
        .await
        .unwrap();
    let again = sink.write(&[batch_at("d1", 1, 10, T0)]).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 10), "{again:?}");
    let mut other = batch_at("d1", 4, 1, T0);
    other.readings[0].sensor = "elsewhere".into();
    other.readings[0].ts_ms += 1;
    assert_eq!(sink.write(&[other]).await.unwrap().collisions, vec![(0, 4)]);
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM readings_p20200913").await,
        10
    );
}

/// The same key twice in one write, with two timestamps: the first is
/// stored, the second is a collision, as before partitioning.
#[tokio::test]
async fn the_same_seq_twice_in_one_write_is_stored_once() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let mut second = batch_at("d1", 1, 2, T0);
    second.readings[0].ts_ms += 3 * DAY_MS;
    let out = sink
        .write(&[batch_at("d1", 1, 2, T0), second, batch_at("d1", 1, 2, T0)])
        .await
        .unwrap();
    assert_eq!(out.inserted, 2, "{out:?}");
    assert_eq!(out.collisions, vec![(1, 1)]);
    assert_eq!(out.duplicates, 3);
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await, 2);
}
