//! Seq collisions: a device that lost its buffer (or had it restored from an
//! old image) numbers new readings again from an old seq. The gateway must
//! not take them for duplicates: it stores and acks nothing of them, asks
//! the device to renumber, and stores them under their new seqs. Real
//! Mosquitto, PostGIS and gateway process; the device is played by
//! [`FakeDevice`].

use std::collections::BTreeSet;
use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{batch, status, FakeDevice};
use aeris_tests::http::{get_json, metric};
use aeris_tests::{now_ms, wait_for};
use aeris_wire::{Ack, Batch, CommandKind};

const DEV: &str = "dev-lost-buffer";
const WAIT: Duration = Duration::from_secs(20);

/// `readings` of `b` renumbered from `first_seq`, as the device does after
/// a `Renumber`.
fn renumbered(mut b: Batch, first_seq: u64) -> Batch {
    b.first_seq = first_seq;
    b
}

/// The `Renumber` the device got for `first..`, waiting for it.
async fn wait_renumber(dev: &FakeDevice, first: u64) -> (u64, u64, u64) {
    wait_for("a Renumber command", WAIT, || async {
        dev.commands().iter().find_map(|c| match c.kind {
            CommandKind::Renumber {
                first_seq,
                last_seq,
                next_seq,
            } if first_seq == first => Some((first_seq, last_seq, next_seq)),
            _ => None,
        })
    })
    .await
}

/// Distinct `(sensor, ts)` stored for the device, and its rows.
async fn stored(cloud: &Cloud) -> (usize, i64) {
    let rows = cloud
        .db
        .client()
        .await
        .query(
            "SELECT sensor_id, (extract(epoch FROM ts) * 1000)::int8 FROM readings WHERE device_id = $1",
            &[&DEV],
        )
        .await
        .expect("query readings");
    let distinct: BTreeSet<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    (distinct.len(), rows.len() as i64)
}

fn acked_since(dev: &FakeDevice, before: usize) -> Vec<(u64, u64)> {
    dev.acks()[before..]
        .iter()
        .map(|a: &Ack| (a.first_seq, a.last_seq))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_readings_under_old_seqs_are_renumbered_not_acked_as_duplicates() {
    let cloud = Cloud::start(false).await;
    let port = cloud.gateway.api_port;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let t0 = now_ms() - 3_600_000;

    // Before the loss: seqs 1..=50 in five batches, all acked.
    for first in (1..=50).step_by(10) {
        dev.send(&batch(DEV, first, 10, t0)).await;
    }
    assert!(dev.wait_acked(50, WAIT).await, "{}", cloud.logs());
    wait_for("50 rows", WAIT, || async {
        (cloud.rows(DEV).await == 50).then_some(())
    })
    .await;

    // The buffer is lost; 50 new readings (30 min later) get seqs 1..=50
    // again.
    let acks_before = dev.acks().len();
    let fresh = batch(DEV, 1, 50, t0 + 1_800_000);
    dev.send(&fresh).await;
    let (first, last, next) = wait_renumber(&dev, 1).await;
    assert_eq!((first, last, next), (1, 50, 51));
    // The gateway answered the batch with the command; no ack came for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        acked_since(&dev, acks_before),
        vec![],
        "colliding seqs acked"
    );
    assert_eq!(
        stored(&cloud).await,
        (50, 50),
        "a colliding reading was stored"
    );
    assert_eq!(metric(port, "aeris_gateway_seq_collisions_total"), 50.0);

    // The device renumbers them from 51 and sends them again: they land.
    dev.send(&renumbered(fresh, next)).await;
    assert!(dev.wait_acked(100, WAIT).await, "{}", cloud.logs());
    assert_eq!(acked_since(&dev, acks_before), vec![(51, 100)]);
    assert_eq!(stored(&cloud).await, (100, 100));

    // /api/devices shows the collision, for a device that never sent a
    // status, and keeps it once the device reports one.
    let devices = get_json(port, "/api/devices");
    let d = &devices[0];
    assert_eq!(d["device"], DEV, "{devices}");
    assert_eq!(d["seq_collisions"], 50, "{devices}");
    let at = d["last_seq_collision_ms"]
        .as_i64()
        .expect("last_seq_collision_ms");
    assert!((now_ms() - at).abs() < 60_000, "{devices}");
    dev.send_status(&status(DEV, 100, 0)).await;
    wait_for("the status", WAIT, || async {
        let d = get_json(port, "/api/devices");
        (d[0]["agent_version"] == "0.1.0-test").then_some(())
    })
    .await;
    assert_eq!(get_json(port, "/api/devices")[0]["seq_collisions"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_acks_exactly_its_resends_and_new_seqs() {
    let cloud = Cloud::start(false).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let t0 = now_ms() - 3_600_000;
    dev.send(&batch(DEV, 1, 100, t0)).await;
    assert!(dev.wait_acked(100, WAIT).await, "{}", cloud.logs());

    // Seqs 90..=110: 90..=94 and 99..=100 resent as they were, 95..=98
    // held by other readings, 101..=110 new.
    let mut mixed = batch(DEV, 90, 21, t0);
    for r in &mut mixed.readings[5..9] {
        r.ts_ms += 7_777;
    }
    let acks_before = dev.acks().len();
    dev.send(&mixed).await;
    assert_eq!(wait_renumber(&dev, 95).await, (95, 98, 111));
    assert!(dev.wait_acked(110, WAIT).await, "{}", cloud.logs());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut acked = acked_since(&dev, acks_before);
    acked.sort_unstable();
    assert_eq!(acked, vec![(90, 94), (99, 110)]);
    assert_eq!(stored(&cloud).await, (110, 110));
    let port = cloud.gateway.api_port;
    assert_eq!(metric(port, "aeris_gateway_seq_collisions_total"), 4.0);
    assert_eq!(metric(port, "aeris_gateway_readings_duplicate_total"), 7.0);
    assert_eq!(metric(port, "aeris_gateway_readings_inserted_total"), 110.0);
}
