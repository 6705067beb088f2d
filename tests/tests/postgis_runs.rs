//! Exactly once per `(device_id, seq)` through runs of seqs (migration
//! 0014, cloud-sink `postgis/runs.rs`), with the input a fleet produces:
//! two writers at once with the same readings batched differently, resends
//! that straddle stored runs, a restamped seq, and a database filled under
//! migration 13 with per-reading keys.

use aeris_sink::postgis::migrate_to;
use aeris_sink::{PostgisSink, Sink, WriteOutcome};
use aeris_tests::partitions::{batch_at, count, T0};
use aeris_tests::postgres::TestDb;
use aeris_wire::Batch;

/// Readings stored per `(device_id, seq)`: the most of any key, and the
/// number of keys.
const PER_KEY: &str = "
SELECT coalesce(max(n), 0)::int8 FROM (SELECT count(*) AS n FROM readings GROUP BY device_id, seq) k";
const KEYS: &str = "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM readings) k";
const RUN_SEQS: &str = "SELECT coalesce(sum(last_seq - first_seq + 1), 0)::int8 FROM reading_runs";

/// `device`'s seqs `first..=last` in batches of `size`.
fn batches(device: &str, first: u64, last: u64, size: u64) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut seq = first;
    while seq <= last {
        let n = size.min(last - seq + 1);
        out.push(batch_at(device, seq, n as usize, T0));
        seq += n;
    }
    out
}

fn device(i: usize) -> String {
    format!("dev-{i:02}")
}

