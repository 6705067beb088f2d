//! One device's bad data never slows another's (DESIGN, guarantee 4): a
//! batch the database refuses is set aside as a dead letter and acked, a
//! batch decode refuses is counted and dropped, and 20 other devices keep
//! streaming meanwhile. Real Mosquitto, PostGIS and gateway process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{batch, FakeDevice};
use aeris_tests::http::{get, metric};
use aeris_tests::{now_ms, wait_for};
use aeris_wire::{encode, Batch, Topics};

const POISON_DEV: &str = "dev-poison";
const STREAMERS: usize = 20;
const WAIT: Duration = Duration::from_secs(20);

/// A device that sends a batch of 10 and waits for its ack, again and
/// again until `stop`; returns when each batch was sent and its
/// send-to-ack delay.
async fn stream(dev: FakeDevice, stop: Arc<tokio::sync::Notify>) -> Vec<(Instant, Duration)> {
    let t0 = now_ms() - 3_600_000;
    let mut delays = Vec::new();
    let mut first = 1;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let started = Instant::now();
        dev.send(&batch(&dev.id, first, 10, t0)).await;
        let acked = tokio::select! {
            _ = &mut stopped => return delays,
            acked = dev.wait_acked(first + 9, WAIT) => acked,
        };
        assert!(acked, "{}: batch {first} not acked within {WAIT:?}", dev.id);
        delays.push((started, started.elapsed()));
        first += 10;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_is_set_aside_while_twenty_other_devices_keep_landing() {
    let cloud = Cloud::start(false).await;
    let port = cloud.gateway.api_port;
    // A value PostgreSQL refuses but decode accepts: a constraint on the
    // sensor id (SQLSTATE 23514, class 23).
    cloud
        .db
        .client()
        .await
        .batch_execute(
            "ALTER TABLE readings ADD CONSTRAINT no_poison CHECK (sensor_id <> 'poison')",
        )
        .await
        .expect("add the constraint");

    let stop = Arc::new(tokio::sync::Notify::new());
    let mut streams = Vec::new();
    for i in 0..STREAMERS {
        let dev = FakeDevice::connect(cloud.broker.port, &format!("dev-stream-{i:02}")).await;
        streams.push(tokio::spawn(stream(dev, stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let dev = FakeDevice::connect(cloud.broker.port, POISON_DEV).await;
    let t0 = now_ms() - 3_600_000;
    let mut poison = batch(POISON_DEV, 11, 10, t0);
    poison.readings[4].sensor = "poison".into();
    // Bypass decode: neither of these ever reaches the database.
    let mut far = batch(POISON_DEV, 31, 10, t0);
    far.readings[0].ts_ms = 10_i64.pow(16);
    let mut nul = batch(POISON_DEV, 41, 10, t0);
    nul.readings[9].sensor = "pm\0sensor".into();
    let poisoned_at = Instant::now();
    for b in [
        batch(POISON_DEV, 1, 10, t0),
        poison.clone(),
        batch(POISON_DEV, 21, 10, t0),
        far,
        nul,
        batch(POISON_DEV, 51, 10, t0),
    ] {
        dev.send(&b).await;
    }
    for last in [10, 20, 30, 60] {
        assert!(
            dev.wait_acked(last, WAIT).await,
            "{last} not acked\n{}",
            cloud.logs()
        );
    }
    println!(
        "poison device: all four good or dead-lettered batches acked {:?} after sending",
        poisoned_at.elapsed()
    );
    // Keep the others streaming a little past the poison, then stop them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.notify_waiters();
    let mut delays = Vec::new();
    let mut around_poison = Vec::new();
    for s in streams {
        let d = s.await.expect("streamer");
        assert!(
            d.len() >= 5,
            "a streaming device got only {} batches through",
            d.len()
        );
        for (sent, delay) in d {
            // Sent between a second before the poison and two after it.
            if sent + Duration::from_secs(1) > poisoned_at
                && sent < poisoned_at + Duration::from_secs(2)
            {
                around_poison.push(delay);
            }
            delays.push(delay);
        }
    }
    for (what, d) in [
        ("all", &mut delays),
        ("around the poison", &mut around_poison),
    ] {
        d.sort_unstable();
        println!(
            "other devices, {what}: {} batches, send-to-ack p50 {:?}, p99 {:?}, max {:?}",
            d.len(),
            percentile(d, 0.5),
            percentile(d, 0.99),
            d[d.len() - 1]
        );
    }
    let max = around_poison[around_poison.len() - 1].max(delays[delays.len() - 1]);
    assert!(
        max < Duration::from_secs(3),
        "another device waited {max:?}\n{}",
        cloud.logs()
    );

    // The refused batch is in dead_letters, with its bytes and the reason;
    // the device's good batches landed around it; the decode-refused ones
    // were counted and never acked.
    let db = cloud.db.client().await;
    let row = db
        .query_one(
            "SELECT device_id, first_seq, last_seq, reason, payload FROM dead_letters",
            &[],
        )
        .await
        .expect("one dead letter");
    assert_eq!(row.get::<_, String>(0), POISON_DEV);
    assert_eq!((row.get::<_, i64>(1), row.get::<_, i64>(2)), (11, 20));
    let reason: String = row.get(3);
    assert!(
        reason.contains("no_poison") && reason.contains("23514"),
        "{reason}"
    );
    let payload: Vec<u8> = row.get(4);
    assert_eq!(
        aeris_wire::decode::<Batch>(&payload).expect("payload"),
        poison
    );
    let seqs: Vec<i64> = db
        .query(
            "SELECT seq FROM readings WHERE device_id = $1 ORDER BY seq",
            &[&POISON_DEV],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i64> = (1..=10).chain(21..=30).chain(51..=60).collect();
    assert_eq!(seqs, expected);
    assert!(!dev
        .acks()
        .iter()
        .any(|a| a.first_seq == 31 || a.first_seq == 41));
    assert_eq!(metric(port, "aeris_gateway_dead_letters_total"), 1.0);
    assert_eq!(
        metric(
            port,
            "aeris_gateway_messages_rejected_total{reason=\"bad_timestamp\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            port,
            "aeris_gateway_messages_rejected_total{reason=\"bad_text\"}"
        ),
        1.0
    );
    // Refused data is progress, not a stall.
    assert_eq!(get(port, "/readyz").map(|r| r.0).ok(), Some(200));
}

/// Raw bytes on a device's batch topic (the same as [`FakeDevice::send`],
/// kept here so the scenario shows what goes on the wire).
async fn send_raw(dev: &FakeDevice, b: &Batch) {
    dev.publish(Topics::default().batch(&b.device), encode(b))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_writes_fail_and_200_once_they_recover() {
    let cloud = Cloud::start_with(false, &[("AERIS_WRITER__STALL_AFTER", "2s".to_owned())]).await;
    let port = cloud.gateway.api_port;
    let db = cloud.db.client().await;
    let dev = FakeDevice::connect(cloud.broker.port, "dev-stall").await;
    let t0 = now_ms() - 3_600_000;
    send_raw(&dev, &batch("dev-stall", 1, 10, t0)).await;
    assert!(dev.wait_acked(10, WAIT).await, "{}", cloud.logs());

    // A server-side error (the table is gone: SQLSTATE 42P01), not the
    // data's fault: retried, acks held, and after 2 s no longer ready.
    db.batch_execute("ALTER TABLE readings RENAME TO readings_away")
        .await
        .expect("rename");
    let failing_from = Instant::now();
    send_raw(&dev, &batch("dev-stall", 11, 10, t0)).await;
    wait_for("/readyz 503", WAIT, || async {
        matches!(get(port, "/readyz"), Ok((503, _))).then_some(())
    })
    .await;
    println!(
        "not ready {:?} after writes started failing",
        failing_from.elapsed()
    );
    let (_, body) = get(port, "/readyz").expect("readyz");
    assert!(body.contains("\"writer\":false"), "{body}");
    assert!(
        !dev.acks().iter().any(|a| a.last_seq == 20),
        "acked while failing"
    );

    db.batch_execute("ALTER TABLE readings_away RENAME TO readings")
        .await
        .expect("rename back");
    assert!(dev.wait_acked(20, WAIT).await, "{}", cloud.logs());
    wait_for("/readyz 200", WAIT, || async {
        matches!(get(port, "/readyz"), Ok((200, _))).then_some(())
    })
    .await;
    assert_eq!(cloud.rows("dev-stall").await, 20);
    assert_eq!(metric(port, "aeris_gateway_dead_letters_total"), 0.0);
}
