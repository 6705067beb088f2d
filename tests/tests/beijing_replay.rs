//! Seven weeks of the Beijing US-embassy monitor's hourly PM2.5 (December
//! 2012 – January 2013: 134 missing hours, six days short of 18 hours,
//! concentrations up to 886 µg/m³, far above the top breakpoint) replayed
//! through the whole pipeline: sensor → Mosquitto → agent → Mosquitto →
//! gateway → PostGIS → hourly rollups. The cloud's hourly NowCast and its
//! AQI, hour by hour, and its daily mean and daily AQI as
//! `/v3/sensors/{id}/days` serves them, are compared with an independent
//! reference:
//! `tests/reference/epa_pm25.py`, written from EPA's documents in exact
//! rational arithmetic, sharing no code with `aeris_wire::aqi`.
//!
//! The file's times are Beijing local time (UTC+8). The replay stamps each
//! hour as if the station kept UTC and moves the whole series by whole days
//! to end yesterday, so the cloud's UTC days are the station's local days
//! (the days the daily AQI is defined on).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use aeris_tests::http::get_json;
use aeris_tests::sensors::{Publisher, SensorReading};
use aeris_tests::stack::Stack;

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/beijing_pm25_hourly.csv"
);
const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/epa_pm25.py");
const FIRST_DAY: (i64, i64, i64) = (2012, 12, 15);
const DAYS: i64 = 48;
const SENSOR: &str = "us-embassy-beijing";
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Per hour: (y, m, d, h, value, NowCast, AQI), decimals as strings.
type RefHour = (
    i64,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<u32>,
);
/// Per day: (y, m, d, hours with data, mean, AQI).
type RefDay = (i64, i64, i64, u32, Option<String>, Option<u32>);

/// The reference's output.
struct Reference {
    hours: Vec<RefHour>,
    days: Vec<RefDay>,
}

fn reference() -> Reference {
    let (y, m, d) = FIRST_DAY;
    let out = Command::new("python3")
        .args([
            REFERENCE,
            DATA,
            &format!("{y:04}-{m:02}-{d:02}"),
            &DAYS.to_string(),
        ])
        .output()
        .expect("run python3 tests/reference/epa_pm25.py");
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("reference output is JSON");
    Reference {
        hours: serde_json::from_value(json["hours"].take()).expect("reference hours"),
        days: serde_json::from_value(json["days"].take()).expect("reference days"),
    }
}

/// Whole days added to the file's times so the replay ends yesterday (UTC).
fn shift_ms() -> i64 {
    let today = aeris_tests::now_ms().div_euclid(DAY_MS);
    let (y, m, d) = FIRST_DAY;
    (today - 1 - DAYS - days_from_civil(y, m, d)) * DAY_MS
}

fn hour_ms(y: i64, m: i64, d: i64, h: i64) -> i64 {
    days_from_civil(y, m, d) * DAY_MS + h * HOUR_MS + shift_ms()
}