/// Writes `all` in groups of `group` batches per call; sums the outcomes.
async fn write_all(sink: &PostgisSink, all: &[Batch], group: usize) -> (u64, u64, usize) {
    let (mut inserted, mut duplicates, mut collisions) = (0, 0, 0);
    for chunk in all.chunks(group) {
        let out = sink.write(chunk).await.expect("write");
        inserted += out.inserted;
        duplicates += out.duplicates;
        collisions += out.collisions.len();
    }
    (inserted, duplicates, collisions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_with_the_same_readings_batched_differently_store_each_once() {
    let db = TestDb::create().await;
    let a = PostgisSink::connect(&db.url).await.unwrap();
    let b = PostgisSink::connect(&db.url).await.unwrap();
    const DEVICES: usize = 12;
    const LAST: u64 = 1_500;
    // Writer A: every device's 1..=1500 in batches of 100, device by device.
    // Writer B: the same readings as a restarted agent would re-batch them
    // (batches of 70 from seq 31, then 1..=30 last), devices in reverse.
    let mut for_a = Vec::new();
    let mut for_b = Vec::new();
    for i in 0..DEVICES {
        for_a.extend(batches(&device(i), 1, LAST, 100));
    }
    for i in (0..DEVICES).rev() {
        for_b.extend(batches(&device(i), 31, LAST, 70));
        for_b.extend(batches(&device(i), 1, 30, 30));
    }
    let sent = (for_a.len() + for_b.len()) as u64;
    let ((ia, da, ca), (ib, db_, cb)) =
        tokio::join!(write_all(&a, &for_a, 8), write_all(&b, &for_b, 5));
    let unique = DEVICES as u64 * LAST;
    assert!(sent > 0);
    assert_eq!(ia + ib, unique, "each reading stored by exactly one writer");
    assert_eq!(da + db_, 2 * unique - unique, "the rest are duplicates");
    assert_eq!((ca, cb), (0, 0), "a resend is never a collision");
    assert_eq!(
        count(&db, "SELECT count(*) FROM readings").await,
        unique as i64
    );
    assert_eq!(count(&db, KEYS).await, unique as i64);
    assert_eq!(count(&db, PER_KEY).await, 1);
    assert_eq!(count(&db, RUN_SEQS).await, unique as i64);
    // Every device is complete: nothing to ask for again below 1501.
    let points = a.resend_points().await.unwrap();
    assert_eq!(points.len(), DEVICES);
    for p in points {
        assert_eq!((p.stored, p.from_seq), (LAST, LAST + 1), "{}", p.device);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_seqs_are_stored_once_like_any_other() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    // A device numbering at the very top of the seq space (a hostile or
    // corrupted counter is still a valid key): seqs MAX_SEQ - 4 ..= MAX_SEQ.
    let top = Batch {
        first_seq: aeris_wire::message::MAX_SEQ - 4,
        ..batch_at("top", 1, 5, T0)
    };
    let out = sink.write(std::slice::from_ref(&top)).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (5, 0));
    let out = sink.write(&[top]).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (0, 5));
    assert_eq!(count(&db, RUN_SEQS).await, 5);
    let points = sink.resend_points().await.unwrap();
    assert_eq!(points[0].stored, 5);
}

/// How the sink of migrations 6 to 13 stored readings: a key per reading
/// in `reading_keys`, the row in `readings`; the rows are `batch_at`'s
/// (seq `s`: sensor `s{(s-1) % 3}`, `T0 + (s-1) s`, PM2.5 `3.5 + s - 1`).
const OLD_FILL: &str = "
WITH s AS (SELECT $1::text AS device_id, g AS seq, g - 1 AS i
           FROM generate_series($2::int8, $3::int8) g),
keys AS (
    INSERT INTO reading_keys (device_id, seq, ts)
    SELECT device_id, seq, 'epoch'::timestamptz + ($4::int8 + i * 1000) * interval '1 millisecond'
    FROM s
)
INSERT INTO readings (device_id, seq, sensor_id, ts, geom, flags, pm25, measurements)
SELECT device_id, seq, 's' || (i % 3),
       'epoch'::timestamptz + ($4::int8 + i * 1000) * interval '1 millisecond',
       ST_SetSRID(ST_MakePoint(13.4, 52.5 + i / 100.0), 4326), 0, 3.5 + i, '{}'
FROM s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_14_turns_keys_into_runs_and_old_readings_stay_single() {
    let db = TestDb::create().await;
    let mut client = db.client().await;
    assert_eq!(migrate_to(&mut client, 13).await.unwrap(), 13);
    // d1: 1..=9000 (longer than two runs of 4,096); d2: 1..=10 and 20..=30.
    for (device, first, last) in [("d1", 1i64, 9_000i64), ("d2", 1, 10), ("d2", 20, 30)] {
        client
            .execute(OLD_FILL, &[&device, &first, &last, &T0])
            .await
            .unwrap();
    }
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let runs: Vec<(String, i64, i64)> = client
        .query(
            "SELECT device_id, first_seq, last_seq FROM reading_runs ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let d = |s: &str| s.to_owned();
    assert_eq!(
        runs,
        vec![
            (d("d1"), 1, 4096),
            (d("d1"), 4097, 8192),
            (d("d1"), 8193, 9000),
            (d("d2"), 1, 10),
            (d("d2"), 20, 30),
        ]
    );
    assert_eq!(
        count(
            &db,
            "SELECT (to_regclass('public.reading_keys') IS NULL)::int::int8"
        )
        .await,
        1,
        "reading_keys is dropped"
    );
    let points = sink.resend_points().await.unwrap();
    let summary: Vec<(String, u64, u64)> = points
        .into_iter()
        .map(|p| (p.device, p.stored, p.from_seq))
        .collect();
    assert_eq!(summary, vec![(d("d1"), 9_000, 9_001), (d("d2"), 21, 11)]);

    // Resent across the boundary of two converted runs: all duplicates.
    let out = sink.write(&[batch_at("d1", 4_000, 200, T0)]).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (0, 200));
    // Straddling d2's gap: only 11..=19 are new.
    let out = sink.write(&[batch_at("d2", 5, 21, T0)]).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (9, 12));
    // d2's seq 3 restamped (a restored agent numbering new readings from an
    // old seq): a collision, not stored, not a duplicate.
    let mut restamped = batch_at("d2", 3, 1, T0);
    restamped.readings[0].ts_ms += 60_000;
    let out = sink.write(&[restamped]).await.unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            inserted: 0,
            duplicates: 0,
            collisions: vec![(0, 3)],
            max_seq: [(d("d2"), 30)].into_iter().collect(),
        }
    );
    // Same seq and time, another value: also a collision (row compared).
    let mut revalued = batch_at("d1", 7, 1, T0);
    revalued.readings[0].values[0].value += 1.0;
    let out = sink.write(&[revalued]).await.unwrap();
    assert_eq!(out.collisions, vec![(0, 7)]);
    assert_eq!(count(&db, PER_KEY).await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await, 9_030);
    assert_eq!(count(&db, RUN_SEQS).await, 9_030);
    let gaps: i64 = count(
        &db,
        "SELECT count(*) FROM reading_runs WHERE device_id = 'd2'",
    )
    .await;
    assert_eq!(gaps, 3, "the new run 11..=19 is a row of its own");
}
