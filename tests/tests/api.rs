//! The gateway's HTTP API against a real broker, database and Redis, with
//! fake devices speaking the wire protocol, and with a real agent whose
//! data debt `/api/devices` reports.

use std::collections::BTreeSet;
use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{reading, status, FakeDevice};
use aeris_tests::http::{get, get_json, metric};
use aeris_tests::sensors::{readings, Publisher};
use aeris_tests::stack::{Stack, DEVICE};
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
    assert_eq!(near[0]["aqi_instant"], 115);
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
    // Issue 17 (5): the rest of the status. This one names no model and no
    // drain estimate (an agent without models, a queue not shrinking).
    assert_eq!(d["boot_id"], 7);
    assert_eq!(d["models"], serde_json::json!({}));
    assert_eq!(d["drain_eta_s"], serde_json::Value::Null);
    let age = d["oldest_unsent_age_s"].as_i64();
    assert!(age.is_some_and(|a| (60..120).contains(&a)), "{d}");

    // The agent restarts with a model loaded and its queue draining.
    let mut next = status(DEV, 20, 5);
    next.boot_id = u64::MAX - 3;
    next.models = vec![aeris_wire::ModelVersion {
        name: "pm-corrector".into(),
        version: "1.2.0".into(),
    }];
    next.drain_eta_s = Some(45);
    next.losses.push(aeris_wire::Loss {
        reason: "downsampled".into(),
        count: 9,
    });
    dev.send_status(&next).await;
    let d = wait_for("the newer status", Duration::from_secs(10), || async {
        let v = get_json(port, "/api/devices");
        (v[0]["last_seq"] == 20).then(|| v[0].clone())
    })
    .await;
    assert_eq!(d["boot_id"], u64::MAX - 3);
    assert_eq!(d["models"], serde_json::json!({"pm-corrector": "1.2.0"}));
    assert_eq!(d["drain_eta_s"], 45);
    assert_eq!(d["queued_readings"], 5);
    assert_eq!(
        d["losses"],
        serde_json::json!({"evicted": 3, "downsampled": 9})
    );
    // The new boot id counts as a restart, for `AerisDeviceRestarting`.
    let restarts = format!("aeris_gateway_device_restarts_total{{device=\"{DEV}\"}}");
    wait_for("the restart metric", Duration::from_secs(10), || async {
        (metric(port, &restarts) == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(
            port,
            &format!("aeris_gateway_device_drain_eta_seconds{{device=\"{DEV}\"}}")
        ),
        45.0
    );
}

/// Issue 17 (5): a real agent cut off from its cloud broker builds data
/// debt; when its link returns, its status reaches the gateway before the
/// backlog does, and `/api/devices` shows the debt (queued readings, the
/// oldest unsent reading's age, the drain estimate), its boot id and its
/// models (none loaded in this stack: an empty object), then the debt paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_cloud_shows_its_data_debt_in_the_devices_api() {
    // One small batch in flight at a time: the backlog takes many acks to
    // drain, over several statuses (every 300 ms in the stack).
    let stack =
        Stack::start_gated("[uplink]\nbatch_max_readings = 10\nmax_inflight_batches = 1\n").await;
    let all = readings(2020, 4);
    let (before, backlog) = all.split_at(20);
    let sensors = Publisher::connect(stack.local.port).await;
    let (api, health) = (stack.api_port, stack.edge_health);
    for r in before {
        sensors.publish(r).await;
    }
    stack.wait_rows(20, Duration::from_secs(30)).await;
    let device = |v: serde_json::Value| {
        v.as_array()?
            .iter()
            .find(|d| d["device"] == DEVICE)
            .cloned()
    };
    let d = wait_for("the agent's status", Duration::from_secs(10), || async {
        device(get_json(api, "/api/devices")).filter(|d| d["queued_readings"] == 0)
    })
    .await;
    let boot_id = d["boot_id"].as_u64();
    assert!(boot_id.is_some(), "{d}");
    assert_eq!(d["models"], serde_json::json!({}), "{d}");

    // The link goes down; the readings pile up on the board.
    stack.gate.as_ref().unwrap().close();
    wait_for("the link to drop", Duration::from_secs(30), || async {
        (metric(health, "aeris_edge_uplink_disconnects_total") >= 1.0).then_some(())
    })
    .await;
    for r in backlog {
        sensors.publish(r).await;
    }
    wait_for(
        "the backlog in the buffer",
        Duration::from_secs(60),
        || async { (metric(health, "aeris_edge_ingest_accepted_total") >= 2020.0).then_some(()) },
    )
    .await;

    // The link returns: every status the gateway stores, until all is in.
    stack.gate.as_ref().unwrap().open();
    let mut seen = Vec::new();
    let last = wait_for("the debt paid", Duration::from_secs(120), || {
        let d = device(get_json(api, "/api/devices"));
        if let Some(d) = &d {
            if seen.last() != Some(d) {
                seen.push(d.clone());
            }
        }
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            d.filter(|d| d["received"] == 2020 && d["queued_readings"] == 0)
        }
    })
    .await;
    let in_debt: Vec<_> = seen
        .iter()
        .filter(|d| d["queued_readings"].as_u64().is_some_and(|q| q > 0))
        .collect();
    assert!(!in_debt.is_empty(), "no status with debt: {seen:?}");
    let oldest_backlog = backlog.iter().map(|r| r.ts_ms).min().unwrap();
    let newest_backlog = backlog.iter().map(|r| r.ts_ms).max().unwrap();
    for d in &in_debt {
        assert_eq!(d["boot_id"].as_u64(), boot_id, "{d}");
        assert_eq!(d["models"], serde_json::json!({}), "{d}");
        // The readings are timestamped over an hour ago; the oldest
        // unsent one is one of the backlog's.
        let oldest = d["oldest_unsent_ms"].as_i64().unwrap_or(0);
        assert!((oldest_backlog..=newest_backlog).contains(&oldest), "{d}");
        let age = d["oldest_unsent_age_s"].as_i64().unwrap_or(0);
        assert!(age >= 3600, "{d}");
        assert!(d["queued_bytes"].as_u64().is_some_and(|b| b > 0), "{d}");
        assert!(d.get("drain_eta_s").is_some(), "{d}");
    }
    // The queue shrank over several statuses: the agent estimated when
    // it would be empty.
    assert!(
        in_debt
            .iter()
            .any(|d| d["drain_eta_s"].as_u64().is_some_and(|e| e > 0)),
        "no drain estimate: {in_debt:?}"
    );
    // Paid: nothing queued, nothing old, drained.
    assert_eq!(last["boot_id"].as_u64(), boot_id, "{last}");
    assert_eq!(
        last["oldest_unsent_age_s"],
        serde_json::Value::Null,
        "{last}"
    );
    assert_eq!(last["drain_eta_s"], 0, "{last}");
    eprintln!(
        "{} stored statuses with debt, queued {} .. {}",
        in_debt.len(),
        in_debt[0]["queued_readings"],
        in_debt[in_debt.len() - 1]["queued_readings"]
    );
}
