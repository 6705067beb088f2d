//! Remote configuration applied to the running agent (issue 18.1), against
//! the real agent, brokers and PostGIS: a position and a threshold change
//! reach the readings while the agent keeps its connections (no pipeline
//! restart, no reconnect, every reading stored once, the old position up
//! to one message and the new one from the next), and a key that cannot
//! change live restarts the pipeline and is counted; a per-sensor
//! correction set remotely applies to the next reading, an unknown formula
//! is refused.

use std::time::Duration;

use aeris_tests::fleet_config::{send_configure, wait_report, watch_reports};
use aeris_tests::http::metric;
use aeris_tests::sensors::Publisher;
use aeris_tests::stack::{Stack, DEVICE};
use aeris_wire::flags::FLAG_SPIKE;
use aeris_wire::ConfigReport;

type Reports = tokio::sync::watch::Receiver<Option<ConfigReport>>;

const FILE: &str = "[sensors.s1]\nlat = 47.0\nlon = 6.0\n[sensors.s2]\nlat = 47.0\nlon = 6.0\n";
/// s1 moves; a jump of 30 over a median of 10 becomes a spike (it is not
/// one by the defaults: at least 50 away).
const MOVED_AND_SENSITIVE: &str = "[sensors.s1]\nlat = 48.5\nlon = 7.25\n\
     [sensors.s2]\nlat = 47.0\nlon = 6.0\n\
     [preprocess]\nspike_ratio = 1.0\nspike_min_delta = 20.0\n";
/// Readings of s1 published while the change arrives, 20 ms apart.
const STREAM: usize = 150;

async fn publish_unplaced(sensors: &Publisher, sensor: &str, pm25: f64) {
    let body = serde_json::json!({ "ts": aeris_tests::now_ms() as f64 / 1000.0, "pm25": pm25 });
    sensors
        .publish_raw(
            &format!("sensors/{sensor}/air"),
            body.to_string().into_bytes(),
        )
        .await;
}

