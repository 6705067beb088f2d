//! Retention of `readings` run by the gateway: on its schedule (counted in
//! `/metrics`) and by `aeris-gateway retention run`, against a real
//! PostGIS. Whole partitions older than `retention.readings` go, newer ones
//! and every key stay.

use std::process::Command;
use std::time::Duration;

use aeris_sink::{PostgisSink, Sink};
use aeris_tests::cloud::Cloud;
use aeris_tests::postgres::TestDb;
use aeris_tests::process::binary;
use aeris_wire::{Batch, Reading, Value};

const DAY_MS: i64 = 86_400_000;
const DROPPED: &str = "aeris_gateway_retention_partitions_dropped_total{table=\"readings\"}";
const CREATED: &str = "aeris_gateway_partitions_created_total{table=\"readings\"}";

/// Two readings of `device` at `ts_ms`, seqs `first_seq` and the next.
fn batch(device: &str, first_seq: u64, ts_ms: i64) -> Batch {
    Batch {
        device: device.into(),
        first_seq,
        readings: (0..2)
            .map(|i| Reading {
                sensor: "s".into(),
                ts_ms: ts_ms + i * 1000,
                lat: 52.5,
                lon: 13.4,
                flags: 0,
                values: vec![Value {
                    quantity: "pm25".into(),
                    value: 7.0,
                }],
            })
            .collect(),
    }
}

/// Noon of the current UTC day: ages in whole days stay clear of midnight.
fn noon() -> i64 {
    (aeris_wire::now_ms() / DAY_MS) * DAY_MS + DAY_MS / 2
}

/// Writes two readings `age` days old per age, device `d<age>`.
async fn fill(url: &str, ages: &[i64]) {
    let sink = PostgisSink::connect(url).await.unwrap();
    let now = noon().min(aeris_wire::now_ms());
    for &age in ages {
        let out = sink
            .write(&[batch(&format!("d{age}"), 1, now - age * DAY_MS)])
            .await
            .unwrap();
        assert_eq!(out.inserted, 2);
    }
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn the_gateway_drops_expired_partitions_on_its_schedule_and_counts_them() {
    let cloud = Cloud::start_with(
        false,
        &[
            ("AERIS_RETENTION__EVERY", "1s".to_owned()),
            ("AERIS_RETENTION__READINGS", "400d".to_owned()),
        ],
    )
    .await;
    // The run at start made today's partition and the week ahead.
    assert!(cloud.gateway.metric(CREATED) >= 8.0, "{}", cloud.logs());
    assert_eq!(cloud.gateway.metric(DROPPED), 0.0);
    // A backlog arrives: 402, 401, 10 days old and today. The next runs
    // move it out of the default partition and drop what is too old.
    fill(&cloud.db.url, &[402, 401, 10, 0]).await;
    let start = std::time::Instant::now();
    while cloud.gateway.metric(DROPPED) < 2.0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "dropped {} after 30 s\n{}",
            cloud.gateway.metric(DROPPED),
            cloud.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Later runs find nothing more to drop.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(cloud.gateway.metric(DROPPED), 2.0);
    assert!(cloud.gateway.metric(CREATED) >= 11.0);
    assert!(
        cloud
            .gateway
            .metric("aeris_gateway_retention_runs_total{outcome=\"ok\"}")
            >= 3.0
    );
    assert_eq!(
        cloud
            .gateway
            .metric("aeris_gateway_retention_runs_total{outcome=\"error\"}"),
        0.0
    );
    for (device, rows) in [("d402", 0), ("d401", 0), ("d10", 2), ("d0", 2)] {
        assert_eq!(cloud.rows(device).await, rows, "{device}");
    }
    assert_eq!(
        count(
            &cloud.db,
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0)::int8 FROM reading_runs"
        )
        .await,
        8
    );
    assert_eq!(
        count(&cloud.db, "SELECT count(*) FROM readings_default").await,
        0
    );
}

fn gateway(db_url: &str, args: &[&str], keep: &str) -> std::process::Output {
    Command::new(binary("aeris-gateway"))
        .args(args)
        .env("AERIS_DATABASE_URL", db_url)
        .env("AERIS_RETENTION__READINGS", keep)
        .env("USER", "retention-test")
        .output()
        .unwrap()
}

#[tokio::test]
async fn retention_run_drops_old_partitions_prints_them_and_is_audited() {
    let db = TestDb::create().await;
    fill(&db.url, &[30, 20, 1]).await;
    let run = |keep: &str| gateway(&db.url, &["retention", "run"], keep);
    // Keeping everything: the days get partitions, nothing is dropped.
    let out = run("forever");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(", 0 dropped, 0 rows in readings_default"),
        "{text}"
    );
    // 25 days: the 30-day-old partition goes, the 20-day-old one stays.
    let out = run("25d");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let dropped: Vec<&str> = text.lines().filter(|l| l.starts_with("dropped")).collect();
    assert_eq!(dropped.len(), 1, "{text}");
    assert!(dropped[0].contains("(older than 25days)"), "{text}");
    let list = gateway(&db.url, &["retention", "list"], "25d");
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    let name = dropped[0].split_whitespace().nth(1).unwrap_or_default();
    assert!(!name.is_empty() && !list.contains(name), "{name}\n{list}");
    assert!(list.contains("readings_default"), "{list}");
    for (device, rows) in [("d30", 0), ("d20", 2), ("d1", 2)] {
        let n: i64 = db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM readings WHERE device_id = $1",
                &[&device],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, rows, "{device}");
    }
    let audited = count(
        &db,
        "SELECT count(*) FROM audit_log WHERE action = 'retention' AND outcome = 'ok'
         AND actor = 'cli:retention-test'",
    )
    .await;
    assert_eq!(audited, 2);
}

#[test]
fn retention_has_help_and_refuses_a_bad_limit_or_no_database() {
    let help = Command::new(binary("aeris-gateway"))
        .args(["retention", "run", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("never a DELETE"), "{text}");
    let bad = gateway(
        "postgres://nobody@127.0.0.1:1/none",
        &["retention", "run"],
        "12h",
    );
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("retention.readings"), "{err}");
    let none = Command::new(binary("aeris-gateway"))
        .args(["retention", "run"])
        .env_remove("AERIS_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("database_url is not set"));
}
