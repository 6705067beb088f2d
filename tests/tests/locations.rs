//! A location as the field knows it (`aeris-gateway locations set`): its
//! AQCSV site code in the export, and its local standard time bounding its
//! days in `/v3/sensors/{id}/days` (EPA's daily values are by local
//! standard time; a day in Beijing runs from 16:00 UTC).

use std::process::Command;
use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::FakeDevice;
use aeris_tests::http::{get, get_json};
use aeris_tests::now_ms;
use aeris_tests::process::binary;
use aeris_wire::aqi::hourly::{DAY_MS, HOUR_MS};
use aeris_wire::{Batch, Reading, Value};
use serde_json::Value as Json;

const DEV: &str = "loc-1";
const SITE: &str = "840060371103";

/// s1 (latitude 39.9): 48 hours from `day1` 00:00 UTC, six readings an
/// hour, hour `h`'s value `h`; s2 (latitude 40.0): two hours.
fn readings(day1: i64) -> Vec<Reading> {
    let reading = |sensor: &str, h: i64, k: i64, value: f64| Reading {
        sensor: sensor.into(),
        ts_ms: day1 + h * HOUR_MS + k * 600_000,
        lat: if sensor == "s1" { 39.9 } else { 40.0 },
        lon: 116.4,
        flags: 0,
        values: vec![Value {
            quantity: "pm25".into(),
            value,
        }],
    };
    let mut out = Vec::new();
    for h in 0..48 {
        for k in 0..6 {
            out.push(reading("s1", h, k, h as f64));
        }
    }
    for h in 0..2 {
        for k in 0..6 {
            out.push(reading("s2", h, k, 12.0));
        }
    }
    out
}

fn gateway(cloud: &Cloud, args: &[&str]) -> std::process::Output {
    Command::new(binary("aeris-gateway"))
        .args(args)
        .env("AERIS_DATABASE_URL", &cloud.db.url)
        .output()
        .expect("run aeris-gateway")
}

/// `aeris-gateway locations set` of the device's s1 with `args`.
fn set_s1(cloud: &Cloud, args: &[&str]) -> std::process::Output {
    let mut all = vec!["locations", "set", "--device", DEV, "--sensor", "s1"];
    all.extend_from_slice(args);
    gateway(cloud, &all)
}

