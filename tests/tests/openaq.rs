//! The OpenAQ v3-style endpoints and the AQCSV export against a running
//! gateway: they return the numbers of the hourly rollups
//! (`readings_hourly`, read here straight from the database), coverage
//! counts of an incomplete hour, days by the 18-of-24 rule, pagination,
//! and 400 with a message for bad parameters. The export is parsed back
//! and compared with the rollups row by row, through the API and the
//! command.

use std::collections::BTreeMap;
use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::FakeDevice;
use aeris_tests::http::{get, get_json};
use aeris_tests::now_ms;
use aeris_tests::process::binary;
use aeris_wire::aqi::hourly::{DAY_MS, HOUR_MS};
use aeris_wire::aqi::PM25;
use aeris_wire::units::Reference;
use aeris_wire::{Batch, Reading, Value};
use serde_json::Value as Json;

const DEV: &str = "oaq-1";
const S1: (&str, f64, f64) = ("s1", 47.376_887, 8.541_694);
const S2: (&str, f64, f64) = ("s2", 47.4, 8.6);
/// Day 1: hours 0..20, hour 7 with 3 of its 6 readings (incomplete), so
/// 19 valid hours (a valid day). Day 2: hours 0..5 (not a valid day).
const DAY1_HOURS: i64 = 20;
const INCOMPLETE_HOUR: i64 = 7;
const DAY2_HOURS: i64 = 5;

fn pm25(h: i64, m: i64) -> f64 {
    5.0 + h as f64 + m as f64 * 0.05
}

fn o3_ugm3(h: i64) -> f64 {
    Reference::default()
        .ugm3_from_ppb("o3", 30.0 + h as f64)
        .unwrap_or(0.0)
}

