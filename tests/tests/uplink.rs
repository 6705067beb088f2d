//! The edge's cloud link against real Mosquitto brokers and a real gateway:
//! live-first draining after an outage, mutual TLS, and both batch layouts.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aeris_tests::cloud::{Cloud, Gateway};
use aeris_tests::device::{reading, FakeDevice};
use aeris_tests::http::metric;
use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::pki::Ca;
use aeris_tests::postgres::TestDb;
use aeris_tests::process::Proc;
use aeris_tests::sensors::{readings, Publisher, SensorReading};
use aeris_tests::stack::{Stack, DEVICE};
use aeris_tests::{now_ms, wait_for};
use aeris_wire::{columnar, decode, encode, Batch, Topics};

/// (first seq, last seq, newest ts_ms) of each batch, in the order the
/// broker delivered them.
type Seen = Arc<Mutex<Vec<(u64, u64, i64)>>>;

/// Subscribes to every device's batches on the cloud broker (a plain,
/// not shared, subscription: a copy of what the gateway gets) and returns
/// once the subscription is acknowledged.
async fn observe_batches(port: u16) -> Seen {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    let topic = Topics::default().all_devices(aeris_wire::Channel::UpBatch);
    aeris_tests::subscriber::subscribe(port, &topic, move |p| {
        if let Ok(b) = decode::<Batch>(&p.payload) {
            let newest = b.readings.iter().map(|r| r.ts_ms).max().unwrap_or(0);
            let last = b.last_seq().unwrap_or(b.first_seq);
            out.lock().unwrap().push((b.first_seq, last, newest));
        }
    })
    .await;
    seen
}

