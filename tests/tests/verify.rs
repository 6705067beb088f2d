//! `aeris-gateway verify` against a running deployment: a healthy one, and
//! one whose Redis was stopped.

use std::process::Command;

use aeris_tests::cloud::Cloud;
use aeris_tests::process::binary;

/// Runs `aeris-gateway verify` against `cloud`: (exit code, table).
fn verify(cloud: &Cloud) -> (i32, String) {
    let mut cmd = Command::new(binary("aeris-gateway"));
    cmd.arg("verify")
        .env("AERIS_BROKER__PORT", cloud.broker.port.to_string())
        .env("AERIS_DATABASE_URL", &cloud.db.url)
        .env(
            "AERIS_API__LISTEN",
            format!("127.0.0.1:{}", cloud.gateway.api_port),
        )
        .env("AERIS_LOG", "warn")
        .args(["--timeout", "20s"]);
    if let Some(r) = &cloud.redis {
        cmd.env("AERIS_REDIS_URL", r.url());
    }
    let out = cmd.output().expect("run aeris-gateway verify");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        format!("{table}\n{stderr}"),
    )
}

/// The RESULT column of `check` in the table.
fn result<'t>(table: &'t str, check: &str) -> &'t str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(check))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no row {check} in\n{table}"))
}

const CHECKS: [&str; 7] = [
    "migrations",
    "redis",
    "broker",
    "canary-ack",
    "canary-postgis",
    "canary-api",
    "canary-removed",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_a_healthy_stack_and_fails_with_redis_stopped() {
    let mut cloud = Cloud::start(true).await;

    let (code, table) = verify(&cloud);
    for c in CHECKS {
        assert_eq!(result(&table, c), "PASS", "{c}\n{table}\n{}", cloud.logs());
    }
    assert_eq!(code, 0, "{table}");
    // The canary is gone from PostGIS and from the live view.
    let rows: i64 = cloud
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM readings WHERE device_id = 'aeris-verify'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    let redis = cloud.redis.as_ref().unwrap();
    let latest = redis.cli(&["HKEYS", "aeris:latest"]);
    assert!(!latest.contains("aeris-verify"), "{latest}");
    assert!(redis
        .cli(&["ZRANGE", "aeris:geo", "0", "-1"])
        .trim()
        .is_empty());

    // Redis stopped: that check fails, the exit code says so, and the
    // checks that do not need Redis still pass.
    cloud.redis.as_mut().unwrap().kill();
    let (code, table) = verify(&cloud);
    assert_eq!(code, 1, "{table}");
    assert_eq!(result(&table, "redis"), "FAIL", "{table}");
    for c in [
        "migrations",
        "broker",
        "canary-ack",
        "canary-postgis",
        "canary-api",
    ] {
        assert_eq!(result(&table, c), "PASS", "{c}\n{table}");
    }
}