/// (seq, pm25, lon, lat, flags) of every stored reading of `sensor`.
async fn stored(stack: &Stack, sensor: &str) -> Vec<(i64, f64, f64, f64, i32)> {
    let client = stack.db.client().await;
    client
        .query(
            "SELECT seq, pm25, ST_X(geom), ST_Y(geom), flags FROM readings
             WHERE sensor_id = $1 ORDER BY pm25",
            &[&sensor],
        )
        .await
        .expect("query readings")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// The stack on [`FILE`], once the agent reported its configuration.
async fn started() -> (Stack, Reports) {
    let stack = Stack::start_with(FILE).await;
    let mut reports = watch_reports(stack.cloud.port, DEVICE).await;
    wait_report(
        &mut reports,
        Duration::from_secs(10),
        |_| true,
        || stack.logs(),
    )
    .await;
    (stack, reports)
}

fn edge_metric(stack: &Stack, name: &str) -> f64 {
    metric(stack.edge_health, name)
}

fn count(stack: &Stack, line: &str) -> usize {
    stack.edge.log().matches(line).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_and_threshold_change_apply_live_without_reconnecting_or_losing_a_reading() {
    let (stack, mut reports) = started().await;
    let connects = edge_metric(&stack, "aeris_edge_uplink_connects_total");
    assert_eq!(connects, 1.0, "{}", stack.logs());
    let sensors = Publisher::connect(stack.local.port).await;
    // s2's history: a jump to 40 is no spike by the defaults.
    for v in [10.0, 11.0, 10.0, 40.0, 10.0, 11.0] {
        publish_unplaced(&sensors, "s2", v).await;
    }
    // s1 publishes marks 1..=STREAM while the change arrives.
    let stream = {
        let sensors = Publisher::connect(stack.local.port).await;
        tokio::spawn(async move {
            for i in 1..=STREAM {
                publish_unplaced(&sensors, "s1", i as f64).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Let the last PUBACKs come back before the client goes.
            tokio::time::sleep(Duration::from_millis(500)).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    send_configure(stack.cloud.port, DEVICE, 3, MOVED_AND_SENSITIVE).await;
    let r = wait_report(
        &mut reports,
        Duration::from_secs(20),
        |r| r.applied == 3,
        || stack.logs(),
    )
    .await;
    assert_eq!(r.refused, None);
    // Judged against the history from before the change.
    publish_unplaced(&sensors, "s2", 40.5).await;
    stream.await.expect("stream task");
    stack
        .wait_rows(STREAM as i64 + 7, Duration::from_secs(30))
        .await;

    let s1 = stored(&stack, "s1").await;
    let marks: Vec<f64> = s1.iter().map(|r| r.1).collect();
    let expected: Vec<f64> = (1..=STREAM).map(|i| i as f64).collect();
    assert_eq!(marks, expected, "every reading stored once");
    let mut seqs: Vec<i64> = s1.iter().map(|r| r.0).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), STREAM, "one seq per reading");
    // In publication order: the old position, then the new one for good.
    let moved_at = s1
        .iter()
        .position(|r| (r.2, r.3) == (7.25, 48.5))
        .unwrap_or(STREAM);
    assert!(
        moved_at > 0 && moved_at < STREAM,
        "the change landed inside the stream: {moved_at}"
    );
    for (i, r) in s1.iter().enumerate() {
        let want = if i < moved_at {
            (6.0, 47.0)
        } else {
            (7.25, 48.5)
        };
        assert_eq!((r.2, r.3), want, "mark {} (switch at {moved_at})", r.1);
    }
    let s2 = stored(&stack, "s2").await;
    let flags_of = |v: f64| s2.iter().find(|r| r.1 == v).map(|r| r.4 as u32);
    assert_eq!(flags_of(40.0).map(|f| f & FLAG_SPIKE), Some(0), "{s2:?}");
    assert_eq!(
        flags_of(40.5).map(|f| f & FLAG_SPIKE),
        Some(FLAG_SPIKE),
        "new thresholds, old history: {s2:?}"
    );

    assert_eq!(count(&stack, "agent starting"), 1, "{}", stack.logs());
    assert_eq!(
        count(&stack, "connected to local broker"),
        1,
        "{}",
        stack.logs()
    );
    assert_eq!(edge_metric(&stack, "aeris_edge_uplink_connects_total"), 1.0);
    assert_eq!(
        edge_metric(&stack, "aeris_edge_pipeline_restarts_total"),
        0.0
    );
    assert_eq!(
        edge_metric(&stack, "aeris_edge_config_applied_live_total"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_that_cannot_change_live_restarts_the_pipeline_and_is_counted() {
    let (stack, mut reports) = started().await;
    let sensors = Publisher::connect(stack.local.port).await;
    publish_unplaced(&sensors, "s1", 1.0).await;
    stack.wait_rows(1, Duration::from_secs(20)).await;
    // The keep-alive goes out in CONNECT; the position rides along.
    let fragment = "[cloud]\nkeep_alive = \"20s\"\n[sensors.s1]\nlat = 48.5\nlon = 7.25\n";
    send_configure(stack.cloud.port, DEVICE, 4, fragment).await;
    wait_report(
        &mut reports,
        Duration::from_secs(20),
        |r| r.applied == 4,
        || stack.logs(),
    )
    .await;
    stack.wait_edge_subscribed(2).await;
    publish_unplaced(&sensors, "s1", 2.0).await;
    stack.wait_rows(2, Duration::from_secs(20)).await;
    let s1 = stored(&stack, "s1").await;
    let positions: Vec<(f64, f64, f64)> = s1.iter().map(|r| (r.1, r.2, r.3)).collect();
    assert_eq!(positions, [(1.0, 6.0, 47.0), (2.0, 7.25, 48.5)]);
    assert_eq!(count(&stack, "agent starting"), 2, "{}", stack.logs());
    assert_eq!(
        edge_metric(&stack, "aeris_edge_pipeline_restarts_total"),
        1.0
    );
    assert_eq!(edge_metric(&stack, "aeris_edge_uplink_connects_total"), 2.0);
    assert_eq!(
        edge_metric(&stack, "aeris_edge_config_applied_live_total"),
        0.0
    );
    // An out-of-range keep-alive is refused, not a panic in the uplink.
    send_configure(
        stack.cloud.port,
        DEVICE,
        5,
        "[cloud]\nkeep_alive = \"500ms\"\n",
    )
    .await;
    let r = wait_report(
        &mut reports,
        Duration::from_secs(10),
        |r| r.refused.as_ref().is_some_and(|f| f.version == 5),
        || stack.logs(),
    )
    .await;
    assert_eq!(r.applied, 4);
    assert_eq!(count(&stack, "agent starting"), 2, "{}", stack.logs());
}

/// PM2.5 as stored for `sensor`, by seq: (pm25, pm25_raw, pm25_correction).
async fn corrections(
    stack: &Stack,
    sensor: &str,
) -> Vec<(Option<f64>, Option<f64>, Option<String>)> {
    let client = stack.db.client().await;
    client
        .query(
            "SELECT pm25, pm25_raw, pm25_correction FROM readings
             WHERE sensor_id = $1 ORDER BY seq",
            &[&sensor],
        )
        .await
        .expect("query readings")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensors_correction_set_remotely_applies_live_and_an_unknown_formula_is_refused() {
    let (stack, mut reports) = started().await;
    let sensors = Publisher::connect(stack.local.port).await;
    let publish = |pm25: f64| {
        let body = serde_json::json!({
            "ts": aeris_tests::now_ms() as f64 / 1000.0, "pm25": pm25, "rh": 50.0,
        });
        sensors.publish_raw("sensors/s1/air", body.to_string().into_bytes())
    };
    publish(100.0).await;
    stack.wait_rows(1, Duration::from_secs(20)).await;
    let fragment = "[preprocess.corrections]\ns1 = \"epa-barkjohn-2021\"\n";
    send_configure(stack.cloud.port, DEVICE, 6, fragment).await;
    let r = wait_report(
        &mut reports,
        Duration::from_secs(20),
        |r| r.applied == 6,
        || stack.logs(),
    )
    .await;
    assert_eq!(r.refused, None);
    publish(100.0).await;
    stack.wait_rows(2, Duration::from_secs(20)).await;
    // A formula the agent does not know: refused, the correction stays.
    send_configure(
        stack.cloud.port,
        DEVICE,
        7,
        "[preprocess.corrections]\ns1 = \"epa-barkjohn-2099\"\n",
    )
    .await;
    let r = wait_report(
        &mut reports,
        Duration::from_secs(10),
        |r| r.refused.as_ref().is_some_and(|f| f.version == 7),
        || stack.logs(),
    )
    .await;
    assert_eq!(r.applied, 6);
    publish(200.0).await;
    stack.wait_rows(3, Duration::from_secs(20)).await;

    let rows = corrections(&stack, "s1").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0], (Some(100.0), None, None), "before the change");
    // 0.524 × PA − 0.0862 × RH + 5.75 at PA 100 and 200, RH 50 %.
    for (row, raw, want) in [(&rows[1], 100.0, 53.84), (&rows[2], 200.0, 106.24)] {
        let (pm25, stored_raw, formula) = row;
        assert!(
            pm25.is_some_and(|v| (v - want).abs() < 1e-6),
            "corrected {pm25:?}, want {want}: {rows:?}"
        );
        assert_eq!(*stored_raw, Some(raw), "the raw value is kept");
        assert_eq!(formula.as_deref(), Some("epa-barkjohn-2021@1"));
    }
    assert_eq!(
        edge_metric(&stack, "aeris_edge_pipeline_restarts_total"),
        0.0
    );
    assert_eq!(
        edge_metric(&stack, "aeris_edge_config_applied_live_total"),
        1.0
    );
    assert_eq!(edge_metric(&stack, "aeris_edge_uplink_connects_total"), 1.0);
}
