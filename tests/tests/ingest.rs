//! Ingest through a real Mosquitto: a corpus of malformed sensor messages,
//! flat JSON and SenML, interleaved with good ones. Every bad message is
//! counted under its reason in the agent's /metrics, the agent keeps going,
//! and every good reading lands in PostGIS exactly once, preprocessed.
//! And a flood: what the broker kept for the agent while it was down comes
//! at once on its return, far faster than acks leave the MQTT client; every
//! message is stored once and acked, so a later start sees none again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aeris_tests::sensors::Publisher;
use aeris_tests::stack::Stack;

const EDGE_TOML: &str = r#"
[ingest]
max_payload_bytes = 1024
allow_list = ["good-1", "senml-1", "fixed-1", "bad"]

[sensors.fixed-1]
lat = 48.5
lon = 9.25
"#;

/// A good message and the readings (sensor, ts_ms) it must produce.
struct Good {
    topic: String,
    payload: String,
    readings: Vec<(String, i64)>,
}

/// The `i`th good message: flat with GPS, SenML with two times, or flat
/// with the configured position, in turn.
fn good(i: i64, t0: i64, pm25: f64) -> Good {
    let ts = t0 + i * 10_000;
    match i % 3 {
        0 => Good {
            topic: "sensors/good-1/air".into(),
            payload: serde_json::json!({
                "ts": ts as f64 / 1000.0, "lat": 47.5, "lon": 8.5, "pm25": pm25, "rh": 40
            })
            .to_string(),
            readings: vec![("good-1".into(), ts)],
        },
        1 => Good {
            topic: "sensors/senml-1".into(),
            payload: serde_json::json!([
                {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": ts as f64 / 1000.0,
                 "bu": "ug/m3", "n": "pm25", "v": pm25},
                {"n": "no2", "u": "ppb", "v": 20},
                {"n": "lat", "u": "lat", "v": 46.25}, {"n": "lon", "u": "lon", "v": 7.75},
                {"n": "pm25", "t": 1, "v": pm25 + 0.5}
            ])
            .to_string(),
            // The base name is the device that measured (RFC 8428 §4.5.1).
            readings: vec![
                ("senml-1/urn:dev:mac:0024befffe804ff1".into(), ts),
                ("senml-1/urn:dev:mac:0024befffe804ff1".into(), ts + 1000),
            ],
        },
        _ => Good {
            topic: "sensors/fixed-1/air".into(),
            payload: serde_json::json!({"ts": ts as f64 / 1000.0, "pm10": 30}).to_string(),
            readings: vec![("fixed-1".into(), ts)],
        },
    }
}