/// Readings every 10 minutes (the gateway expects 6 an hour).
fn readings(day1: i64) -> Vec<Reading> {
    let mut out = Vec::new();
    let hours = (0..DAY1_HOURS).chain(24..24 + DAY2_HOURS);
    for h in hours {
        let n = if h == INCOMPLETE_HOUR { 3 } else { 6 };
        for k in 0..n {
            let m = k * 10;
            out.push(Reading {
                sensor: S1.0.into(),
                ts_ms: day1 + h * HOUR_MS + m * 60_000,
                lat: S1.1,
                lon: S1.2,
                flags: 0,
                values: vec![
                    Value {
                        quantity: "pm25".into(),
                        value: pm25(h, m),
                    },
                    Value {
                        quantity: "o3".into(),
                        value: o3_ugm3(h),
                    },
                ],
            });
        }
    }
    for h in 0..2 {
        for k in 0..6 {
            out.push(Reading {
                sensor: S2.0.into(),
                ts_ms: day1 + h * HOUR_MS + k * 600_000,
                lat: S2.1,
                lon: S2.2,
                flags: 0,
                values: vec![Value {
                    quantity: "pm25".into(),
                    value: 12.0,
                }],
            });
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Row {
    mean: f64,
    min: f64,
    max: f64,
    count: i32,
    expected: i32,
    valid: bool,
}

/// `(sensor, pollutant, hour_ms) -> row`, from the database.
async fn rollups(cloud: &Cloud) -> BTreeMap<(String, String, i64), Row> {
    let rows = cloud
        .db
        .client()
        .await
        .query(
            "SELECT sensor_id, pollutant, (extract(epoch FROM hour) * 1000)::int8,
                    mean, min, max, count, expected, valid
             FROM readings_hourly WHERE device_id = $1",
            &[&DEV],
        )
        .await
        .expect("read rollups");
    rows.iter()
        .map(|r| {
            let row = Row {
                mean: r.get(3),
                min: r.get(4),
                max: r.get(5),
                count: r.get(6),
                expected: r.get(7),
                valid: r.get(8),
            };
            ((r.get(0), r.get(1), r.get(2)), row)
        })
        .collect()
}

async fn started() -> (Cloud, i64, BTreeMap<(String, String, i64), Row>) {
    let env = [
        ("AERIS_ROLLUPS__EVERY", "1s".to_owned()),
        ("AERIS_ROLLUPS__SAMPLE_INTERVAL", "10m".to_owned()),
        ("AERIS_RETENTION__READINGS", "forever".to_owned()),
    ];
    let cloud = Cloud::start_with(false, &env).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let day1 = now_ms().div_euclid(DAY_MS) * DAY_MS - 3 * DAY_MS;
    let rs = readings(day1);
    let total = rs.len() as u64;
    for (i, chunk) in rs.chunks(50).enumerate() {
        let batch = Batch {
            device: DEV.into(),
            first_seq: 1 + 50 * i as u64,
            readings: chunk.to_vec(),
        };
        dev.send(&batch).await;
    }
    assert!(
        dev.wait_acked(total, Duration::from_secs(30)).await,
        "{}",
        cloud.logs()
    );
    // Day 1: 20 hours × 2 pollutants, day 2: 5 × 2; s2: 2 hours.
    let want = (DAY1_HOURS + DAY2_HOURS) as usize * 2 + 2;
    let start = std::time::Instant::now();
    loop {
        let got = rollups(&cloud).await;
        if got.len() == want {
            return (cloud, day1, got);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} of {want} rollups\n{}",
            got.len(),
            cloud.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `(status, error message)` of a request that must fail.
fn refused(port: u16, path: &str) -> (u16, String) {
    let (status, body) = get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let v: Json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v["error"].as_str().unwrap_or_default().to_owned())
}

fn utc(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openaq_endpoints_return_the_rollups_with_coverage_days_and_pages() {
    let (cloud, day1, stored) = started().await;
    let port = cloud.gateway.api_port;

    let all = get_json(port, "/v3/locations");
    assert_eq!(all["meta"]["found"], 2, "{all}");
    let locs = all["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(locs.len(), 2, "{all}");
    let l1 = &locs[0];
    assert_eq!(l1["name"], format!("{DEV}/s1"), "{all}");
    assert_eq!(l1["coordinates"]["latitude"], S1.1, "{all}");
    assert_eq!(l1["coordinates"]["longitude"], S1.2, "{all}");
    let mut params: Vec<&str> = l1["sensors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["parameter"]["name"].as_str())
        .collect();
    params.sort_unstable();
    assert_eq!(params, ["o3", "pm25"], "{all}");
    assert_eq!(l1["datetimeFirst"]["utc"], utc(day1), "{all}");
    // Pages, and ids that stay what they were.
    let second = get_json(port, "/v3/locations?limit=1&page=2");
    assert_eq!(second["meta"]["page"], 2);
    assert_eq!(second["meta"]["limit"], 1);
    assert_eq!(second["meta"]["found"], 2);
    assert_eq!(second["results"][0]["id"], locs[1]["id"], "{second}");
    assert_eq!(get_json(port, "/v3/locations")["results"], all["results"]);
    let one = get_json(port, &format!("/v3/locations/{}", l1["id"]));
    assert_eq!(one["results"][0]["name"], l1["name"]);

    let pm = l1["sensors"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["parameter"]["name"] == "pm25")
        .map(|s| s["id"].clone())
        .expect("pm25 sensor");
    let sensor = get_json(port, &format!("/v3/sensors/{pm}"));
    assert_eq!(sensor["results"][0]["parameter"]["units"], "µg/m³");
    assert_eq!(sensor["results"][0]["datetimeFirst"]["utc"], utc(day1));

    // Hours: every stored hour of the two days, with its numbers.
    let range = format!("datetime_from={}&datetime_to={}", day1, day1 + 2 * DAY_MS);
    let hours = get_json(port, &format!("/v3/sensors/{pm}/hours?{range}&limit=1000"));
    let mine: Vec<(&i64, &Row)> = stored
        .iter()
        .filter(|((s, p, _), _)| s == "s1" && p == "pm25")
        .map(|((_, _, h), r)| (h, r))
        .collect();
    assert_eq!(hours["meta"]["found"], mine.len(), "{hours}");
    let results = hours["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), mine.len());
    for (got, (hour, row)) in results.iter().zip(&mine) {
        assert_eq!(got["period"]["datetimeFrom"]["utc"], utc(**hour), "{got}");
        assert_eq!(got["period"]["datetimeTo"]["utc"], utc(**hour + HOUR_MS));
        assert_eq!(got["value"], row.mean, "{got}");
        assert_eq!(got["summary"]["min"], row.min);
        assert_eq!(got["summary"]["max"], row.max);
        assert_eq!(got["coverage"]["expectedCount"], row.expected);
        assert_eq!(got["coverage"]["observedCount"], row.count);
        assert_eq!(got["flagInfo"]["hasFlags"], !row.valid);
    }
    let incomplete = &results[INCOMPLETE_HOUR as usize];
    assert_eq!(incomplete["coverage"]["expectedCount"], 6, "{incomplete}");
    assert_eq!(incomplete["coverage"]["observedCount"], 3, "{incomplete}");
    assert_eq!(incomplete["coverage"]["percentComplete"], 50.0);
    assert_eq!(incomplete["coverage"]["observedInterval"], "00:30:00");
    assert_eq!(incomplete["flagInfo"]["hasFlags"], true);
    // Page 3 of 10: the last 5 hours.
    let page3 = get_json(
        port,
        &format!("/v3/sensors/{pm}/hours?{range}&limit=10&page=3"),
    );
    assert_eq!(page3["meta"]["found"], 25);
    assert_eq!(page3["results"].as_array().map(Vec::len), Some(5));
    assert_eq!(page3["results"][0], results[20]);

    // Days: the mean of the valid hours; 18 of 24 needed.
    let days = get_json(port, &format!("/v3/sensors/{pm}/days?{range}"));
    assert_eq!(days["meta"]["found"], 2, "{days}");
    for (d, hours, valid) in [(0, DAY1_HOURS - 1, true), (1, DAY2_HOURS, false)] {
        let day = &days["results"][d];
        let start = day1 + d as i64 * DAY_MS;
        let means: Vec<f64> = mine
            .iter()
            .filter(|(h, r)| **h >= start && **h < start + DAY_MS && r.valid)
            .map(|(_, r)| r.mean)
            .collect();
        let mean = means.iter().sum::<f64>() / means.len() as f64;
        assert_eq!(means.len() as i64, hours);
        let value = day["value"].as_f64().unwrap_or(f64::NAN);
        assert!((value - mean).abs() < 1e-9, "{day} vs {mean}");
        assert_eq!(day["coverage"]["expectedCount"], 24, "{day}");
        assert_eq!(day["coverage"]["observedCount"], hours, "{day}");
        assert_eq!(day["flagInfo"]["hasFlags"], !valid, "{day}");
        assert_eq!(day["period"]["datetimeFrom"]["utc"], utc(start));
        let aqi = valid.then(|| PM25.index(mean)).flatten();
        assert_eq!(day["aeris"]["aqi"], serde_json::json!(aqi), "{day}");
    }

    // Raw measurements of the first hour.
    let raw = get_json(
        port,
        &format!(
            "/v3/sensors/{pm}/measurements?datetime_from={day1}&datetime_to={}",
            day1 + HOUR_MS
        ),
    );
    let values: Vec<f64> = raw["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["value"].as_f64())
        .collect();
    assert_eq!(values.len(), 6, "{raw}");
    for (k, v) in values.iter().enumerate() {
        assert!((v - pm25(0, k as i64 * 10)).abs() < 1e-6, "{raw}");
    }

    // Bad parameters: 400 with a message naming what is wrong.
    let far = day1 + 400 * DAY_MS;
    for (path, says) in [
        (format!("/v3/sensors/{pm}/hours?limit=0"), "limit"),
        (format!("/v3/sensors/{pm}/hours?limit=1001"), "limit"),
        (format!("/v3/sensors/{pm}/hours?page=0"), "page"),
        (
            format!("/v3/sensors/{pm}/hours?datetime_from=yesterday"),
            "bad time",
        ),
        (
            format!(
                "/v3/sensors/{pm}/hours?datetime_from={}&datetime_to={day1}",
                day1 + 1
            ),
            "datetime_from",
        ),
        (
            format!("/v3/sensors/{pm}/days?datetime_from={day1}&datetime_to={far}"),
            "366 days",
        ),
        ("/v3/sensors/abc/hours".to_owned(), "integer"),
        ("/v3/locations/1.5".to_owned(), "integer"),
    ] {
        let (status, message) = refused(port, &path);
        assert_eq!(status, 400, "{path}: {message}");
        assert!(message.contains(says), "{path}: {message}");
    }
    assert_eq!(refused(port, "/v3/sensors/999999/hours").0, 404);
    assert_eq!(refused(port, "/v3/locations/999999").0, 404);
}

/// `(site, parameter, datetime) -> record fields` of an AQCSV text.
fn parse_aqcsv(text: &str) -> BTreeMap<(String, String, String), Vec<String>> {
    text.lines()
        .map(|l| {
            let f: Vec<String> = l.split(',').map(str::to_owned).collect();
            assert_eq!(f.len(), 20, "{l}");
            ((f[0].clone(), f[4].clone(), f[3].clone()), f)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aqcsv_export_loads_back_as_the_valid_rollups() {
    let (cloud, day1, stored) = started().await;
    let port = cloud.gateway.api_port;
    let locations = get_json(port, "/v3/locations");
    let site_of: BTreeMap<String, String> = locations["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let sensor = l["aeris"]["sensor"].as_str().unwrap_or_default().to_owned();
            (sensor, format!("000{:09}", l["id"].as_i64().unwrap_or(-1)))
        })
        .collect();
    let range = format!("from={day1}&to={}", day1 + 2 * DAY_MS);
    let (status, body) = get(port, &format!("/api/export/aqcsv?{range}")).unwrap();
    assert_eq!(status, 200, "{body}");
    let records = parse_aqcsv(&body);
    let valid: Vec<_> = stored.iter().filter(|(_, r)| r.valid).collect();
    assert_eq!(records.len(), valid.len(), "{body}");
    let reference = Reference::default();
    for ((sensor, pollutant, hour), row) in &valid {
        let (code, unit, value) = match pollutant.as_str() {
            "pm25" => ("88101", "105", row.mean),
            "o3" => (
                "44201",
                "007",
                reference.ppb_from_ugm3("o3", row.mean).unwrap_or_default() / 1000.0,
            ),
            other => panic!("unexpected pollutant {other}"),
        };
        let t = utc(*hour);
        let datetime = format!(
            "{}{}{}T{}{}+0000",
            &t[0..4],
            &t[5..7],
            &t[8..10],
            &t[11..13],
            &t[14..16]
        );
        let key = (site_of[sensor].clone(), code.to_owned(), datetime.clone());
        let f = records
            .get(&key)
            .unwrap_or_else(|| panic!("no record {key:?} in\n{body}"));
        let got: f64 = f[7].parse().unwrap_or(f64::NAN);
        assert!((got - value).abs() < 1e-6, "{f:?} vs {value}");
        assert_eq!(
            [&f[1], &f[2], &f[5], &f[6], &f[8], &f[9], &f[10], &f[13]],
            ["0", "", "60", "", unit, "0", "1", "WGS84"],
            "{f:?}"
        );
        let (lat, lon) = if sensor == "s1" {
            (S1.1, S1.2)
        } else {
            (S2.1, S2.2)
        };
        assert_eq!(f[11], format!("{lat:.6}"));
        assert_eq!(f[12], format!("{lon:.6}"));
    }
    // The incomplete hour is not exported.
    let hour7 = utc(day1 + INCOMPLETE_HOUR * HOUR_MS).replace(['-', ':'], "");
    assert!(!body.contains(&format!("{}+0000", &hour7[..13])), "{body}");

    // The command writes the same records.
    let out = cloud.dir.path().join("export.aqcsv");
    let run = std::process::Command::new(binary("aeris-gateway"))
        .args([
            "export",
            "aqcsv",
            "--from",
            &utc(day1),
            "--to",
            &utc(day1 + 2 * DAY_MS),
        ])
        .arg("--out")
        .arg(&out)
        .env("AERIS_DATABASE_URL", &cloud.db.url)
        .output()
        .expect("run aeris-gateway");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file = std::fs::read_to_string(&out).unwrap();
    assert_eq!(parse_aqcsv(&file), records);

    for (path, says) in [
        (
            format!("/api/export/aqcsv?from={}&to={day1}", day1 + 1),
            "after",
        ),
        (
            format!("/api/export/aqcsv?from={day1}&to={}", day1 + 32 * DAY_MS),
            "31 days",
        ),
        ("/api/export/aqcsv?from=soon".to_owned(), "bad time"),
    ] {
        let (status, message) = refused(port, &path);
        assert_eq!(status, 400, "{path}: {message}");
        assert!(message.contains(says), "{path}: {message}");
    }
}
