//! Dual-channel QC through a running gateway and PostGIS: batches of
//! two-channel sensors (PurpleAir's A and B) go in, and the hourly rollups
//! carry each hour's check (`channel_qc`), an hour whose channels disagree
//! is invalid and missing from the NowCast, and the gateway reports each
//! sensor's disagreement ratio as a metric and in `/api/devices`.
//!
//! The sloppy inputs: one channel stuck at 0, one drifting away, channels
//! within tolerance, A and B in separate readings sent newest hour first,
//! and one channel missing for an hour.

use std::collections::BTreeMap;
use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{status, FakeDevice};
use aeris_wire::aqi::hourly::{hourly_means, Completeness, HourlyMean, Sample, HOUR_MS};
use aeris_wire::aqi::nowcast::PM25_NOWCAST;
use aeris_wire::{Batch, Reading, Value};

const DEV: &str = "qc-1";

fn reading(sensor: &str, ts_ms: i64, values: &[(&str, f64)]) -> Reading {
    Reading {
        sensor: sensor.into(),
        ts_ms,
        lat: 47.0,
        lon: 8.0,
        flags: 0,
        values: values
            .iter()
            .map(|(q, v)| Value {
                quantity: (*q).into(),
                value: *v,
            })
            .collect(),
    }
}

/// Channel A and B of `sensor` in minute `m` of hour `h` (None: silent).
fn channels(sensor: &str, h: i64, m: i64) -> (Option<f64>, Option<f64>) {
    let wiggle = (m % 3) as f64;
    match sensor {
        "agree" => (Some(10.0 + wiggle), Some(10.5 + wiggle)),
        "stuck" => (Some(0.0), Some(20.0 + wiggle)),
        // B drifts up hour by hour: +0, +4, +20 µg/m³.
        "drift" => (
            Some(10.0 + wiggle),
            Some(10.0 + wiggle + [0.0, 4.0, 20.0][h as usize]),
        ),
        "split" => (Some(10.0 + wiggle), Some(12.0 + wiggle)),
        // B silent in hour 1.
        _ => (Some(30.0 + wiggle), (h != 1).then_some(31.0 + wiggle)),
    }
}

const SENSORS: [&str; 5] = ["agree", "stuck", "drift", "split", "one"];

/// One sensor's readings of hour `h` (a reading a minute; `split` sends A
/// and B as two readings 30 s apart), with `pm25` the mean of the channels
/// each reading carries, as the agent fills it.
fn hour_readings(sensor: &str, first_hour: i64, h: i64) -> Vec<Reading> {
    let mut out = Vec::new();
    for m in 0..60 {
        let ts = first_hour + h * HOUR_MS + m * 60_000;
        let (a, b) = channels(sensor, h, m);
        if sensor == "split" {
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            out.push(reading(sensor, ts + 30_000, &[("pm25_b", b), ("pm25", b)]));
            out.push(reading(sensor, ts, &[("pm25_a", a), ("pm25", a)]));
            continue;
        }
        let mut values = vec![];
        let present: Vec<f64> = [a, b].into_iter().flatten().collect();
        values.push(("pm25", present.iter().sum::<f64>() / present.len() as f64));
        if let Some(a) = a {
            values.push(("pm25_a", a));
        }
        if let Some(b) = b {
            values.push(("pm25_b", b));
        }
        out.push(reading(sensor, ts, &values));
    }
    out
}

