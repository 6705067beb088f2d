//! What a real fleet's sensors send, against the whole pipeline (real
//! Mosquitto brokers, PostGIS, gateway and agent processes): readings that
//! share a second, one topic per quantity, no clock, the same payload twice
//! on purpose, SenML bridges with several base names. Every distinct
//! message the agent accepts lands in PostGIS exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use aeris_tests::sensors::Publisher;
use aeris_tests::stack::Stack;
use aeris_tests::{http_get, metric, now_ms, wait_for};

const LAND: Duration = Duration::from_secs(60);

/// (sensor, ts_ms, pm25, no2, rh, flags) of every stored row, sorted.
type Row = (String, i64, Option<f64>, Option<f64>, Option<f64>, i32);

async fn stored(stack: &Stack) -> Vec<Row> {
    let db = stack.db.client().await;
    let rows = db
        .query(
            "SELECT sensor_id, round(extract(epoch FROM ts) * 1000)::int8, pm25, no2,
                    (measurements->>'rh')::float8, flags
             FROM readings ORDER BY sensor_id, ts, seq",
            &[],
        )
        .await
        .expect("query readings");
    let mut out: Vec<Row> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

fn count_by_sensor(rows: &[Row]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(r.0.as_str()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_distinct_message_of_a_sloppy_sensor_lands_once() {
    let toml = "[preprocess]\naqi = false\nspike_ratio = 0\nstuck_count = 0\n\
                [sensors.fixed]\nlat = 48.5\nlon = 9.25\n";
    let stack = Stack::start_with(toml).await;
    let sensors = Publisher::connect(stack.local.port).await;
    // Whole seconds, a minute ago.
    let second = (now_ms() / 1000 - 60) as f64;
    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();

    // 39 readings stamped with the same second.
    for i in 0..39 {
        let body = format!(
            r#"{{"ts":{second},"lat":47.5,"lon":8.5,"pm25":{}}}"#,
            i as f64
        );
        sensors
            .publish_raw("sensors/same-second/air", body.into())
            .await;
    }
    expected.insert("same-second", 39);
    // One topic per quantity, all at one ts.
    for (q, v) in [("pm25", 12.5), ("no2", 40.0), ("rh", 55.0)] {
        let body = format!(r#"{{"ts":{second},"{q}":{v}}}"#);
        sensors
            .publish_raw(&format!("sensors/fixed/{q}"), body.into())
            .await;
    }
    expected.insert("fixed", 3);
    // 5 Hz with whole-second stamps.
    for i in 0..5 {
        let body = format!(r#"{{"ts":{second},"lat":1,"lon":2,"pm25":{}}}"#, 20 + i);
        sensors
            .publish_raw("sensors/five-hz/air", body.into())
            .await;
    }
    expected.insert("five-hz", 5);
    // The same bytes twice, on purpose: two readings.
    let twice = format!(r#"{{"ts":{second},"lat":1,"lon":2,"pm25":7}}"#);
    for _ in 0..2 {
        sensors
            .publish_raw("sensors/twice/air", twice.clone().into())
            .await;
    }
    expected.insert("twice", 2);
    // No clock at all, ten at once.
    for i in 0..10 {
        let body = format!(r#"{{"lat":1,"lon":2,"pm25":{}}}"#, 30 + i);
        sensors
            .publish_raw("sensors/no-clock/air", body.into())
            .await;
    }
    expected.insert("no-clock", 10);
    // Two SenML packs with the same time.
    for v in [1, 2] {
        let body = format!(
            r#"[{{"bt":{second},"n":"pm25","v":{v}}},{{"n":"lat","v":1}},{{"n":"lon","v":2}}]"#
        );
        sensors.publish_raw("sensors/senml/air", body.into()).await;
    }
    expected.insert("senml", 2);
    // A bridge: two devices behind one topic, one pack.
    let bridge = format!(
        r#"[{{"bn":"urn:dev:mac:aa01:","bt":{second},"n":"pm25","v":10}},
            {{"bn":"urn:dev:mac:bb02:","n":"pm25","v":20}},
            {{"bn":"","n":"lat","v":1}},{{"n":"lon","v":2}}]"#
    );
    sensors.publish_raw("sensors/bridge", bridge.into()).await;
    expected.insert("bridge/urn:dev:mac:aa01", 1);
    expected.insert("bridge/urn:dev:mac:bb02", 1);

    let total: usize = expected.values().sum();
    stack.wait_rows(total as i64, LAND).await;
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = stored(&stack).await;
    assert_eq!(count_by_sensor(&rows), expected, "{}", stack.logs());

    let values = |sensor: &str| -> Vec<f64> {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|r| r.0 == sensor)
            .filter_map(|r| r.2)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    assert_eq!(
        values("same-second"),
        (0..39).map(f64::from).collect::<Vec<_>>()
    );
    assert_eq!(values("five-hz"), [20.0, 21.0, 22.0, 23.0, 24.0]);
    assert_eq!(values("twice"), [7.0, 7.0]);
    assert_eq!(values("bridge/urn:dev:mac:aa01"), [10.0]);
    assert_eq!(values("bridge/urn:dev:mac:bb02"), [20.0]);
    let fixed: Vec<_> = rows.iter().filter(|r| r.0 == "fixed").collect();
    assert!(fixed.iter().any(|r| r.2 == Some(12.5)));
    assert!(fixed.iter().any(|r| r.3 == Some(40.0)));
    assert!(fixed.iter().any(|r| r.4 == Some(55.0)));
    // Arrival-stamped readings say so (bit 4); sensor-stamped ones do not.
    for r in &rows {
        let arrival = r.5 & 16 != 0;
        assert_eq!(arrival, r.0 == "no-clock", "flags of {r:?}");
    }
    let (_, text) = http_get(stack.edge_health, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(
        metric(&text, "aeris_edge_ingest_accepted_total"),
        Some(total as f64)
    );
    assert_eq!(
        metric(&text, "aeris_edge_buffer_duplicates_total"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "aeris_edge_ingest_arrival_stamped_total"),
        Some(10.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clockless_burst_the_broker_kept_lands_whole_and_flagged_as_replayed() {
    const N: usize = 5_000;
    let toml = "[preprocess]\naqi = false\nspike_ratio = 0\nstuck_count = 0\n";
    let mut stack = Stack::start_with(toml).await;
    // The agent is away (an OTA update, a restart): the broker keeps its
    // messages in the persistent session.
    stack.edge.kill();
    let sensors = Publisher::connect(stack.local.port).await;
    for i in 0..N {
        let body = format!(
            r#"{{"lat":1,"lon":2,"pm25":{}}}"#,
            (i % 1000) as f64 + (i / 1000) as f64 / 10.0
        );
        sensors
            .publish_raw(&format!("sensors/clockless-{}/air", i % 5), body.into())
            .await;
    }
    // Let the broker take all of them before the agent comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.edge.restart();
    stack.wait_rows(N as i64, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = stored(&stack).await;
    assert_eq!(rows.len(), N, "{}", stack.logs());
    // Every distinct value once per sensor.
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        assert!(
            seen.insert((r.0.clone(), r.2.map(f64::to_bits))),
            "{r:?} twice"
        );
        assert_eq!(r.5 & 16, 16, "arrival-stamped: {r:?}");
    }
    let replayed = rows.iter().filter(|r| r.5 & 32 != 0).count();
    eprintln!(
        "{N} clockless readings kept by the broker: {} landed, {replayed} flagged replayed",
        rows.len()
    );
    assert!(
        replayed > N / 2,
        "the broker's stored session is flagged: {replayed} of {N}"
    );
}

/// Runs `cmd` to its end, which must come within 20 s.
fn finishes(mut cmd: std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the second agent");
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the second agent still runs after 20 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_data_directory_exits_with_a_clear_message() {
    let stack = Stack::start().await;
    stack.wait_edge_subscribed(1).await;
    let data_dir = stack.dir.path().join("edge");
    let run = |env: &[(&str, String)]| {
        let mut cmd = std::process::Command::new(aeris_tests::process::binary("aeris-edge"));
        cmd.env_clear()
            .env("AERIS_DEVICE_ID", aeris_tests::stack::DEVICE)
            .env("AERIS_DATA_DIR", &data_dir)
            .env("AERIS_LOCAL__PORT", stack.local.port.to_string())
            .env("AERIS_CLOUD__PORT", stack.cloud.port.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        finishes(cmd)
    };
    // Same data directory: refused before it opens the buffer.
    let free = aeris_tests::free_port();
    let out = run(&[("AERIS_HEALTH_LISTEN", format!("127.0.0.1:{free}"))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("another aeris-edge") && stderr.contains(&data_dir.display().to_string()),
        "{stderr}"
    );
    // Its own data directory but the first agent's health port: no agent
    // runs without /healthz and /metrics.
    let other = tempfile::tempdir().expect("tempdir");
    let out = {
        let mut cmd = std::process::Command::new(aeris_tests::process::binary("aeris-edge"));
        cmd.env_clear()
            .env("AERIS_DEVICE_ID", "edge-test-2")
            .env("AERIS_DATA_DIR", other.path())
            .env("AERIS_LOCAL__PORT", stack.local.port.to_string())
            .env("AERIS_CLOUD__PORT", stack.cloud.port.to_string())
            .env(
                "AERIS_HEALTH_LISTEN",
                format!("127.0.0.1:{}", stack.edge_health),
            );
        cmd.output().expect("run a second agent")
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("health_listen"), "{stderr}");
    // The first agent is unharmed.
    let (code, _) = http_get(stack.edge_health, "/healthz")
        .await
        .expect("healthz");
    assert_eq!(code, 200);
    wait_for("first agent still ready", LAND, || async {
        let (code, _) = http_get(stack.edge_health, "/readyz").await.ok()?;
        (code == 200).then_some(())
    })
    .await;
}
