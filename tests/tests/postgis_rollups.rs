//! Hourly rollups (`readings_hourly`) against a fresh PostGIS database:
//! the statistics of each hour from the raw readings, the NowCast and AQI
//! from `aeris_wire::aqi` over the same hourly means, incomplete hours,
//! late data, replays, a rebuild, and a running gateway keeping them.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use aeris_sink::postgis::rollup::{Params, RollupDb};
use aeris_sink::{PostgisSink, Sink};
use aeris_tests::cloud::Cloud;
use aeris_tests::device::FakeDevice;
use aeris_tests::postgres::TestDb;
use aeris_tests::process::binary;
use aeris_wire::aqi::hourly::{hourly_means, Completeness, HourlyMean, Sample, HOUR_MS};
use aeris_wire::aqi::nowcast::{O3_NOWCAST, PM25_NOWCAST};
use aeris_wire::aqi::PM25;
use aeris_wire::units::Reference;
use aeris_wire::{Batch, Reading, Value};

/// 2024-03-01T00:00:00Z: the first hour of the tests' data.
const T0: i64 = 1_709_251_200_000;
const DEV: &str = "roll-1";
const SENSOR: &str = "s1";

/// One reading a minute from `T0 + hour h`, `n` of them, with PM2.5
/// varying within and across hours and O3 at `40 + h` ppb (as µg/m³).
fn readings(h: i64, n: i64) -> Vec<Reading> {
    let o3 = Reference::default().ugm3_from_ppb("o3", 40.0 + h as f64);
    (0..n)
        .map(|m| Reading {
            sensor: SENSOR.into(),
            ts_ms: T0 + h * HOUR_MS + m * 60_000,
            lat: 47.0,
            lon: 8.0,
            flags: 0,
            values: vec![
                Value {
                    quantity: "pm25".into(),
                    value: pm25(h, m),
                },
                Value {
                    quantity: "o3".into(),
                    value: o3.unwrap_or_default(),
                },
            ],
        })
        .collect()
}

/// Hours 0..8 high, then low: a NowCast with a real weight factor.
fn pm25(h: i64, m: i64) -> f64 {
    let base = if h < 8 { 60.0 + 3.0 * h as f64 } else { 12.0 };
    base + (m % 7) as f64 * 0.5
}

/// Batches of `readings` from `first_seq` on, 100 readings each.
fn batches(first_seq: u64, rs: Vec<Reading>) -> Vec<Batch> {
    rs.chunks(100)
        .scan(first_seq, |seq, chunk| {
            let b = Batch {
                device: DEV.into(),
                first_seq: *seq,
                readings: chunk.to_vec(),
            };
            *seq += chunk.len() as u64;
            Some(b)
        })
        .collect()
}

fn params() -> Params {
    Params {
        sample_interval_ms: 60_000,
        sensor_intervals_ms: Default::default(),
        reference: Reference::default(),
        rules: Completeness::default(),
        channels: Default::default(),
        max_marks: 5,
    }
}

/// Rounds until no mark is left; returns the rows written.
async fn recompute_all(db: &mut RollupDb) -> u64 {
    let mut rows = 0;
    for _ in 0..100 {
        let round = db.recompute(&params(), true).await.expect("recompute");
        rows += round.rows_written;
        if db.pending().await.expect("pending").hours == 0 {
            return rows;
        }
    }
    panic!("marks left after 100 rounds");
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    mean: f64,
    min: f64,
    max: f64,
    count: i32,
    expected: i32,
    completeness: f64,
    valid: bool,
    nowcast: Option<f64>,
    aqi: Option<i32>,
    averaging: Option<String>,
}

/// `(pollutant, hour since T0) -> row` of the test sensor.
async fn rollups(db: &TestDb) -> BTreeMap<(String, i64), Row> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT pollutant, ((extract(epoch FROM hour) * 1000)::int8 - $1) / 3600000,
                    mean, min, max, count, expected, completeness, valid, nowcast, aqi, aqi_averaging
             FROM readings_hourly WHERE device_id = $2 AND sensor_id = $3",
            &[&T0, &DEV, &SENSOR],
        )
        .await
        .expect("read rollups");
    rows.iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                Row {
                    mean: r.get(2),
                    min: r.get(3),
                    max: r.get(4),
                    count: r.get(5),
                    expected: r.get(6),
                    completeness: r.get(7),
                    valid: r.get(8),
                    nowcast: r.get(9),
                    aqi: r.get(10),
                    averaging: r.get(11),
                },
            )
        })
        .collect()
}