/// EPA's rule worked here on its own: apart by more than 5 µg/m³ and by
/// more than 70 % of the channels' mean.
fn disagree(a: f64, b: f64) -> bool {
    (a - b).abs() > 5.0 && (a - b).abs() / ((a + b) / 2.0) > 0.7
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// What the test expects of each sensor's hour: (qc label, valid), and
/// the NowCast at the last hour, from the readings alone.
fn expected(sensor: &str, first_hour: i64) -> (Vec<(&'static str, bool)>, Option<f64>) {
    let mut checks = vec![];
    let mut hours: Vec<HourlyMean> = vec![];
    for h in 0..3 {
        let rs = hour_readings(sensor, first_hour, h);
        let of = |q: &str| -> Vec<f64> {
            rs.iter()
                .flat_map(|r| r.values.iter().filter(|v| v.quantity == q).map(|v| v.value))
                .collect()
        };
        let (a, b) = (of("pm25_a"), of("pm25_b"));
        let qc = match (a.is_empty(), b.is_empty()) {
            (false, false) if disagree(mean(&a), mean(&b)) => "disagree",
            (false, false) => "ok",
            _ => "one_channel",
        };
        let samples: Vec<Sample> = rs
            .iter()
            .flat_map(|r| {
                r.values
                    .iter()
                    .filter(|v| v.quantity == "pm25")
                    .map(|v| Sample {
                        ts_ms: r.ts_ms,
                        value: v.value,
                    })
            })
            .collect();
        let mut hour = hourly_means(&samples, 60_000, &Completeness::default())[0];
        hour.valid &= qc != "disagree";
        checks.push((qc, hour.valid));
        hours.push(hour);
    }
    (
        checks,
        PM25_NOWCAST.nowcast_at(&hours, first_hour + 2 * HOUR_MS),
    )
}

type Hour = (Option<String>, bool, Option<f64>, Option<f64>, Option<f64>);

/// `(sensor, hour index) -> (channel_qc, valid, nowcast, channel_a, channel_b)`.
async fn rollups(cloud: &Cloud, first_hour: i64) -> BTreeMap<(String, i64), Hour> {
    let rows = cloud
        .db
        .client()
        .await
        .query(
            "SELECT sensor_id, ((extract(epoch FROM hour) * 1000)::int8 - $1) / 3600000,
                    channel_qc, valid, nowcast, channel_a, channel_b
             FROM readings_hourly WHERE device_id = $2 AND pollutant = 'pm25'",
            &[&first_hour, &DEV],
        )
        .await
        .expect("read rollups");
    rows.iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)),
            )
        })
        .collect()
}