/// (topic, payload, reason): at least one message per rejection reason.
fn corpus(now_s: f64) -> Vec<(String, Vec<u8>, &'static str)> {
    let bad = "sensors/bad/air";
    let flat = |body: String, reason| (bad.to_owned(), body.into_bytes(), reason);
    let fut = now_s + 600.0;
    let old = now_s - 8.0 * 86_400.0;
    vec![
        flat(
            format!(
                r#"{{"pm25":1,"lat":1,"lon":1,"pad":"{}"}}"#,
                "x".repeat(1100)
            ),
            "oversize",
        ),
        flat(
            format!(r#"[{{"n":"pm25","v":1,"vs":"{}"}}]"#, "y".repeat(2000)),
            "oversize",
        ),
        flat("hello".into(), "not_json"),
        flat(r#"{"pm25": NaN, "lat":1, "lon":1}"#.into(), "not_json"),
        flat(r#"{"pm25": 1e400, "lat":1, "lon":1}"#.into(), "not_json"),
        flat(r#"{"pm25": 1, "lat":"#.into(), "not_json"),
        (bad.to_owned(), vec![0xff, 0xfe, 0x00, 0x01], "not_json"),
        flat("42".into(), "not_object"),
        flat(r#""pm25""#.into(), "not_object"),
        flat("null".into(), "not_object"),
        flat(r#"{"pm25":"high","lat":1,"lon":1}"#.into(), "wrong_type"),
        flat(
            r#"{"ts":true,"pm25":1,"lat":1,"lon":1}"#.into(),
            "wrong_type",
        ),
        flat(
            r#"[{"n":"pm25","v":"12"},{"n":"lat","v":1},{"n":"lon","v":1}]"#.into(),
            "wrong_type",
        ),
        flat(r#"{"pm25":1,"lat":"north","lon":1}"#.into(), "wrong_type"),
        flat(r#"{"pm25":"NaN","lat":1,"lon":1}"#.into(), "non_finite"),
        flat(
            r#"{"pm25":"Infinity","lat":1,"lon":1}"#.into(),
            "non_finite",
        ),
        flat(r#"{"rh":"-Infinity","lat":1,"lon":1}"#.into(), "non_finite"),
        flat(
            r#"[{"n":"pm25","v":"NaN"},{"n":"lat","v":1},{"n":"lon","v":1}]"#.into(),
            "non_finite",
        ),
        flat(r#"{"pm25":-3,"lat":1,"lon":1}"#.into(), "out_of_range"),
        flat(r#"{"rh":140,"lat":1,"lon":1}"#.into(), "out_of_range"),
        flat(r#"{"pm25":1,"lat":91,"lon":1}"#.into(), "out_of_range"),
        flat(r#"{"temp":-100,"lat":1,"lon":1}"#.into(), "out_of_range"),
        flat(
            r#"[{"n":"pm10","u":"ug/m3","v":5000},{"n":"lat","v":1},{"n":"lon","v":1}]"#.into(),
            "out_of_range",
        ),
        flat(
            format!(r#"{{"ts":{fut},"pm25":1,"lat":1,"lon":1}}"#),
            "future_timestamp",
        ),
        flat(
            format!(r#"[{{"bt":{fut},"n":"pm25","v":1}},{{"n":"lat","v":1}},{{"n":"lon","v":1}}]"#),
            "future_timestamp",
        ),
        flat(
            format!(r#"{{"ts":{old},"pm25":1,"lat":1,"lon":1}}"#),
            "too_old",
        ),
        flat(
            format!(r#"[{{"bt":{old},"n":"pm25","v":1}},{{"n":"lat","v":1}},{{"n":"lon","v":1}}]"#),
            "too_old",
        ),
        flat(
            r#"{"ts":"yesterday","pm25":1,"lat":1,"lon":1}"#.into(),
            "bad_timestamp",
        ),
        flat(
            r#"{"ts":-5,"pm25":1,"lat":1,"lon":1}"#.into(),
            "bad_timestamp",
        ),
        flat(r#"{"pm25":1}"#.into(), "no_position"),
        flat(
            r#"[{"n":"pm25","v":1},{"n":"lat","v":1}]"#.into(),
            "no_position",
        ),
        flat(r#"{"lat":1,"lon":1}"#.into(), "no_values"),
        flat("[]".into(), "no_values"),
        flat(r#"{"pm 25":1,"lat":1,"lon":1}"#.into(), "bad_quantity"),
        flat("[1,2]".into(), "bad_senml"),
        flat(r#"[{"n":"pm25"}]"#.into(), "bad_senml"),
        flat(r#"[{"n":"pm25","v":1,"sig_":"x"}]"#.into(), "bad_senml"),
        flat(
            r#"[{"n":"pm25","u":"ppb","v":1},{"n":"lat","v":1},{"n":"lon","v":1}]"#.into(),
            "bad_unit",
        ),
        (
            "sensors/intruder/air".into(),
            br#"{"pm25":1,"lat":1,"lon":1}"#.to_vec(),
            "unknown_sensor",
        ),
        ("sensors/intruder".into(), b"[]".to_vec(), "unknown_sensor"),
        (
            "sensors//air".into(),
            br#"{"pm25":1,"lat":1,"lon":1}"#.to_vec(),
            "bad_sensor_id",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_rejected_by_reason_and_good_ones_around_them_all_arrive() {
    let stack = Stack::start_with(EDGE_TOML).await;
    let sensors = Publisher::connect(stack.local.port).await;
    let now_ms = aeris_tests::now_ms();
    let t0 = now_ms - 3_600_000;
    let corpus = corpus(now_ms as f64 / 1000.0);
    assert!(corpus.len() >= 30);

    // A good message before, between and after the bad ones; pm25 is
    // steady except one spike, which must arrive flagged, not dropped.
    let spike_at = 12; // a flat good-1 message (12 % 3 == 0)
    let mut expected: Vec<(String, i64)> = Vec::new();
    let mut spike_key = None;
    for i in 0..=corpus.len() {
        let pm25 = if i == spike_at { 600.0 } else { 12.0 };
        let g = good(i as i64, t0, pm25);
        sensors.publish_raw(&g.topic, g.payload.into_bytes()).await;
        if i == spike_at {
            spike_key = Some(g.readings[0].clone());
        }
        expected.extend(g.readings);
        if let Some((topic, payload, _)) = corpus.get(i) {
            sensors.publish_raw(topic, payload.clone()).await;
        }
    }
    stack
        .wait_rows(expected.len() as i64, Duration::from_secs(20))
        .await;

    // Every reason's count in /metrics.
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, reason) in &corpus {
        *want.entry(*reason).or_default() += 1;
    }
    let (status, text) = aeris_tests::http_get(stack.edge_health, "/metrics")
        .await
        .expect("scrape /metrics");
    assert_eq!(status, 200);
    for (reason, n) in &want {
        let sample = format!("aeris_edge_ingest_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(
            aeris_tests::metric(&text, &sample),
            Some(*n as f64),
            "{sample}\n{text}"
        );
    }
    let accepted = aeris_tests::metric(&text, "aeris_edge_ingest_accepted_total");
    assert_eq!(accepted, Some(expected.len() as f64), "{text}");
    assert_eq!(
        aeris_tests::metric(&text, "aeris_edge_preprocess_flagged_total{flag=\"spike\"}"),
        Some(1.0),
        "{text}"
    );

    // Every good reading once, where it was, with its AQI and flags.
    let rows = stack
        .db
        .client()
        .await
        .query(
            "SELECT sensor_id, round(extract(epoch FROM ts) * 1000)::int8, ST_Y(geom), ST_X(geom),
                    flags, (measurements->>'aqi')::float8, no2
             FROM readings",
            &[],
        )
        .await
        .expect("query readings");
    type Row = (f64, f64, i32, Option<f64>, Option<f64>);
    let mut stored: HashMap<(String, i64), Row> = HashMap::new();
    for r in &rows {
        let key = (r.get::<_, String>(0), r.get::<_, i64>(1));
        let row = (r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
        assert!(
            stored.insert(key.clone(), row).is_none(),
            "{key:?} stored twice"
        );
    }
    assert_eq!(rows.len(), expected.len(), "rows no good message produced");
    for key in &expected {
        let (lat, lon, flags, aqi, no2) = stored
            .get(key)
            .unwrap_or_else(|| panic!("good reading {key:?} lost\n{}", stack.logs()));
        let (want_lat, want_lon) = match key.0.as_str() {
            "good-1" => (47.5, 8.5),
            "senml-1/urn:dev:mac:0024befffe804ff1" => (46.25, 7.75),
            _ => (48.5, 9.25),
        };
        assert_eq!((*lat, *lon), (want_lat, want_lon), "position of {key:?}");
        let spike = Some(key) == spike_key.as_ref();
        assert_eq!(*flags & 2 != 0, spike, "spike flag of {key:?}");
        if key.0 == "fixed-1" {
            // PM10 30 µg/m³: 50/54*30 = 27.8.
            assert_eq!(*aqi, Some(28.0), "AQI of {key:?}");
        } else if !spike && key.1 % 10_000 == t0 % 10_000 {
            // PM2.5 12.0 µg/m³ (AQI 56) beats NO2 20 ppb (AQI 19).
            assert_eq!(*aqi, Some(56.0), "AQI of {key:?}");
        }
        if key.0.starts_with("senml-1/") && key.1 % 10_000 == t0 % 10_000 {
            // 20 ppb NO2 at 25 °C and 1013.25 hPa.
            let no2 = no2.unwrap_or_else(|| panic!("no NO2 in {key:?}"));
            assert!((no2 - 37.61).abs() < 0.01, "NO2 of {key:?}: {no2}");
        }
    }
}

/// Counts the sensor messages the local broker passes on, at QoS 1 like the
/// agent, so the test knows when the broker holds all of them.
async fn count_sensor_messages(port: u16) -> (rumqttc::AsyncClient, Arc<AtomicU64>) {
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let client = aeris_tests::subscriber::subscribe(port, "sensors/#", move |_| {
        count.fetch_add(1, Relaxed);
    })
    .await;
    (client, seen)
}

/// Polls the agent's /metrics until `sample` has `want` (or panics).
async fn wait_metric(stack: &Stack, sample: &str, want: f64, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = aeris_tests::http_get(stack.edge_health, "/metrics")
            .await
            .map(|(_, t)| t)
            .unwrap_or_default();
        if aeris_tests::metric(&text, sample) == Some(want) {
            return text;
        }
        assert!(
            start.elapsed() < within,
            "{sample} never reached {want}\n{text}\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_the_sensor_broker_is_stored_once_and_every_message_acked() {
    const N: usize = 20_000;
    let mut stack = Stack::start().await;
    // Down: the broker keeps the agent's messages (persistent session).
    stack.edge.kill();
    let (_counter, seen) = count_sensor_messages(stack.local.port).await;
    let sensors = Publisher::connect(stack.local.port).await;
    let published = aeris_tests::sensors::readings(N, 40);
    for r in &published {
        sensors.publish(r).await;
    }
    let start = Instant::now();
    while seen.load(Relaxed) < N as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "broker passed on {} of {N}",
            seen.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back: all of it at once.
    stack.edge.restart();
    stack.wait_edge_subscribed(2).await;
    let mut most_pending = 0.0f64;
    let start = Instant::now();
    while stack.row_count().await < N as i64 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{}",
            stack.logs()
        );
        if let Ok((_, text)) = aeris_tests::http_get(stack.edge_health, "/metrics").await {
            let pending = aeris_tests::metric(&text, "aeris_edge_ingest_acks_pending");
            most_pending = most_pending.max(pending.unwrap_or(0.0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("acks waiting at most (sampled): {most_pending}");
    stack.assert_exactly_once(&published).await;
    let text = wait_metric(
        &stack,
        "aeris_edge_ingest_acks_pending",
        0.0,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        aeris_tests::metric(&text, "aeris_edge_ingest_accepted_total"),
        Some(N as f64),
        "{text}"
    );

    // Every ack reached the broker: after a clean restart it delivers
    // nothing again.
    assert_eq!(
        stack.edge.terminate().map(|s| s.success()),
        Some(true),
        "{}",
        stack.logs()
    );
    stack.edge.restart();
    stack.wait_edge_subscribed(3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, text) = aeris_tests::http_get(stack.edge_health, "/metrics")
        .await
        .expect("scrape /metrics");
    assert_eq!(
        aeris_tests::metric(&text, "aeris_edge_buffer_duplicates_total"),
        Some(0.0),
        "messages delivered again after a clean restart\n{text}"
    );
    assert_eq!(stack.row_count().await, N as i64);
}

/// The agent's tasks share one tokio worker thread (edge/src/main.rs: a
/// worker per core woke another thread at every hand-over between ingest,
/// the buffer's commits and the uplink); the buffer keeps its own thread.
/// The runtime logs its worker count at start (blocking-pool threads carry
/// the workers' thread name, so the names alone cannot tell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_its_tasks_on_one_worker_thread() {
    let stack = Stack::start().await;
    let log = stack.edge.log();
    let line = log
        .lines()
        .find(|l| l.contains("aeris-edge runtime started"))
        .unwrap_or_else(|| panic!("no runtime line in the agent's log:\n{log}"));
    // Without the terminal colours the log may carry.
    let mut plain = String::new();
    let mut in_escape = false;
    for c in line.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, c) => plain.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    assert!(plain.contains("workers=1"), "{plain}");
    let pid = stack.edge.pid().expect("agent running");
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("agent's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(
        threads.iter().any(|n| n == "aeris-buffer"),
        "threads of the agent: {threads:?}"
    );
}
