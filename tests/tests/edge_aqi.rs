//! The agent's local hourly AQI (its status while offline) is the cloud's:
//! the same readings through a real agent and gateway give the agent's
//! `aeris_edge_sensor_aqi` and the rollups' AQI of the same hour, both
//! from `aeris_wire::aqi`; a change of its category is one `Alert` event
//! on `up/event`.

use std::time::Duration;

use aeris_tests::sensors::Publisher;
use aeris_tests::stack::{watch_events, Stack, DEVICE};
use aeris_wire::aqi::hourly::HOUR_MS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_hourly_aqi_matches_the_clouds_rollup() {
    let gateway_env = [("AERIS_ROLLUPS__EVERY", "1s".to_owned())];
    let stack = Stack::start_with_gateway_env("", &gateway_env).await;
    let events = watch_events(stack.cloud.port, DEVICE).await;
    let sensors = Publisher::connect(stack.local.port).await;
    // Four hours ago to one hour ago, one reading a minute, PM2.5 rising
    // hour by hour; then one reading of the last hour closes the third.
    let first = aeris_tests::now_ms().div_euclid(HOUR_MS) * HOUR_MS - 4 * HOUR_MS;
    let mut n = 0;
    for h in 0..3 {
        for m in 0..60 {
            let pm25 = [12.0, 40.0, 90.0][h as usize] + (m % 5) as f64;
            let ts = first + h * HOUR_MS + m * 60_000;
            let body = serde_json::json!({"ts": ts as f64 / 1000.0, "lat": 47.0, "lon": 8.0, "pm25": pm25});
            sensors
                .publish_raw("sensors/s1/air", body.to_string().into_bytes())
                .await;
            n += 1;
        }
    }
    let body = serde_json::json!({"ts": (first + 3 * HOUR_MS) as f64 / 1000.0, "lat": 47.0, "lon": 8.0, "pm25": 5.0});
    sensors
        .publish_raw("sensors/s1/air", body.to_string().into_bytes())
        .await;
    n += 1;
    stack.wait_rows(n, Duration::from_secs(60)).await;

    let hour2 = first + 2 * HOUR_MS;
    let start = std::time::Instant::now();
    let cloud: i32 = loop {
        let row = stack
            .db
            .client()
            .await
            .query_opt(
                "SELECT aqi FROM readings_hourly
                 WHERE sensor_id = 's1' AND pollutant = 'pm25'
                   AND hour = 'epoch'::timestamptz + $1::int8 * interval '1 millisecond'",
                &[&hour2],
            )
            .await
            .expect("read rollup");
        if let Some(aqi) = row.and_then(|r| r.get::<_, Option<i32>>(0)) {
            break aqi;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let edge = aeris_tests::http::metric(stack.edge_health, "aeris_edge_sensor_aqi{sensor=\"s1\"}");
    assert_eq!(
        edge,
        f64::from(cloud),
        "edge vs cloud for the hour that closed"
    );
    // Hour 2's NowCast over 12, 40, 90 µg/m³ is far above the hour-0 level.
    assert!(cloud > 150, "{cloud}");

    // Hour 0 alone has no NowCast (2 of the last 3 hours needed); hour 1's
    // (about 33 µg/m³) is Moderate, hour 2's Unhealthy: one event.
    let start = std::time::Instant::now();
    let alerts = loop {
        let seen: Vec<String> = events
            .lock()
            .map(|e| e.iter().filter(|m| m.contains("AQI")).cloned().collect())
            .unwrap_or_default();
        if !seen.is_empty() || start.elapsed() > Duration::from_secs(20) {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(alerts.len(), 1, "{alerts:?}\n{}", stack.logs());
    assert!(
        alerts[0].contains(&format!("sensor s1: AQI {cloud} Unhealthy (pm25, nowcast)"))
            && alerts[0].ends_with("was Moderate"),
        "{alerts:?}"
    );
}
