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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_writer_queue_while_the_database_is_slow_is_stored_and_acked() {
    let cloud = Cloud::start(false).await;
    let t0 = aeris_tests::now_ms() - 3_600_000;
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        devices.push(FakeDevice::connect(cloud.broker.port, &format!("burst-{d:02}")).await);
    }

    // A slow database: every insert into the key table waits 20 ms.
    let db = cloud.db.client().await;
    db.batch_execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
         'BEGIN PERFORM pg_sleep(0.02); RETURN NULL; END'; \
         CREATE TRIGGER slow AFTER INSERT ON reading_keys \
         FOR EACH STATEMENT EXECUTE FUNCTION slow()",
    )
    .await
    .expect("slow trigger");
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
