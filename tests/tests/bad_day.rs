//! The bad day, against the whole pipeline (real Mosquitto brokers,
//! PostGIS, gateway and agent processes): the buffer file deleted under a
//! running fleet, and an agent update that finds a buffer written in the
//! previous row format. Every reading lands once.

use std::path::Path;
use std::time::Duration;

use aeris_tests::sensors::{readings, Publisher};
use aeris_tests::stack::{watch_events, Stack, DEVICE};
use aeris_tests::{http_get, metric, wait_for};

const LAND: Duration = Duration::from_secs(60);

fn remove_buffer(dir: &Path) {
    for name in ["buffer.db", "buffer.db-wal", "buffer.db-shm"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_buffer_is_deleted_every_new_reading_lands_and_the_cloud_records_the_reset() {
    let mut stack = Stack::start().await;
    let events = watch_events(stack.cloud.port, DEVICE).await;
    let sensors = Publisher::connect(stack.local.port).await;
    let all = readings(100, 4);
    let (before, after) = all.split_at(50);
    for r in before {
        sensors.publish(r).await;
    }
    stack.wait_rows(50, LAND).await;

    // The buffer is lost (deleted by hand, a new card): the agent starts
    // numbering from 1 again.
    assert!(stack.edge.terminate().is_some_and(|s| s.success()));
    let edge_dir = stack.dir.path().join("edge");
    remove_buffer(&edge_dir);
    stack.edge.restart();
    stack.wait_edge_subscribed(2).await;
    for r in after {
        sensors.publish(r).await;
    }
    stack.wait_rows(100, LAND).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.assert_exactly_once(&all).await;

    // Recorded: the gateway's metric and /api/devices, the agent's metric,
    // and the agent's event.
    let (_, text) = http_get(stack.api_port, "/metrics").await.expect("metrics");
    let collisions = metric(&text, "aeris_gateway_seq_collisions_total").unwrap_or(0.0);
    assert!(collisions >= 50.0, "collisions {collisions}");
    let (_, body) = http_get(stack.api_port, "/api/devices")
        .await
        .expect("devices");
    let devices: serde_json::Value = serde_json::from_str(&body).expect("json");
    let d = devices
        .as_array()
        .and_then(|a| a.iter().find(|d| d["device"] == DEVICE))
        .unwrap_or_else(|| panic!("{devices}"));
    assert!(d["seq_collisions"].as_u64() >= Some(50), "{d}");
    let (_, text) = http_get(stack.edge_health, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(
        metric(&text, "aeris_edge_buffer_renumbered_total"),
        Some(50.0)
    );
    wait_for("the renumber event", LAND, || async {
        let seen = events.lock().map(|e| e.clone()).unwrap_or_default();
        seen.iter().find(|m| m.contains("renumber")).cloned()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_written_in_the_previous_row_format_is_read_and_sent() {
    let mut stack = Stack::start().await;
    stack.wait_edge_subscribed(1).await;
    assert!(stack.edge.terminate().is_some_and(|s| s.success()));
    let edge_dir = stack.dir.path().join("edge");
    remove_buffer(&edge_dir);
    // What the previous agent left: schema 2, rows in the wire's version-1
    // framing, 30 unsent readings.
    let old = readings(30, 3);
    {
        let conn = rusqlite::Connection::open(edge_dir.join("buffer.db")).expect("create");
        conn.execute_batch(
            "CREATE TABLE readings (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, body BLOB NOT NULL);
             CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO meta (key, value) VALUES ('next_seq', 31);
             ALTER TABLE readings ADD COLUMN sensor TEXT NOT NULL DEFAULT '';
             ALTER TABLE readings ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE readings ADD COLUMN acked_ms INTEGER;
             CREATE UNIQUE INDEX readings_identity ON readings (sensor, ts_ms) WHERE kind = 0;
             CREATE INDEX readings_unsent ON readings (kind, ts_ms) WHERE acked_ms IS NULL;
             CREATE INDEX readings_acked ON readings (acked_ms) WHERE acked_ms IS NOT NULL;
             PRAGMA user_version = 2;",
        )
        .expect("schema 2");
        for (i, r) in old.iter().enumerate() {
            let reading = aeris_wire::Reading {
                sensor: r.sensor.clone(),
                ts_ms: r.ts_ms,
                lat: r.lat,
                lon: r.lon,
                flags: 0,
                values: vec![aeris_wire::Value {
                    quantity: "pm25".into(),
                    value: r.pm25,
                }],
            };
            conn.execute(
                "INSERT INTO readings (seq, ts_ms, sensor, body) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    i as i64 + 1,
                    r.ts_ms,
                    r.sensor,
                    aeris_wire::encode(&reading)
                ],
            )
            .expect("insert");
        }
    }
    stack.edge.restart();
    stack.wait_rows(30, LAND).await;
    stack.assert_exactly_once(&old).await;
    let (_, text) = http_get(stack.edge_health, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(
        metric(
            &text,
            "aeris_edge_buffer_lost_readings_total{reason=\"corrupt\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "{text}"
    );
}
