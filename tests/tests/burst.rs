//! A fleet reconnecting after a broker restart or an outage sends its
//! backlog at once: more batches than the gateway's writer queue holds
//! arrive while the database is slow. Every batch must still be stored once
//! and acked; the gateway must not stall (it once did, for good: its MQTT
//! loop waited for room in the writer's queue while the writer waited for
//! room in the MQTT client's request queue, which only that loop drains —
//! seen as 5,000 devices whose acks never came in `aeris-bench-fleet`).

use std::time::{Duration, Instant};

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{batch, FakeDevice};

/// Batches sent while the database is locked: several times the writer's
/// queue (1,024) plus the MQTT client's request queue (4,096 requests, two
/// per acked batch).
const BATCHES: u64 = 6_000;
const DEVICES: u64 = 20;

/// Makes `cloud`'s database slow (every insert into the runs table waits
/// 20 ms) and connects [`DEVICES`] devices named `{prefix}-NN`.
async fn slow_database_and_devices(cloud: &Cloud, prefix: &str) -> Vec<FakeDevice> {
    let db = cloud.db.client().await;
    db.batch_execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
         'BEGIN PERFORM pg_sleep(0.02); RETURN NULL; END'; \
         CREATE TRIGGER slow AFTER INSERT ON reading_runs \
         FOR EACH STATEMENT EXECUTE FUNCTION slow()",
    )
    .await
    .expect("slow trigger");
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        devices.push(FakeDevice::connect(cloud.broker.port, &format!("{prefix}-{d:02}")).await);
    }
    devices
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_writer_queue_while_the_database_is_slow_is_stored_and_acked() {
    let cloud = Cloud::start(false).await;
    let devices = slow_database_and_devices(&cloud, "burst").await;
    let t0 = aeris_tests::now_ms() - 3_600_000;
    let per_device = BATCHES / DEVICES;
    for seq in 1..=per_device {
        for d in &devices {
            d.send(&batch(&d.id, seq, 1, t0)).await;
        }
    }

    // Every batch acked (the fake devices never send one again), each
    // stored once.
    let start = Instant::now();
    for d in &devices {
        let left = Duration::from_secs(60).saturating_sub(start.elapsed());
        assert!(
            d.wait_acked(per_device, left).await,
            "{}: last ack {:?} after {:?}; gateway received {} batches, sent {} acks\n{}",
            d.id,
            d.acks().iter().map(|a| a.last_seq).max(),
            start.elapsed(),
            cloud.gateway.metric("aeris_gateway_batches_received_total"),
            cloud.gateway.metric("aeris_gateway_acks_sent_total"),
            cloud.logs()
        );
        let mut acked: Vec<u64> = d.acks().iter().map(|a| a.last_seq).collect();
        acked.sort_unstable();
        acked.dedup();
        assert_eq!(acked.len() as u64, per_device, "{}", d.id);
    }
    for d in &devices {
        assert_eq!(cloud.rows(&d.id).await, per_device as i64, "{}", d.id);
    }
}

/// A database that cannot keep up and a gateway allowed to keep only a few
/// KiB of batches while its writer is behind: the batches past that are
/// counted and left to their devices, which send them again after their
/// ack timeout; in the end each is stored once and acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_past_the_waiting_limit_are_counted_and_stored_once_when_sent_again() {
    let cloud = Cloud::start_with(
        false,
        &[("AERIS_WRITER__MAX_WAITING_BYTES", "4096".to_owned())],
    )
    .await;
    let devices = slow_database_and_devices(&cloud, "shed").await;
    let t0 = aeris_tests::now_ms() - 3_600_000;
    let per_device = 150u64;
    let shed = "aeris_gateway_messages_rejected_total{reason=\"writer_backlog\"}";
    let acked = |d: &FakeDevice| -> std::collections::BTreeSet<u64> {
        d.acks().iter().map(|a| a.last_seq).collect()
    };
    // The devices' first send, then rounds of sending again what was not
    // acked once the gateway has gone quiet (an ack timeout).
    let mut rounds = 0;
    loop {
        for seq in 1..=per_device {
            for d in &devices {
                if !acked(d).contains(&seq) {
                    d.send(&batch(&d.id, seq, 1, t0)).await;
                }
            }
        }
        let mut last = (f64::NAN, Instant::now());
        loop {
            let n =
                cloud.gateway.metric("aeris_gateway_acks_sent_total") + cloud.gateway.metric(shed);
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rounds += 1;
        if devices.iter().all(|d| acked(d).len() as u64 == per_device) {
            break;
        }
        assert!(
            rounds < 20,
            "not all acked after {rounds} rounds\n{}",
            cloud.logs()
        );
    }
    assert!(
        cloud.gateway.metric(shed) > 0.0,
        "nothing was left to the devices: the test did not reach the limit"
    );
    assert!(rounds > 1);
    for d in &devices {
        assert_eq!(cloud.rows(&d.id).await, per_device as i64, "{}", d.id);
    }
    assert_eq!(
        cloud
            .gateway
            .metric("aeris_gateway_readings_duplicate_total"),
        0.0,
        "a batch left to its device had been stored"
    );
}
