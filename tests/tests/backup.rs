//! Backup and restore of the PostGIS database with `deploy/backup/aeris-db`,
//! and the fleet re-send that follows a restore.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{batch, status, FakeDevice};
use aeris_tests::http::get;
use aeris_tests::postgres::TestDb;
use aeris_tests::process::binary;
use aeris_tests::sensors::{readings, Publisher};
use aeris_tests::stack::{Stack, DEVICE};
use aeris_tests::{now_ms, wait_for};
use aeris_wire::CommandKind;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/backup/aeris-db")
}

/// Runs `aeris-db args...`; panics with its output unless it succeeds.
fn aeris_db(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("run aeris-db");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "aeris-db {args:?}: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `aeris-gateway resend` as user `backup-test`: its table; panics unless
/// it succeeds.
fn resend(broker_port: u16, db_url: &str) -> String {
    let out = Command::new(binary("aeris-gateway"))
        .arg("resend")
        .env("AERIS_BROKER__PORT", broker_port.to_string())
        .env("AERIS_DATABASE_URL", db_url)
        .env("AERIS_LOG", "warn")
        .env("USER", "backup-test")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_fresh_database_with_identical_rows_and_checksums() {
    let cloud = Cloud::start(false).await;
    let t0 = now_ms() - 3_600_000;
    let a = FakeDevice::connect(cloud.broker.port, "dev-a").await;
    let b = FakeDevice::connect(cloud.broker.port, "dev-b").await;
    a.send(&batch("dev-a", 1, 40, t0)).await;
    a.send(&batch("dev-a", 50, 10, t0)).await;
    b.send(&batch("dev-b", 1, 25, t0)).await;
    a.send_status(&status("dev-a", 59, 0)).await;
    b.send_status(&status("dev-b", 25, 0)).await;
    for (d, seq) in [(&a, 40), (&a, 59), (&b, 25)] {
        assert!(
            d.wait_acked(seq, Duration::from_secs(20)).await,
            "{}",
            cloud.logs()
        );
    }
    // An operator action from the command line, so the audit log has a row.
    let table = resend(cloud.broker.port, &cloud.db.url);
    assert!(table.contains("dev-a") && table.contains("41"), "{table}");
    let cmd = wait_for("re-send to dev-a", Duration::from_secs(10), || async {
        a.commands().into_iter().next()
    })
    .await;
    assert_eq!(cmd.kind, CommandKind::Resend { from_seq: 41 });
    let actor: String = cloud
        .db
        .client()
        .await
        .query_one("SELECT actor FROM audit_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(actor, "cli:backup-test");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aeris.dump");
    let file = file.to_str().unwrap();
    let before = aeris_db(&["checksum", &cloud.db.url]);
    aeris_db(&["backup", &cloud.db.url, file]);
    let fresh = TestDb::create().await;
    aeris_db(&["restore", file, &fresh.url]);
    let after = aeris_db(&["checksum", &fresh.url]);
    assert_eq!(before, after);
    let counts: Vec<(&str, &str)> = before
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    let migrations = aeris_sink::postgis::MIGRATIONS.len().to_string();
    assert_eq!(
        counts,
        vec![
            ("aeris_schema_migrations", migrations.as_str()),
            ("readings", "75"),
            // dev-a 1..=40 and 50..=59, dev-b 1..=25.
            ("reading_runs", "3"),
            ("devices", "2"),
            ("audit_log", "1"),
            ("dead_letters", "0"),
            ("rollouts", "0"),
            ("rollout_devices", "0"),
            ("config_desired", "0"),
            ("config_reported", "0"),
        ],
        "{before}"
    );
    // A restore never lands on top of data.
    let again = Command::new("bash")
        .arg(script())
        .args(["restore", file, &fresh.url])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

/// Readings acked after the backup was taken are lost by restoring it; the
/// edge still holds them (acked grace window), and one `aeris-gateway
/// resend` brings them back, each stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_restoring_an_older_backup_one_resend_brings_back_what_was_acked_since() {
    let mut stack = Stack::start().await;
    let sensors = Publisher::connect(stack.local.port).await;
    let all = readings(300, 6);
    let (before, after) = all.split_at(120);
    for r in before {
        sensors.publish(r).await;
    }
    stack
        .wait_rows(before.len() as i64, Duration::from_secs(90))
        .await;
    // Let the acks reach the edge before the backup, so nothing of the
    // first part is still in flight.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aeris.dump");
    let file = file.to_str().unwrap();
    aeris_db(&["backup", &stack.db.url, file]);

    for r in after {
        sensors.publish(r).await;
    }
    stack
        .wait_rows(all.len() as i64, Duration::from_secs(90))
        .await;
    let acked = wait_for("the edge's acks", Duration::from_secs(30), || async {
        let m =
            aeris_tests::http::metric(stack.edge_health, "aeris_edge_uplink_readings_acked_total");
        (m >= all.len() as f64).then_some(m)
    })
    .await;
    assert!(acked >= all.len() as f64);

    // Disaster: the database is replaced by the older backup. Gateways are
    // stopped while it is restored, as docs/operations.md says.
    stack.gateway.terminate();
    let admin = aeris_tests::postgres::admin().await;
    for sql in ["DROP DATABASE {} WITH (FORCE)", "CREATE DATABASE {}"] {
        admin
            .batch_execute(&sql.replace("{}", &stack.db.name))
            .await
            .unwrap();
    }
    aeris_db(&["restore", file, &stack.db.url]);
    assert_eq!(stack.row_count().await, before.len() as i64);
    stack.gateway.restart();
    wait_for("the gateway ready", Duration::from_secs(30), || async {
        matches!(get(stack.api_port, "/readyz"), Ok((200, _))).then_some(())
    })
    .await;
    // Nothing comes back by itself: the edge deleted nothing, but it sends
    // acked readings again only when asked.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        stack.row_count().await,
        before.len() as i64,
        "{}",
        stack.logs()
    );

    let table = resend(stack.cloud.port, &stack.db.url);
    let from = format!("{}", before.len() + 1);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(DEVICE) && l.contains(&from)),
        "{DEVICE} from seq {from}:\n{table}"
    );
    stack
        .wait_rows(all.len() as i64, Duration::from_secs(60))
        .await;
    // Nothing more arrives, and every reading is there exactly once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.assert_exactly_once(&all).await;
}
