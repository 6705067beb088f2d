//! Device identity: the broker's ACL (deploy/mosquitto/aeris.acl) keeps a
//! device to its own topics, and the gateway refuses and counts a payload
//! that names another device than its topic.

use std::path::Path;
use std::time::Duration;

use aeris_tests::cloud::Gateway;
use aeris_tests::device::{reading, FakeDevice};
use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::now_ms;
use aeris_tests::postgres::TestDb;
use aeris_wire::{encode, Batch, Topics};

fn batch(device: &str, first_seq: u64) -> Batch {
    Batch {
        device: device.into(),
        first_seq,
        readings: vec![reading("s", now_ms() - 1000, 50.0, 8.0, 3.0)],
    }
}

async fn rows(db: &TestDb, device: &str) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM readings WHERE device_id = $1",
            &[&device],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_write_under_another_devices_identity() {
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/aeris.acl");
    let broker = Mosquitto::start_with_auth(
        &[
            ("aeris-gateway", "gw-secret"),
            ("dev-a", "a-secret"),
            ("dev-b", "b-secret"),
        ],
        &acl,
    );
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        broker.port,
        &db.url,
        &[
            ("AERIS_BROKER__USERNAME", "aeris-gateway".to_owned()),
            ("AERIS_BROKER__PASSWORD", "gw-secret".to_owned()),
        ],
        dir.path().join("gateway.log"),
    );
    gw.wait_ready(Duration::from_secs(30)).await;
    let a = FakeDevice::connect_as(broker.port, "dev-a", Some(("dev-a", "a-secret"))).await;
    let topics = Topics::default();

    // 1. On another device's topic, even with a matching payload: the
    //    broker's ACL drops it (MQTT 3.1.1 still PUBACKs; nothing is delivered).
    a.publish(topics.batch("dev-b"), encode(&batch("dev-b", 1)))
        .await;
    // 2. On its own topic, naming another device: the gateway refuses it.
    a.publish(topics.batch("dev-a"), encode(&batch("dev-b", 2)))
        .await;
    // 3. Its own data: stored and acked. Sent last, so once it is acked the
    //    two before it have been dealt with.
    a.send(&batch("dev-a", 1)).await;
    assert!(
        a.wait_acked(1, Duration::from_secs(20)).await,
        "{}\n{}",
        gw.proc.log(),
        broker.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&db, "dev-a").await, 1);
    assert_eq!(rows(&db, "dev-b").await, 0, "a device wrote as another");
    assert_eq!(
        gw.metric("aeris_gateway_messages_rejected_total{reason=\"device_mismatch\"}"),
        1.0
    );
    assert!(
        broker.log().contains("Denied PUBLISH from dev-a"),
        "the broker's ACL refused the foreign topic\n{}",
        broker.log()
    );
    // An unknown client or a wrong password does not get in at all.
    let intruder = FakeDevice::connect_as(broker.port, "dev-b", Some(("dev-b", "wrong"))).await;
    intruder.send(&batch("dev-b", 5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&db, "dev-b").await, 0);
}
