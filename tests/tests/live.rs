//! The live view in Redis: latest value per sensor, geo index, stream,
//! alerts; and what happens when Redis is away.

use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{reading, FakeDevice};
use aeris_tests::{now_ms, wait_for};
use aeris_wire::{encode, Batch, Event, EventKind, Topics};

const DEV: &str = "dev-live";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_backlog_never_moves_latest_back_in_time() {
    let cloud = Cloud::start(true).await;
    let redis = cloud.redis.as_ref().unwrap();
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let now = now_ms();
    // The newest reading goes up first (as after an outage)...
    dev.send(&Batch {
        device: DEV.into(),
        first_seq: 101,
        readings: vec![reading("s1", now, 48.1, 11.5, 50.0)],
    })
    .await;
    assert!(dev.wait_acked(101, Duration::from_secs(20)).await);
    // ...then the backlog behind it, older and in several batches.
    for k in 0..4u64 {
        dev.send(&Batch {
            device: DEV.into(),
            first_seq: 1 + k * 25,
            readings: (0..25)
                .map(|i| {
                    reading(
                        "s1",
                        now - 100_000 + (k * 25 + i) as i64 * 1000,
                        48.0,
                        11.0,
                        1.0,
                    )
                })
                .collect(),
        })
        .await;
    }
    assert!(dev.wait_acked(100, Duration::from_secs(20)).await);
    assert_eq!(cloud.rows(DEV).await, 101);
    let latest = wait_for("latest in redis", Duration::from_secs(10), || async {
        let j = redis.cli(&["HGET", "aeris:latest", "dev-live/s1"]);
        serde_json::from_str::<serde_json::Value>(j.trim()).ok()
    })
    .await;
    // Give a late update every chance to land, then look again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let latest_again: serde_json::Value =
        serde_json::from_str(redis.cli(&["HGET", "aeris:latest", "dev-live/s1"]).trim()).unwrap();
    assert_eq!(latest, latest_again);
    assert_eq!(latest["ts_ms"], now);
    assert_eq!(latest["values"]["pm25"], 50.0);
    // The geo index has the newest position; the stream only the newest.
    let pos = redis.cli(&["GEOPOS", "aeris:geo", "dev-live/s1"]);
    let lon: f64 = pos.lines().next().unwrap().parse().unwrap();
    assert!((lon - 11.5).abs() < 1e-4, "{pos}");
    assert_eq!(redis.cli(&["XLEN", "aeris:live"]).trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_leaves_postgis_unaffected_and_catches_up_when_back() {
    let mut cloud = Cloud::start(true).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    cloud.redis.as_mut().unwrap().kill();
    let now = now_ms();
    for k in 0..5u64 {
        dev.send(&Batch {
            device: DEV.into(),
            first_seq: 1 + k * 10,
            readings: (0..10)
                .map(|i| {
                    reading(
                        &format!("s{i}"),
                        now - 60_000 + k as i64 * 1000,
                        48.0 + i as f64 / 10.0,
                        11.0,
                        7.0 + k as f64,
                    )
                })
                .collect(),
        })
        .await;
    }
    // Stored and acked while Redis is down.
    assert!(
        dev.wait_acked(50, Duration::from_secs(20)).await,
        "{}",
        cloud.logs()
    );
    assert_eq!(cloud.rows(DEV).await, 50);
    wait_for("a failed live update", Duration::from_secs(10), || async {
        (cloud.gateway.metric("aeris_gateway_live_errors_total") >= 1.0).then_some(())
    })
    .await;
    let redis = cloud.redis.as_mut().unwrap();
    redis.start_again();
    let redis = cloud.redis.as_ref().unwrap();
    // Every sensor's newest reading arrives once Redis is back.
    wait_for("redis to catch up", Duration::from_secs(20), || async {
        let n: usize = redis
            .cli(&["HLEN", "aeris:latest"])
            .trim()
            .parse()
            .unwrap_or(0);
        (n == 10).then_some(())
    })
    .await;
    let s3: serde_json::Value =
        serde_json::from_str(redis.cli(&["HGET", "aeris:latest", "dev-live/s3"]).trim()).unwrap();
    assert_eq!(s3["ts_ms"], now - 60_000 + 4000);
    assert_eq!(s3["values"]["pm25"], 11.0);
    assert_eq!(
        cloud.gateway.metric("aeris_gateway_live_pending_sensors"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_alerts_are_published_on_redis_pubsub() {
    let cloud = Cloud::start(true).await;
    let port = cloud.redis.as_ref().unwrap().port;
    let listener = std::thread::spawn(move || {
        std::process::Command::new("timeout")
            .args([
                "8",
                "redis-cli",
                "-p",
                &port.to_string(),
                "--raw",
                "SUBSCRIBE",
                "aeris:alerts",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let event = Event {
        device: DEV.into(),
        ts_ms: now_ms(),
        kind: EventKind::Alert,
        message: "pm25 above 150 for 10 min".into(),
    };
    dev.publish(Topics::default().event(DEV), encode(&event))
        .await;
    let heard = listener.join().unwrap();
    assert!(heard.contains("pm25 above 150 for 10 min"), "{heard}");
    assert!(heard.contains("\"device\":\"dev-live\""), "{heard}");
}