/// Hour `h`'s samples of pm25 from `rs`.
fn pm25_samples(rs: &[Reading]) -> Vec<Sample> {
    rs.iter()
        .map(|r| Sample {
            ts_ms: r.ts_ms,
            value: r.values[0].value,
        })
        .collect()
}

/// The hours' O3 means in ppm, from the readings' µg/m³.
fn o3_ppm_means(rs: &[Reading]) -> Vec<HourlyMean> {
    let r = Reference::default();
    let samples: Vec<Sample> = rs
        .iter()
        .map(|x| Sample {
            ts_ms: x.ts_ms,
            value: r.ppb_from_ugm3("o3", x.values[1].value).unwrap_or_default() / 1000.0,
        })
        .collect();
    hourly_means(&samples, 60_000, &Completeness::default())
}

/// 14 hours, hour 5 with 30 of its 60 readings (incomplete).
fn day() -> Vec<Reading> {
    (0..14)
        .flat_map(|h| readings(h, if h == 5 { 30 } else { 60 }))
        .collect()
}

#[tokio::test]
async fn rollups_hold_each_hours_statistics_and_the_nowcast_wire_computes() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let rs = day();
    sink.write(&batches(1, rs.clone())).await.unwrap();
    let mut roll = RollupDb::connect(&db.url).await.unwrap();
    assert_eq!(roll.pending().await.unwrap().hours, 14, "one mark per hour");
    recompute_all(&mut roll).await;
    let got = rollups(&db).await;
    assert_eq!(got.len(), 28, "14 hours of pm25 and o3: {got:?}");

    let means = hourly_means(&pm25_samples(&rs), 60_000, &Completeness::default());
    let o3 = o3_ppm_means(&rs);
    for h in 0..14 {
        let row = &got[&("pm25".to_owned(), h)];
        // Statistics straight from the hour's readings.
        let values: Vec<f64> = (0..if h == 5 { 30 } else { 60 })
            .map(|m| pm25(h, m))
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(
            (row.mean - mean).abs() < 1e-9,
            "hour {h}: {row:?} vs {mean}"
        );
        assert_eq!(
            row.min,
            values.iter().cloned().fold(f64::INFINITY, f64::min)
        );
        assert_eq!(
            row.max,
            values.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        );
        assert_eq!((row.count, row.expected), (values.len() as i32, 60));
        assert!((row.completeness - values.len() as f64 / 60.0).abs() < 1e-12);
        // Hour 5 has 50 %: below 75 %, incomplete.
        assert_eq!(row.valid, h != 5, "hour {h}");
        // NowCast and AQI as aeris_wire::aqi computes them from the means.
        let nowcast = PM25_NOWCAST.nowcast_at(&means, T0 + h * HOUR_MS);
        assert_eq!(row.nowcast, nowcast, "hour {h}");
        assert_eq!(
            row.aqi,
            nowcast.and_then(|c| PM25.index(c)).map(|i| i as i32)
        );
        assert_eq!(row.averaging.as_deref(), nowcast.map(|_| "nowcast"));
        let o3_row = &got[&("o3".to_owned(), h)];
        assert_eq!(
            o3_row.nowcast,
            O3_NOWCAST.nowcast_at(&o3, T0 + h * HOUR_MS),
            "o3 {h}"
        );
    }
    // The NowCast follows the drop after hour 7 with weights, not a plain mean.
    let nc = got[&("pm25".to_owned(), 9)].nowcast.unwrap();
    assert!(nc > 12.0 && nc < 40.0, "{nc}");
    // The first hour has no NowCast (1 of the last 3 hours).
    assert_eq!(got[&("pm25".to_owned(), 0)].nowcast, None);
}

