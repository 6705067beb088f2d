//! Benchmark (not a test): what one Mosquitto and one gateway replica
//! carry, with real processes on this machine.
//!
//! `cargo run --release -p aeris-tests --bin aeris-bench-fleet -- [devices] [rows]`
//! (defaults 2000 devices, 200000 rows; build the release binaries first:
//! `cargo build --release -p aeris-gateway`).
//!
//! 1. Devices per broker: `devices` MQTT connections, each subscribed to
//!    its `down/ack` and `down/cmd` and holding a retained status, as the
//!    edge agent does; reports the connect rate and the broker's resident
//!    memory per device, then one batch from every device, all acked.
//! 2. Rows/s per gateway replica: 50 devices send `rows` readings in
//!    batches of 500, at most 4 unacked batches each (like the uplink's
//!    window), into one gateway writing to a fresh PostGIS database;
//!    reports acked rows/s.

use std::time::{Duration, Instant};

use aeris_tests::cloud::Gateway;
use aeris_tests::device::{batch, status, FakeDevice};
use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::postgres::TestDb;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(2000);
    let rows = args.get(1).copied().unwrap_or(200_000);

    let t0 = aeris_tests::now_ms() - 7_200_000;
    let broker = Mosquitto::start();
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = Gateway::start(broker.port, &db.url, &[], dir.path().join("gateway.log"));
    gateway.wait_ready(Duration::from_secs(60)).await;
    let pid = broker.pid().expect("broker pid");
    let rss0 = rss_kib(pid);

    // 1. Devices per broker.
    let start = Instant::now();
    let mut fleet = Vec::with_capacity(devices);
    for chunk in (0..devices).collect::<Vec<_>>().chunks(100) {
        let conns = chunk.iter().map(|i| {
            let port = broker.port;
            async move { FakeDevice::connect(port, &format!("bench-{i:05}")).await }
        });
        fleet.extend(futures_util::future::join_all(conns).await);
    }
    for d in &fleet {
        d.send_status(&status(&d.id, 10, 0)).await;
    }
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib(pid);
    let start = Instant::now();
    for d in &fleet {
        d.send(&batch(&d.id, 1, 10, t0)).await;
    }
    // Like the edge, a device sends its batch again when no ack came within
    // its ack timeout (10 s here); counted.
    let mut resent = 0;
    for d in &fleet {
        let mut tries = 0;
        while !d.wait_acked(10, Duration::from_secs(10)).await {
            tries += 1;
            assert!(tries < 12, "{} not acked\n{}", d.id, gateway.proc.log());
            resent += 1;
            d.send(&batch(&d.id, 1, 10, t0)).await;
        }
    }
    let round_s = start.elapsed().as_secs_f64();
    println!(
        "devices per broker: {devices} connections + subscriptions + retained statuses in {connect_s:.1} s \
         ({:.0}/s); broker RSS {} KiB -> {} KiB ({:.1} KiB per device); one 10-reading batch from every \
         device acked in {round_s:.1} s ({:.0} batches/s, {resent} sent again after a 10 s ack timeout)",
        devices as f64 / connect_s,
        rss0,
        rss1,
        (rss1.saturating_sub(rss0)) as f64 / devices as f64,
        devices as f64 / round_s
    );
    drop(fleet);

    // 2. Rows/s per gateway replica.
    let senders = 50usize;
    let per_batch = 500usize;
    let per_device = rows / senders / per_batch;
    let mut devs = Vec::new();
    for i in 0..senders {
        devs.push(FakeDevice::connect(broker.port, &format!("load-{i:03}")).await);
    }
    let start = Instant::now();
    let tasks = devs.into_iter().map(|d| async move {
        let window = 4usize;
        for b in 0..per_device {
            if b >= window {
                let must = ((b - window + 1) * per_batch) as u64;
                assert!(d.wait_acked(must, Duration::from_secs(120)).await);
            }
            d.send(&batch(&d.id, (b * per_batch + 1) as u64, per_batch, t0))
                .await;
        }
        assert!(
            d.wait_acked((per_device * per_batch) as u64, Duration::from_secs(120))
                .await
        );
    });
    futures_util::future::join_all(tasks).await;
    let secs = start.elapsed().as_secs_f64();
    let total = senders * per_device * per_batch;
    println!(
        "rows/s per gateway replica: {total} readings from {senders} devices in batches of {per_batch}, \
         acked in {secs:.1} s: {:.0} rows/s",
        total as f64 / secs
    );
}
