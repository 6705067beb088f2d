//! Partition runs on `readings` (migration 0006) against a real PostGIS:
//! rows for days without a partition, retention dropping whole partitions
//! by age, runs beside a writer, and a failing step.

use aeris_sink::postgis::partition;
use aeris_sink::query::ReadingsQuery;
use aeris_sink::{PostgisSink, Sink};
use aeris_tests::partitions::{batch_at, plan, rows_by_partition, DAY_MS, T0};
use aeris_tests::postgres::TestDb;

/// A backlog from long ago and a clock far ahead: stored at once (the
/// default partition), the writer goes on; the next run moves the past
/// days into partitions of their own and leaves the far future waiting.
#[tokio::test]
async fn rows_for_days_without_a_partition_are_kept_and_moved_to_their_day() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let now = aeris_wire::now_ms();
    let past = 86_400_000 + 3_600_000; // 1970-01-02T01:00:00Z
    let future = 253_000_000_000_000; // year 9987
    let out = sink
        .write(&[
            batch_at("d1", 1, 3, past),
            batch_at("d1", 4, 2, future),
            batch_at("d1", 6, 2, now),
        ])
        .await
        .unwrap();
    assert_eq!(out.inserted, 7);
    let report = partition::maintain(&db.url, &plan(now, None))
        .await
        .unwrap();
    // Today and two days ahead, plus 1970-01-02 from the default.
    assert_eq!(report.created.len(), 4, "{report:?}");
    assert!(report.created.contains(&"readings_p19700102".to_owned()));
    assert_eq!(report.default_rows, 2);
    let parts = rows_by_partition(&db, "d1").await;
    assert!(
        parts.contains(&("readings_p19700102".to_owned(), 3)),
        "{parts:?}"
    );
    assert!(
        parts.contains(&("readings_default".to_owned(), 2)),
        "{parts:?}"
    );
    // A second run has nothing to do.
    let again = partition::maintain(&db.url, &plan(now, None))
        .await
        .unwrap();
    assert!(again.created.is_empty() && again.dropped.is_empty());
    // Every row answers the API's query where it is.
    for (sensor, from, n) in [("s0", past, 1), ("s1", future, 1), ("s2", now, 1)] {
        let q = ReadingsQuery {
            device: "d1".into(),
            sensor: sensor.into(),
            from_ms: from - 10_000,
            to_ms: from + 10_000,
            limit: 100,
        };
        assert_eq!(sink.readings(&q).await.unwrap().len(), n, "{sensor}");
    }
    // Readings of a day created ahead go straight into it (seq 8 is at
    // t0 + 7 s).
    sink.write(&[batch_at("d1", 8, 1, now + DAY_MS)])
        .await
        .unwrap();
    let ts = now + DAY_MS + 7000;
    let tomorrow = partition::partitions(&db.url)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.from_ms.is_some_and(|f| f <= ts && ts < f + DAY_MS))
        .expect("tomorrow's partition");
    assert!(rows_by_partition(&db, "d1")
        .await
        .contains(&(tomorrow.name, 1)));
}

/// Retention keeps every day younger than the limit and drops, whole, the
/// days entirely older; the default partition is never dropped.
#[tokio::test]
async fn retention_drops_partitions_older_than_the_limit_and_keeps_newer_ones() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    // Noon of a day, so the cutoff falls inside a day.
    let now = (aeris_wire::now_ms() / DAY_MS) * DAY_MS + DAY_MS / 2;
    let mut seq = 1;
    for age in [402, 401, 400, 399, 1] {
        sink.write(&[batch_at("d1", seq, 2, now - age * DAY_MS)])
            .await
            .unwrap();
        seq += 2;
    }
    let created = partition::maintain(&db.url, &plan(now, None))
        .await
        .unwrap();
    assert_eq!(created.default_rows, 0);
    let before = rows_by_partition(&db, "d1").await;
    assert_eq!(before.len(), 5, "{before:?}");

    let report = partition::maintain(&db.url, &plan(now, Some(400)))
        .await
        .unwrap();
    // Day -401 ends half a day before the cutoff; day -400 ends after it.
    assert_eq!(report.dropped.len(), 2, "{report:?}");
    let after = rows_by_partition(&db, "d1").await;
    assert_eq!(after, before[2..].to_vec());
    assert!(partition::partitions(&db.url)
        .await
        .unwrap()
        .iter()
        .any(|p| p.name == "readings_default"));
    // Nothing more to drop on the next run.
    let again = partition::maintain(&db.url, &plan(now, Some(400)))
        .await
        .unwrap();
    assert!(again.dropped.is_empty(), "{again:?}");
}

/// A backlog keeps arriving for days without a partition while the
/// partitions are being created: no write fails or waits for good, no run
/// fails, and every reading ends up once, in its own day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_partition_runs_at_the_same_time_lose_nothing() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let url = db.url.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let runs = tokio::spawn(async move {
        let mut runs = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            partition::maintain(&url, &plan(aeris_wire::now_ms(), None))
                .await
                .expect("a partition run failed");
            runs += 1;
        }
        runs
    });
    // Eight writes per day, so rows of a day arrive while it is moved.
    for i in 0..160u64 {
        let day = (i / 8) as i64;
        let out = sink
            .write(&[batch_at("w", 2 * i + 1, 2, T0 + day * DAY_MS)])
            .await
            .unwrap();
        assert_eq!(out.inserted, 2);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = runs.await.unwrap();
    assert!(runs > 0);
    let last = partition::maintain(&db.url, &plan(aeris_wire::now_ms(), None))
        .await
        .unwrap();
    assert_eq!(last.default_rows, 0, "{last:?}");
    let parts = rows_by_partition(&db, "w").await;
    assert_eq!(parts.len(), 20, "{parts:?}");
    assert!(parts
        .iter()
        .all(|(name, n)| name.starts_with("readings_p2020") && *n == 16));
}

/// A day that cannot be created (a table of its name is in the way) is
/// reported, and the rest of the run goes on: the other days, retention;
/// its readings wait in the default partition.
#[tokio::test]
async fn a_day_that_cannot_be_created_does_not_hold_up_the_rest() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    // Noon, so the readings stay within their days.
    let now = (aeris_wire::now_ms() / DAY_MS) * DAY_MS + DAY_MS / 2;
    let (old, blocked) = (now - 500 * DAY_MS, now - 10 * DAY_MS);
    sink.write(&[batch_at("d1", 1, 2, old - 1000)])
        .await
        .unwrap();
    sink.write(&[batch_at("d1", 3, 2, blocked - 2000)])
        .await
        .unwrap();
    let client = db.client().await;
    let name: String = client
        .query_one(
            "SELECT 'readings_p' || to_char(to_timestamp($1::int8 / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD')",
            &[&blocked],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!("CREATE TABLE {name} (x int)"))
        .await
        .unwrap();
    let report = partition::maintain(&db.url, &plan(now, Some(400)))
        .await
        .unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].contains("already exists"), "{report:?}");
    // Today and two ahead, and the old day (created, then dropped).
    assert_eq!(report.created.len(), 4, "{report:?}");
    assert_eq!(report.dropped.len(), 1, "{report:?}");
    assert_eq!(report.default_rows, 2);
    assert_eq!(
        rows_by_partition(&db, "d1").await,
        vec![("readings_default".to_owned(), 2)]
    );
}