#[tokio::test]
async fn late_data_updates_its_hour_and_the_nowcasts_after_it() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let mut roll = RollupDb::connect(&db.url).await.unwrap();
    // 20 hours; hour 3 holds only its first 10 minutes.
    let early: Vec<Reading> = (0..20)
        .flat_map(|h| readings(h, if h == 3 { 10 } else { 60 }))
        .collect();
    sink.write(&batches(1, early.clone())).await.unwrap();
    recompute_all(&mut roll).await;
    let before = rollups(&db).await;
    let key = |h: i64| ("pm25".to_owned(), h);
    assert_eq!((before[&key(3)].count, before[&key(3)].valid), (10, false));

    // The rest of hour 3 arrives late (a drained backlog, new seqs).
    let late: Vec<Reading> = readings(3, 60).split_off(10);
    sink.write(&batches(10_001, late.clone())).await.unwrap();
    assert_eq!(roll.pending().await.unwrap().hours, 1);
    recompute_all(&mut roll).await;
    let after = rollups(&db).await;
    assert_eq!((after[&key(3)].count, after[&key(3)].valid), (60, true));

    let all: Vec<Reading> = early.iter().chain(&late).cloned().collect();
    let rules = Completeness::default();
    let means_before = hourly_means(&pm25_samples(&early), 60_000, &rules);
    let means_after = hourly_means(&pm25_samples(&all), 60_000, &rules);
    let mut changed = Vec::new();
    for h in 0..20 {
        let hour = T0 + h * HOUR_MS;
        let (was, is) = (
            PM25_NOWCAST.nowcast_at(&means_before, hour),
            PM25_NOWCAST.nowcast_at(&means_after, hour),
        );
        assert_eq!(before[&key(h)].nowcast, was, "hour {h} before");
        assert_eq!(after[&key(h)].nowcast, is, "hour {h} after");
        if was != is {
            changed.push(h);
        }
    }
    // Hour 4 had 1 of its last 3 hours missing, now none: its NowCast moved,
    // as did others within hour 3's window; none outside it.
    assert!(changed.contains(&4), "{changed:?}");
    assert!(changed.iter().all(|h| (3..=14).contains(h)), "{changed:?}");
    for h in (0..3).chain(15..20) {
        assert_eq!(
            before[&key(h)],
            after[&key(h)],
            "hour {h} is outside the window"
        );
    }
}

#[tokio::test]
async fn a_replayed_batch_changes_no_count() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let mut roll = RollupDb::connect(&db.url).await.unwrap();
    let sent = batches(1, day());
    sink.write(&sent).await.unwrap();
    recompute_all(&mut roll).await;
    let before = rollups(&db).await;
    // The device sends it all again (its acks were lost).
    let out = sink.write(&sent).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (0, 14 * 60 - 30));
    assert_eq!(
        roll.pending().await.unwrap().hours,
        0,
        "nothing new, nothing marked"
    );
    // Even recomputed from scratch the counts are the stored readings'.
    roll.mark_range(T0, T0 + 14 * HOUR_MS, None).await.unwrap();
    assert_eq!(recompute_all(&mut roll).await, 0, "no row changed");
    assert_eq!(rollups(&db).await, before);
    assert_eq!(before[&("pm25".to_owned(), 0)].count, 60);
}

fn rebuild(db_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("aeris-gateway"))
        .args(["rollups", "rebuild"])
        .args(args)
        .env("AERIS_DATABASE_URL", db_url)
        .env("USER", "rollups-test")
        .output()
        .expect("run aeris-gateway")
}

