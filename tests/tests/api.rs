//! The gateway's HTTP API against a real broker, database and Redis, with
//! fake devices speaking the wire protocol.

use std::collections::BTreeSet;
use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{reading, status, FakeDevice};
use aeris_tests::http::{get, get_json, metric};
use aeris_tests::{now_ms, wait_for};
use aeris_wire::Batch;

const DEV: &str = "dev-api";

fn ids(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_sensors_by_area_readings_by_time_and_devices_with_gaps() {
    let cloud = Cloud::start(true).await;
    let port = cloud.gateway.api_port;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let t0 = now_ms() - 600_000;
    // Seqs 1..=6 and 10..=11: 7..=9 never arrive.
    let first = Batch {
        device: DEV.into(),
        first_seq: 1,
        readings: (0..6)
            .map(|i| {
                let (s, lat, lon) =
                    [("s-a", 47.0, 6.0), ("s-b", 47.0, 6.5), ("s-c", 52.5, 13.4)][i % 3];
                reading(s, t0 + i as i64 * 1000, lat, lon, 5.0 + i as f64)
            })
            .collect(),
    };
    let second = Batch {
        device: DEV.into(),
        first_seq: 10,
        readings: vec![
            reading("s-a", t0 + 10_000, 47.0, 6.0, 40.0),
            reading("s-a", t0 + 11_000, 47.0, 6.0, 41.0),
        ],
    };
    dev.send(&first).await;
    dev.send(&second).await;
    dev.send_status(&status(DEV, 13, 2)).await;
    assert!(
        dev.wait_acked(6, Duration::from_secs(20)).await,
        "{}",
        cloud.logs()
    );
    assert!(
        dev.wait_acked(11, Duration::from_secs(20)).await,
        "{}",
        cloud.logs()
    );

    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    assert_eq!(get(port, "/readyz").unwrap().0, 200);
    assert!(metric(port, "aeris_gateway_acks_sent_total") >= 2.0);
    assert_eq!(metric(port, "aeris_gateway_readings_inserted_total"), 8.0);

    // Sensors in a box and within a radius (the Redis geo index).
    let in_box = wait_for("sensors in the box", Duration::from_secs(10), || async {
        let v = get_json(port, "/api/sensors?bbox=5.5,46.5,7,47.5");
        (ids(&v).len() == 2).then_some(v)
    })
    .await;
    assert_eq!(
        ids(&in_box),
        BTreeSet::from(["dev-api/s-a".to_owned(), "dev-api/s-b".to_owned()])
    );
    let near = get_json(port, "/api/sensors?lat=47&lon=6&radius_m=10000");
    assert_eq!(ids(&near), BTreeSet::from(["dev-api/s-a".to_owned()]));
    // The latest of s-a is the newest reading, with its AQI.
    assert_eq!(near[0]["ts_ms"], t0 + 11_000);
    assert_eq!(near[0]["values"]["pm25"], 41.0);
    assert_eq!(near[0]["aqi"], 115);
    assert_eq!(ids(&get_json(port, "/api/sensors")).len(), 3);
    assert_eq!(get(port, "/api/sensors?bbox=1,2").unwrap().0, 400);

    // A sensor's readings over a time range (PostGIS): [t0, t0 + 10 s).
    let path = format!(
        "/api/readings?device={DEV}&sensor=s-a&from={t0}&to={}",
        t0 + 10_000
    );
    let r = get_json(port, &path);
    let seqs: Vec<u64> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 4]);
    assert_eq!(r[1]["values"]["pm25"], 8.0);
    assert_eq!(r[0]["lat"], 47.0);

    // Devices: status and data debt next to the gaps.
    let devices = wait_for("the device's status", Duration::from_secs(10), || async {
        let v = get_json(port, "/api/devices");
        (v.as_array().map(|a| a.len()) == Some(1)).then_some(v)
    })
    .await;
    let d = &devices[0];
    assert_eq!(d["device"], DEV);
    assert_eq!(d["agent_version"], "0.1.0-test");
    assert_eq!(d["received"], 8);
    assert_eq!(d["gaps"], serde_json::json!([[7, 9]]));
    assert_eq!(d["not_yet_received"], 2);
    assert_eq!(d["queued_readings"], 2);
    assert_eq!(d["losses"]["evicted"], 3);
    assert!(d["oldest_unsent_ms"].as_i64().is_some());
}