/// One decimal as tenths, so comparisons are exact.
fn tenths(s: &str) -> i64 {
    let v: f64 = s.parse().expect("a decimal");
    (v * 10.0).round() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beijing_replay_nowcast_and_aqi_match_an_independent_epa_reference() {
    let reference = reference();
    assert_eq!(reference.hours.len() as i64, DAYS * 24);
    let stack = Stack::start_with_gateway_env(
        // The replay reaches 49 days into the past; the default keeps 7.
        "[ingest]\nretention = \"60d\"\n",
        &[
            ("AERIS_ROLLUPS__SAMPLE_INTERVAL", "1h".to_owned()),
            ("AERIS_ROLLUPS__EVERY", "1s".to_owned()),
        ],
    )
    .await;
    stack.wait_edge_subscribed(1).await;

    // One reading per hour with a value; the file's NA hours send nothing.
    let published: Vec<SensorReading> = reference
        .hours
        .iter()
        .filter_map(|(y, m, d, h, value, _, _)| {
            Some(SensorReading {
                sensor: SENSOR.into(),
                ts_ms: hour_ms(*y, *m, *d, *h),
                lat: 39.954,
                lon: 116.468,
                pm25: value.as_deref()?.parse().ok()?,
            })
        })
        .collect();
    let sensors = Publisher::connect(stack.local.port).await;
    for r in &published {
        sensors.publish(r).await;
    }
    stack
        .wait_rows(published.len() as i64, Duration::from_secs(120))
        .await;
    stack.assert_exactly_once(&published).await;

    // The rollups catch up: one row per hour with a reading, nothing dirty.
    let db = stack.db.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rows: i64 = db
            .query_one(
                "SELECT count(*) FROM readings_hourly WHERE pollutant = 'pm25'",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        let dirty: i64 = db
            .query_one("SELECT count(*) FROM readings_hourly_dirty", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(1);
        if rows == published.len() as i64 && dirty == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollups: {rows} of {} hours, {dirty} dirty\n{}",
            published.len(),
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let cloud: BTreeMap<i64, (f64, Option<f64>, Option<i32>, bool)> = db
        .query(
            "SELECT (extract(epoch FROM hour) * 1000)::int8, mean, nowcast, aqi, valid
             FROM readings_hourly WHERE sensor_id = $1 AND pollutant = 'pm25'",
            &[&SENSOR],
        )
        .await
        .expect("query readings_hourly")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();

    let mut compared = (0, 0, 0); // NowCasts, withheld, hazardous
    let mut mismatches = Vec::new();
    for (y, m, d, h, value, nowcast, aqi) in &reference.hours {
        let at = hour_ms(*y, *m, *d, *h);
        let Some(value) = value else {
            assert!(
                !cloud.contains_key(&at),
                "{y}-{m:02}-{d:02} {h:02}h has no reading but a rollup"
            );
            continue;
        };
        let (mean, cloud_nowcast, cloud_aqi, valid) = cloud
            .get(&at)
            .unwrap_or_else(|| panic!("{y}-{m:02}-{d:02} {h:02}h: no rollup"));
        assert!(valid, "one reading in an hour expecting one is complete");
        assert_eq!(tenths(value), (mean * 10.0).round() as i64, "hourly mean");
        let want = (nowcast.as_deref().map(tenths), aqi.map(|a| a as i32));
        let got = (cloud_nowcast.map(|c| (c * 10.0).round() as i64), *cloud_aqi);
        if want != got {
            mismatches.push(format!(
                "{y}-{m:02}-{d:02} {h:02}h: reference {want:?}, cloud {got:?} (tenths, AQI)"
            ));
        }
        match want.1 {
            None => compared.1 += 1,
            Some(a) if a > 300 => compared.2 += 1,
            Some(_) => {}
        }
        compared.0 += 1;
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} hours differ:\n{}",
        mismatches.len(),
        compared.0,
        mismatches.join("\n")
    );
    // The slice exercises what it is meant to: withheld NowCasts after
    // gaps and the Hazardous rows.
    assert!(
        compared.1 >= 2,
        "withheld NowCasts compared: {}",
        compared.1
    );
    assert!(
        compared.2 >= 100,
        "Hazardous hours compared: {}",
        compared.2
    );

    // The cloud's daily AQI, as the API serves it (`/v3/sensors/{id}/days`).
    let port = stack.api_port;
    let locations = get_json(port, "/v3/locations?limit=1000");
    let sensor_id = locations["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["name"].as_str().is_some_and(|n| n.ends_with(SENSOR)))
        .flat_map(|l| l["sensors"].as_array().cloned().unwrap_or_default())
        .find(|s| s["parameter"]["name"] == "pm25")
        .map(|s| s["id"].clone())
        .unwrap_or_else(|| panic!("no pm25 sensor for {SENSOR}"));
    let (y, m, d) = FIRST_DAY;
    let from = hour_ms(y, m, d, 0);
    let days = get_json(
        port,
        &format!(
            "/v3/sensors/{sensor_id}/days?datetime_from={from}&datetime_to={}&limit=100",
            from + DAYS * DAY_MS
        ),
    );
    let by_start: BTreeMap<String, &serde_json::Value> = days["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d["period"]["datetimeFrom"]["utc"].as_str()?.to_owned(), d)))
        .collect();
    let served: BTreeMap<i64, &serde_json::Value> = by_start
        .iter()
        .filter_map(|(k, d)| Some((utc_ms(k)?, *d)))
        .collect();
    let (mut invalid_days, mut empty_days) = (0, 0);
    for (y, m, d, valid_hours, mean, aqi) in &reference.days {
        let start = hour_ms(*y, *m, *d, 0);
        let Some(day) = served.get(&start) else {
            // A day without any reading has no hours to average.
            assert_eq!(*valid_hours, 0, "{y}-{m:02}-{d:02}: not served");
            empty_days += 1;
            continue;
        };
        let cloud_mean = day["value"].as_f64().expect("a day's value");
        let want_mean: f64 = mean
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
        assert!(
            (cloud_mean - want_mean).abs() < 1e-5,
            "{y}-{m:02}-{d:02}: mean {cloud_mean}, reference {want_mean}"
        );
        assert_eq!(
            day["aeris"]["validHours"], *valid_hours,
            "{y}-{m:02}-{d:02}: {day}"
        );
        assert_eq!(
            day["aeris"]["aqi"].as_u64().map(|a| a as u32),
            *aqi,
            "{y}-{m:02}-{d:02} daily AQI: {day}"
        );
        if aqi.is_none() {
            invalid_days += 1;
        }
    }
    assert_eq!(
        served.len() + empty_days,
        reference.days.len(),
        "days served"
    );
    // Two days short of 18 hours, four without any reading.
    assert!(invalid_days >= 2, "days short of 18 hours: {invalid_days}");
    assert!(empty_days >= 2, "days without readings: {empty_days}");
}

/// Unix ms of an RFC 3339 UTC time as the API writes it
/// (`2013-01-01T00:00:00Z`).
fn utc_ms(s: &str) -> Option<i64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<f64>().ok());
    let (h, min) = (t.next()??, t.next()??);
    Some(days_from_civil(y, m, day) * DAY_MS + (h * 3600.0 + min * 60.0) as i64 * 1000)
}