async fn publish_all(sensors: &Publisher, list: &[SensorReading]) {
    for r in list {
        sensors.publish(r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_newest_readings_go_up_first_and_the_backlog_drains_exactly_once() {
    let mut stack = Stack::start_gated(
        "[uplink]\nbatch_max_readings = 100\nmax_inflight_batches = 4\nbacklog_share = 0.25\n",
    )
    .await;
    let all = readings(3000, 6);
    let (before, rest) = all.split_at(200);
    let (backlog, after) = rest.split_at(2600);
    let sensors = Publisher::connect(stack.local.port).await;
    let health = stack.edge_health;

    // Connected: the first readings sync.
    publish_all(&sensors, before).await;
    stack.wait_rows(200, Duration::from_secs(30)).await;

    // The cloud broker goes down and the agent's link with it; readings
    // pile up in the buffer.
    stack.cloud.kill();
    stack.gate.as_ref().unwrap().close();
    wait_for(
        "the agent to see the link down",
        Duration::from_secs(30),
        || async { (metric(health, "aeris_edge_uplink_disconnects_total") >= 1.0).then_some(()) },
    )
    .await;
    publish_all(&sensors, backlog).await;
    wait_for(
        "the backlog to be buffered",
        Duration::from_secs(60),
        || async { (metric(health, "aeris_edge_ingest_accepted_total") >= 2800.0).then_some(()) },
    )
    .await;

    // The broker comes back; the gateway and an observer reconnect before
    // the agent's link is restored, so the observer sees every batch.
    stack.cloud.start_again();
    let api = stack.api_port;
    wait_for(
        "the gateway to resubscribe",
        Duration::from_secs(60),
        || async { matches!(aeris_tests::http::get(api, "/readyz"), Ok((200, _))).then_some(()) },
    )
    .await;
    let seen = observe_batches(stack.cloud.port).await;
    stack.gate.as_ref().unwrap().open();

    let newest_backlog_ts = backlog.iter().map(|r| r.ts_ms).max().unwrap();
    let oldest_backlog_ts = backlog.iter().map(|r| r.ts_ms).min().unwrap();
    wait_for(
        "the first batch after reconnecting",
        Duration::from_secs(60),
        || async { (!seen.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
    // Live readings keep coming while the backlog drains.
    publish_all(&sensors, after).await;
    stack.wait_rows(3000, Duration::from_secs(120)).await;

    let seen = seen.lock().unwrap().clone();
    let (first_seq, first_last, first_newest) = seen[0];
    assert_eq!(
        first_newest, newest_backlog_ts,
        "the first batch after reconnecting holds the newest reading: {seen:?}"
    );
    let oldest_at = seen
        .iter()
        .position(|&(f, _, _)| f == 201)
        .unwrap_or_else(|| panic!("the oldest held reading (seq 201) was never sent: {seen:?}"));
    assert!(
        oldest_at > 0,
        "the backlog went before the newest: {seen:?}"
    );
    assert!(first_seq > 201 && first_last == 2800, "{seen:?}");
    // Readings published during the drain went up before it completed:
    // some batch of live seqs (> 2800) comes before the backlog's last batch.
    let last_backlog = seen.iter().rposition(|&(_, l, _)| l < first_seq).unwrap();
    let first_live = seen.iter().position(|&(f, _, _)| f > 2800).unwrap();
    assert!(
        first_live < last_backlog,
        "live readings waited for the whole backlog: {seen:?}"
    );
    assert!(oldest_backlog_ts < first_newest);
    assert!(metric(health, "aeris_edge_uplink_backlog_batches_total") >= 20.0);
    assert!(metric(health, "aeris_edge_uplink_ack_latency_seconds_count") >= 20.0);
    assert!(metric(health, "aeris_edge_uplink_bytes_sent_total") > 0.0);
    stack.assert_exactly_once(&all).await;
}

/// A Mosquitto with a mutual-TLS listener (`require_certificate true`, the
/// certificate's CN as user name, the deployment ACL) on a free port, and a
/// plain one for the gateway. Returns the broker and the TLS port.
fn tls_broker(ca: &Ca) -> (Mosquitto, u16) {
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/aeris.acl");
    let tls = std::cell::Cell::new(0u16);
    let broker = Mosquitto::start_with_auth_and(&[("aeris-gateway", "gw-secret")], &acl, |dir| {
        ca.write(dir, &[("broker", "127.0.0.1", true)]);
        let port = aeris_tests::free_port();
        tls.set(port);
        format!(
            "listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/broker.pem\nkeyfile {d}/broker.key\n\
             require_certificate true\nuse_identity_as_username true\n",
            d = dir.display()
        )
    });
    (broker, tls.get())
}

/// The agent on `tls_port` with the device certificate `cert` (signed by
/// `cert_ca`) and the broker CA `ca_pem`, sensors on `local`.
fn tls_edge(
    dir: &Path,
    local: u16,
    tls_port: u16,
    health: u16,
    ca_pem: &str,
    device: (String, String),
) -> Proc {
    std::fs::write(dir.join("cloud-ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("device.pem"), device.0).unwrap();
    std::fs::write(dir.join("device.key"), device.1).unwrap();
    let path = |f: &str| dir.join(f).display().to_string();
    Proc::start(
        "aeris-edge",
        &[
            ("AERIS_DEVICE_ID", DEVICE.to_owned()),
            ("AERIS_DATA_DIR", path("edge")),
            ("AERIS_HEALTH_LISTEN", format!("127.0.0.1:{health}")),
            ("AERIS_LOCAL__PORT", local.to_string()),
            ("AERIS_CLOUD__PORT", tls_port.to_string()),
            ("AERIS_CLOUD__TLS__CA_FILE", path("cloud-ca.pem")),
            ("AERIS_CLOUD__TLS__CERT_FILE", path("device.pem")),
            ("AERIS_CLOUD__TLS__KEY_FILE", path("device.key")),
            ("AERIS_UPLINK__BATCH_MAX_AGE", "100ms".to_owned()),
            ("AERIS_INFER__ENABLED", "false".to_owned()),
        ],
        dir.join("edge.log"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_foreign_certificate_and_syncs_with_the_right_one() {
    let ca = Ca::new("aeris-test-ca");
    let (broker, tls_port) = tls_broker(&ca);
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let _gw =
        Gateway::start_authenticated(broker.port, &db.url, dir.path().join("gateway.log")).await;
    let local = Mosquitto::start();
    let health = aeris_tests::free_port();

    // A certificate with the right name, signed by another CA.
    let rogue = Ca::new("rogue-ca").issue(DEVICE, false);
    let mut edge = tls_edge(dir.path(), local.port, tls_port, health, &ca.pem, rogue);
    let sensors = Publisher::connect(local.port).await;
    wait_for(
        "the agent's sensor subscription",
        Duration::from_secs(20),
        || async {
            edge.log()
                .contains("subscribed to sensor topic")
                .then_some(())
        },
    )
    .await;
    let list = readings(50, 5);
    publish_all(&sensors, &list).await;
    wait_for(
        "refused TLS connections to be counted",
        Duration::from_secs(30),
        || async {
            (metric(
                health,
                "aeris_edge_uplink_connect_failures_total{reason=\"tls\"}",
            ) >= 2.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(health, "aeris_edge_uplink_connects_total"),
        0.0,
        "{}",
        edge.log()
    );
    assert_eq!(rows(&db).await, 0);
    assert!(
        broker.log().to_lowercase().contains("certificate"),
        "the broker logged the refused certificate\n{}",
        broker.log()
    );
    assert_eq!(edge.terminate().map(|s| s.success()), Some(true));

    // The same agent and buffer with its real certificate: everything syncs.
    let good = ca.issue(DEVICE, false);
    let edge = tls_edge(dir.path(), local.port, tls_port, health, &ca.pem, good);
    wait_for(
        "the buffered readings over mutual TLS",
        Duration::from_secs(60),
        || async { (rows(&db).await == 50).then_some(()) },
    )
    .await;
    assert!(
        metric(health, "aeris_edge_uplink_connects_total") >= 1.0,
        "{}",
        edge.log()
    );
    let sensors_seen: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(DISTINCT sensor_id) FROM readings WHERE device_id = $1",
            &[&DEVICE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sensors_seen, 5);
}

async fn rows(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_stores_batches_in_both_layouts() {
    let cloud = Cloud::start(false).await;
    let dev = FakeDevice::connect(cloud.broker.port, "dev-both").await;
    let batch = |first_seq: u64, n: usize| Batch {
        device: "dev-both".into(),
        first_seq,
        readings: (0..n)
            .map(|i| {
                reading(
                    "s1",
                    now_ms() - 10_000 + i as i64,
                    50.0,
                    8.0,
                    12.3 + i as f64 / 10.0,
                )
            })
            .collect(),
    };
    let (old, new) = (batch(1, 20), batch(21, 20));
    dev.publish(Topics::default().batch("dev-both"), encode(&old))
        .await;
    dev.publish(Topics::default().batch("dev-both"), columnar::encode(&new))
        .await;
    for last in [20, 40] {
        assert!(
            dev.wait_acked(last, Duration::from_secs(20)).await,
            "{}",
            cloud.logs()
        );
    }
    assert_eq!(cloud.rows("dev-both").await, 40);
    let pm25: f64 = cloud
        .db
        .client()
        .await
        .query_one(
            "SELECT pm25 FROM readings WHERE device_id = 'dev-both' AND seq = 25",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pm25.to_bits(), (12.3f64 + 4.0 / 10.0).to_bits());
}
