//! Desired configuration from the cloud (issue 18), against the real
//! agent, brokers and PostGIS: a position change reaches the readings in
//! PostGIS, a fragment the agent's config checks refuse changes nothing
//! and is reported with its reason, and an applied fragment outlives a
//! restart of the agent.

use std::time::Duration;

use aeris_tests::fleet_config::{send_configure, wait_report, watch_reports};
use aeris_tests::sensors::Publisher;
use aeris_tests::stack::{Stack, DEVICE};

const FILE: &str = "[sensors.s1]\nlat = 47.0\nlon = 6.0\n";
const MOVED: &str = "[sensors.s1]\nlat = 48.5\nlon = 7.25\n";

/// Publishes a reading of `s1` without a position (the agent takes it from
/// `sensors.s1`) with `pm25` as its mark.
async fn publish_unplaced(sensors: &Publisher, pm25: f64) {
    let body = serde_json::json!({ "ts": aeris_tests::now_ms() as f64 / 1000.0, "pm25": pm25 });
    sensors
        .publish_raw("sensors/s1/air", body.to_string().into_bytes())
        .await;
}

/// (lon, lat) of the stored reading marked `pm25`, once it is there.
async fn position_of(stack: &Stack, pm25: f64) -> (f64, f64) {
    aeris_tests::wait_for(
        "the marked reading in PostGIS",
        Duration::from_secs(20),
        || async {
            let client = stack.db.client().await;
            let row = client
            .query_opt(
                "SELECT ST_X(geom), ST_Y(geom) FROM readings WHERE sensor_id = 's1' AND pm25 = $1",
                &[&pm25],
            )
            .await
            .ok()
            .flatten()?;
            Some((row.get::<_, f64>(0), row.get::<_, f64>(1)))
        },
    )
    .await
}

fn starts(stack: &Stack) -> usize {
    stack.edge.log().matches("agent starting").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_change_reaches_the_agent_and_the_next_readings_carry_it() {
    let stack = Stack::start_with(FILE).await;
    let mut reports = watch_reports(stack.cloud.port, DEVICE).await;
    let first = wait_report(
        &mut reports,
        Duration::from_secs(10),
        |_| true,
        || stack.logs(),
    )
    .await;
    assert_eq!((first.applied, &first.refused), (0, &None));
    let sensors = Publisher::connect(stack.local.port).await;
    publish_unplaced(&sensors, 1.0).await;
    assert_eq!(position_of(&stack, 1.0).await, (6.0, 47.0));

    send_configure(stack.cloud.port, DEVICE, 3, MOVED).await;
    let r = wait_report(
        &mut reports,
        Duration::from_secs(20),
        |r| r.applied == 3,
        || stack.logs(),
    )
    .await;
    assert_eq!(r.refused, None);
    // Applied live (fleet_config_live.rs): no restart, no new subscription.
    assert_eq!(starts(&stack), 1, "{}", stack.logs());
    publish_unplaced(&sensors, 2.0).await;
    assert_eq!(position_of(&stack, 2.0).await, (7.25, 48.5));
    assert_eq!(
        position_of(&stack, 1.0).await,
        (6.0, 47.0),
        "stored readings keep theirs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fragment_is_refused_and_reported_and_the_agent_runs_on_the_old_one() {
    let stack = Stack::start_with(FILE).await;
    let mut reports = watch_reports(stack.cloud.port, DEVICE).await;
    wait_report(
        &mut reports,
        Duration::from_secs(10),
        |_| true,
        || stack.logs(),
    )
    .await;
    // A key that may not be set remotely, then a value the file's checks refuse.
    for (version, fragment, named) in [
        (4, "device_id = \"someone-else\"\n", "device_id"),
        (5, "[sensors.s1]\nlat = 95.0\nlon = 7.25\n", "sensors.s1"),
        (
            6,
            "[uplink]\nbatch_max_age = \"soon\"\n",
            "uplink.batch_max_age",
        ),
    ] {
        send_configure(stack.cloud.port, DEVICE, version, fragment).await;
        let r = wait_report(
            &mut reports,
            Duration::from_secs(10),
            |r| r.refused.as_ref().is_some_and(|f| f.version == version),
            || stack.logs(),
        )
        .await;
        assert_eq!(r.applied, 0);
        let reason = &r
            .refused
            .as_ref()
            .map(|f| f.reason.clone())
            .unwrap_or_default();
        assert!(reason.contains(named), "{version}: {reason}");
    }
    assert_eq!(starts(&stack), 1, "a refused fragment restarts nothing");
    let sensors = Publisher::connect(stack.local.port).await;
    publish_unplaced(&sensors, 3.0).await;
    assert_eq!(position_of(&stack, 3.0).await, (6.0, 47.0));
    let stored = stack.dir.path().join("edge").join("remote-config.toml");
    assert!(!stored.exists(), "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_fragment_survives_an_agent_restart() {
    let mut stack = Stack::start_with(FILE).await;
    let mut reports = watch_reports(stack.cloud.port, DEVICE).await;
    send_configure(stack.cloud.port, DEVICE, 9, MOVED).await;
    wait_report(
        &mut reports,
        Duration::from_secs(20),
        |r| r.applied == 9,
        || stack.logs(),
    )
    .await;
    stack.edge.restart();
    let restarted = aeris_tests::now_ms();
    let r = wait_report(
        &mut reports,
        Duration::from_secs(20),
        |r| r.ts_ms >= restarted,
        || stack.logs(),
    )
    .await;
    assert_eq!(
        (r.applied, r.refused),
        (9, None),
        "the restarted agent runs version 9"
    );
    // At start and after the restart (the change applied live).
    stack.wait_edge_subscribed(2).await;
    let sensors = Publisher::connect(stack.local.port).await;
    publish_unplaced(&sensors, 4.0).await;
    assert_eq!(position_of(&stack, 4.0).await, (7.25, 48.5));
}