#[tokio::test]
async fn disagreeing_hours_are_invalid_and_a_degrading_sensor_is_reported() {
    let env = [
        ("AERIS_ROLLUPS__EVERY", "1s".to_owned()),
        ("AERIS_ROLLUPS__DEGRADING_RATIO", "0.3".to_owned()),
    ];
    let cloud = Cloud::start_with(false, &env).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let first_hour = aeris_wire::now_ms().div_euclid(HOUR_MS) * HOUR_MS - 3 * HOUR_MS;
    // Newest hour first (a backlog drained newest first), all sensors.
    let mut seq = 1u64;
    for h in (0..3).rev() {
        for sensor in SENSORS {
            let rs = hour_readings(sensor, first_hour, h);
            let b = Batch {
                device: DEV.into(),
                first_seq: seq,
                readings: rs.clone(),
            };
            seq += rs.len() as u64;
            dev.send(&b).await;
        }
    }
    let last_seq = seq - 1;
    assert!(
        dev.wait_acked(last_seq, Duration::from_secs(60)).await,
        "{}",
        cloud.logs()
    );
    dev.send_status(&status(DEV, last_seq, 0)).await;

    let start = std::time::Instant::now();
    let got = loop {
        let got = rollups(&cloud, first_hour).await;
        let pending = cloud.gateway.metric("aeris_gateway_rollup_pending_hours");
        if got.len() == 15 && pending == 0.0 && got.values().all(|h| h.0.is_some()) {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{got:?}\n{}",
            cloud.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for sensor in SENSORS {
        let (checks, nowcast) = expected(sensor, first_hour);
        for (h, (qc, valid)) in checks.iter().enumerate() {
            let row = &got[&(sensor.to_owned(), h as i64)];
            assert_eq!(row.0.as_deref(), Some(*qc), "{sensor} hour {h}: {row:?}");
            assert_eq!(row.1, *valid, "{sensor} hour {h} valid: {row:?}");
        }
        let last = &got[&(sensor.to_owned(), 2)];
        assert_eq!(last.2, nowcast, "{sensor} NowCast: {last:?}");
    }
    // The cases the expectation must cover, so the test can fail.
    let qc = |s: &str, h: i64| got[&(s.to_owned(), h)].0.clone().unwrap_or_default();
    assert!((0..3).all(|h| qc("stuck", h) == "disagree"));
    assert_eq!(
        got[&("stuck".to_owned(), 2)].2,
        None,
        "no valid hour: no NowCast"
    );
    assert_eq!(
        [qc("drift", 0), qc("drift", 1), qc("drift", 2)],
        ["ok", "ok", "disagree"]
    );
    assert!(
        got[&("drift".to_owned(), 2)].2.is_some(),
        "two of three hours valid"
    );
    assert!((0..3).all(|h| qc("split", h) == "ok" && qc("agree", h) == "ok"));
    assert_eq!(qc("one", 1), "one_channel");
    assert!(
        got[&("one".to_owned(), 1)].1,
        "a one-channel hour stays valid"
    );
    let stuck0 = &got[&("stuck".to_owned(), 0)];
    assert_eq!(stuck0.3, Some(0.0), "channel A's mean");

    // Metric: per sensor, the share of judged hours that disagreed.
    let ratio = |s: &str| {
        let sample = format!(
            "aeris_gateway_sensor_channel_disagreement_ratio{{device=\"{DEV}\",sensor=\"{s}\",pollutant=\"pm25\"}}"
        );
        cloud.gateway.metric(&sample)
    };
    let start = std::time::Instant::now();
    while ratio("stuck") != 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            cloud.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!((ratio("drift") - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(ratio("agree"), 0.0);
    assert_eq!(ratio("one"), 0.0);
    assert_eq!(cloud.gateway.metric("aeris_gateway_sensors_degrading"), 2.0);

    // /api/devices: the device's sensors, degrading above 0.3.
    let start = std::time::Instant::now();
    let device = loop {
        let list = aeris_tests::http::get_json(cloud.gateway.api_port, "/api/devices");
        let found = list
            .as_array()
            .and_then(|l| l.iter().find(|d| d["device"] == DEV))
            .cloned();
        if let Some(d) = found {
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{list}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let sensors: BTreeMap<String, serde_json::Value> = device["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["sensor"].as_str().unwrap_or_default().to_owned(),
                c.clone(),
            )
        })
        .collect();
    assert_eq!(sensors.len(), 5, "{device}");
    assert_eq!(sensors["stuck"]["degrading"], true);
    assert_eq!(sensors["drift"]["degrading"], true);
    assert_eq!(sensors["agree"]["degrading"], false);
    assert_eq!(sensors["one"]["judged_hours"], 2);
    assert_eq!(sensors["one"]["one_channel_hours"], 1);
    assert_eq!(sensors["stuck"]["disagree_hours"], 3);

    // Late data: channel B of `one`'s hour 1 arrives after the hour was
    // rolled up, at 100 µg/m³ (A about 31: 105 % apart). The hour is
    // judged again (disagree, invalid), and hour 2, recomputed for its
    // NowCast only, keeps its stored check.
    let late: Vec<Reading> = (0..60)
        .map(|m| {
            let ts = first_hour + HOUR_MS + m * 60_000 + 15_000;
            reading("one", ts, &[("pm25_b", 100.0), ("pm25", 100.0)])
        })
        .collect();
    let n = late.len() as u64;
    dev.send(&Batch {
        device: DEV.into(),
        first_seq: last_seq + 1,
        readings: late,
    })
    .await;
    assert!(dev.wait_acked(last_seq + n, Duration::from_secs(30)).await);
    let start = std::time::Instant::now();
    loop {
        let got = rollups(&cloud, first_hour).await;
        let h1 = &got[&("one".to_owned(), 1)];
        if h1.0.as_deref() == Some("disagree") {
            assert!(!h1.1, "a disagreeing hour is invalid: {h1:?}");
            assert_eq!(h1.4, Some(100.0), "channel B's late mean");
            let h2 = &got[&("one".to_owned(), 2)];
            assert_eq!(h2.0.as_deref(), Some("ok"), "stored check kept: {h2:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{h1:?}\n{}",
            cloud.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