fn utc(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `(mean, valid, valid hours, local start)` of each day.
fn days(port: u16, sensor: &Json, from: i64) -> Vec<(f64, bool, u64, String)> {
    let path = format!(
        "/v3/sensors/{sensor}/days?datetime_from={from}&datetime_to={}",
        from + 3 * DAY_MS
    );
    let body = get_json(port, &path);
    body["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["value"].as_f64().unwrap_or(f64::NAN),
                d["aeris"]["valid"].as_bool().unwrap_or(false),
                d["aeris"]["validHours"].as_u64().unwrap_or(0),
                d["period"]["datetimeFrom"]["local"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// The site field of every AQCSV record whose latitude (field 12) is
/// `sensor_lat`: it tells s1 from s2.
fn sites(port: u16, day1: i64, sensor_lat: &str) -> Vec<String> {
    let path = format!("/api/export/aqcsv?from={day1}&to={}", day1 + 2 * DAY_MS);
    let (status, body) = get(port, &path).expect("export");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(11) == Some(&sensor_lat))
        .map(|f| f[0].to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locations_site_code_and_local_days_reach_the_export_and_the_api() {
    let env = [
        ("AERIS_ROLLUPS__EVERY", "1s".to_owned()),
        ("AERIS_ROLLUPS__SAMPLE_INTERVAL", "10m".to_owned()),
        ("AERIS_RETENTION__READINGS", "forever".to_owned()),
    ];
    let cloud = Cloud::start_with(false, &env).await;
    let port = cloud.gateway.api_port;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let day1 = now_ms().div_euclid(DAY_MS) * DAY_MS - 4 * DAY_MS;
    let rs = readings(day1);
    for (i, chunk) in rs.chunks(50).enumerate() {
        dev.send(&Batch {
            device: DEV.into(),
            first_seq: 1 + 50 * i as u64,
            readings: chunk.to_vec(),
        })
        .await;
    }
    assert!(
        dev.wait_acked(rs.len() as u64, Duration::from_secs(30))
            .await,
        "{}",
        cloud.logs()
    );
    let db = cloud.db.client().await;
    let start = std::time::Instant::now();
    while db
        .query_one("SELECT count(*) FROM readings_hourly", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 50
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            cloud.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let locations = get_json(port, "/v3/locations");
    let l1 = &locations["results"][0];
    assert_eq!(l1["name"], format!("{DEV}/s1"), "{locations}");
    assert_eq!(l1["timezone"], "UTC");
    let pm = l1["sensors"][0]["id"].clone();
    // UTC days: hours 0..=23 (mean 11.5) and 24..=47 (35.5), both whole.
    assert_eq!(
        days(port, &pm, day1),
        vec![
            (11.5, true, 24, utc(day1).replace('Z', "+00:00")),
            (35.5, true, 24, utc(day1 + DAY_MS).replace('Z', "+00:00")),
        ]
    );
    let s1_lat = "39.900000";
    assert!(sites(port, day1, s1_lat)
        .iter()
        .all(|s| s == &format!("000{:09}", l1["id"].as_i64().unwrap_or(-1))));

    // Refused with the reason, nothing changed.
    for (arg, value, says) in [
        ("--utc-offset", "+08:10", "multiple of 15"),
        ("--utc-offset", "8", "not a UTC offset"),
        ("--site", "060371103", "12 digits"),
    ] {
        let out = set_s1(&cloud, &[arg, value]);
        assert_eq!(out.status.code(), Some(2), "{arg} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{arg} {value}: {err}");
    }

    let out = set_s1(&cloud, &["--site", SITE, "--utc-offset", "+08:00"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(SITE) && said.contains("+08:00"), "{said}");

    let l1 = &get_json(port, "/v3/locations")["results"][0];
    assert_eq!(l1["timezone"], "Etc/GMT-8");
    assert_eq!(l1["aeris"]["site"], SITE);
    assert_eq!(l1["aeris"]["utcOffset"], "+08:00");
    // Beijing days run from 16:00 UTC: hours 0..=15 (16 hours, not a valid
    // day: mean of its hours 7.5), 16..=39 (mean 27.5), 40..=47 (43.5).
    let local_midnight = day1 - 8 * HOUR_MS;
    let local = |ms: i64| {
        let shifted = utc(ms + 8 * HOUR_MS);
        shifted.replace('Z', "+08:00")
    };
    assert_eq!(
        days(port, &pm, local_midnight),
        vec![
            (7.5, false, 16, local(local_midnight)),
            (27.5, true, 24, local(local_midnight + DAY_MS)),
            (43.5, false, 8, local(local_midnight + 2 * DAY_MS)),
        ]
    );
    assert!(local(local_midnight).ends_with("T00:00:00+08:00"));
    let s1_sites = sites(port, day1, s1_lat);
    assert_eq!(s1_sites.len(), 48);
    assert!(s1_sites.iter().all(|s| s == SITE), "{s1_sites:?}");
    // s2 keeps the default code.
    let s2_sites = sites(port, day1, "40.000000");
    assert_eq!(s2_sites.len(), 2, "{s2_sites:?}");
    assert!(
        s2_sites.iter().all(|s| s.starts_with("000")),
        "{s2_sites:?}"
    );

    let list = gateway(&cloud, &["locations", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success());
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(listed.contains(SITE), "{listed}");

    // Cleared: UTC days and the default code again.
    let out = set_s1(&cloud, &["--site", "none", "--utc-offset", "none"]);
    assert!(out.status.success());
    assert_eq!(days(port, &pm, day1).len(), 2);
    assert!(sites(port, day1, s1_lat)
        .iter()
        .all(|s| s.starts_with("000")));
    let audited: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'locations set' AND outcome = 'ok'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 2);
}