#[tokio::test]
async fn rebuild_after_truncating_the_rollups_reproduces_them() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let mut roll = RollupDb::connect(&db.url).await.unwrap();
    sink.write(&batches(1, day())).await.unwrap();
    recompute_all(&mut roll).await;
    let before = rollups(&db).await;
    assert_eq!(before.len(), 28);
    let client = db.client().await;
    client
        .batch_execute("TRUNCATE readings_hourly")
        .await
        .unwrap();
    let out = rebuild(
        &db.url,
        &["--from", "2024-03-01", "--to", "2024-03-02T00:00:00Z"],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("14 sensor-hours marked"), "{text}");
    assert!(text.contains("14 sensor-hours recomputed"), "{text}");
    assert_eq!(rollups(&db).await, before);
    let audited: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'rollups rebuild'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    // Another device's range only: nothing of DEV is marked.
    let out = rebuild(
        &db.url,
        &[
            "--from",
            "2024-03-01",
            "--to",
            "2024-03-02",
            "--device",
            "other",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 sensor-hours marked"));
    let bad = rebuild(&db.url, &["--from", "2024-03-02", "--to", "2024-03-01"]);
    assert_eq!(bad.status.code(), Some(1));
}

#[tokio::test]
async fn a_running_gateway_keeps_the_rollups_and_counts_its_recomputes() {
    // The test data is from 2024: keep it from retention.
    let env = [
        ("AERIS_ROLLUPS__EVERY", "1s".to_owned()),
        ("AERIS_RETENTION__READINGS", "forever".to_owned()),
    ];
    let cloud = Cloud::start_with(false, &env).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let sent = batches(1, (0..3).flat_map(|h| readings(h, 60)).collect());
    for b in &sent {
        dev.send(b).await;
    }
    assert!(
        dev.wait_acked(180, Duration::from_secs(30)).await,
        "{}",
        cloud.logs()
    );
    let start = std::time::Instant::now();
    loop {
        let got = rollups(&cloud.db).await;
        if got.len() == 6 && got[&("pm25".to_owned(), 2)].nowcast.is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{got:?}\n{}",
            cloud.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = std::time::Instant::now();
    while cloud
        .gateway
        .metric("aeris_gateway_rollup_hours_recomputed_total")
        < 3.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            cloud.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cloud.gateway.metric("aeris_gateway_rollup_pending_hours"),
        0.0
    );
    assert_eq!(
        cloud
            .gateway
            .metric("aeris_gateway_rollup_rounds_total{outcome=\"error\"}"),
        0.0
    );
}

#[tokio::test]
async fn sensors_api_carries_the_hourly_aqi_with_its_category_and_pollutant() {
    let cloud = Cloud::start_with(false, &[("AERIS_ROLLUPS__EVERY", "1s".to_owned())]).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    // The three full hours before the current one, PM2.5 only.
    let first_hour = aeris_wire::now_ms().div_euclid(HOUR_MS) * HOUR_MS - 3 * HOUR_MS;
    let rs: Vec<Reading> = (0..3 * 60)
        .map(|m| {
            let mut r = readings(0, 1).remove(0);
            r.ts_ms = first_hour + m * 60_000;
            r.values.truncate(1);
            r.values[0].value = pm25(m / 60 * 4, m % 60);
            r
        })
        .collect();
    for b in &batches(1, rs.clone()) {
        dev.send(b).await;
    }
    assert!(
        dev.wait_acked(180, Duration::from_secs(30)).await,
        "{}",
        cloud.logs()
    );
    let means = hourly_means(&pm25_samples(&rs), 60_000, &Completeness::default());
    let nowcast = PM25_NOWCAST.nowcast_at(&means, first_hour + 2 * HOUR_MS);
    let want = nowcast.and_then(|c| PM25.index(c)).expect("a NowCast AQI");
    let port = cloud.gateway.api_port;
    let start = std::time::Instant::now();
    let sensor = loop {
        let list = aeris_tests::http::get_json(port, "/api/sensors");
        let found = list.as_array().and_then(|l| l.first()).cloned();
        if let Some(s) = found.filter(|s| s["nowcast"]["hour_ms"] == first_hour + 2 * HOUR_MS) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{list}\n{}",
            cloud.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(sensor["nowcast"]["aqi"], want, "{sensor}");
    let category = aeris_wire::aqi::table::category(want);
    assert_eq!(sensor["nowcast"]["category"], category, "{sensor}");
    assert_eq!(sensor["nowcast"]["pollutant"], "pm25");
    assert_eq!(sensor["nowcast"]["averaging"], "nowcast");
    // The latest reading's own index, named as such.
    let last = rs.last().map(|r| r.values[0].value).unwrap_or_default();
    assert_eq!(sensor["aqi_instant"], PM25.index(last).unwrap_or_default());
    assert!(sensor.get("aqi").is_none(), "{sensor}");
}
