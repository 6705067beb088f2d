//! Desired configuration through the gateway (issue 18), against the real
//! gateway, agent, brokers and PostGIS: set over the HTTP API (scope
//! `operate`, audited) per device and per group, drift in `/api/devices`,
//! and an offline device that converges when it comes back (set with the
//! CLI while it is away).

use std::time::Duration;

use aeris_tests::stack::{Stack, DEVICE};
use serde_json::Value;
use sha2::Digest;

const TOKEN: &str = "config-operator-token";
const EDGE: &str = "groups = [\"north\"]\n[sensors.s1]\nlat = 47.0\nlon = 6.0\n";

async fn start() -> (Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[api.auth.tokens]]\nname = \"fleet-operator\"\nsha256 = \"{}\"\nscopes = [\"operate\"]\n",
            hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()))
        ),
    )
    .unwrap();
    let env = [("AERIS_GATEWAY_CONFIG", config.display().to_string())];
    (Stack::start_with_gateway_env(EDGE, &env).await, dir)
}

async fn call(stack: &Stack, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) =
        aeris_tests::http_request_as(stack.api_port, method, path, body, Some(TOKEN))
            .await
            .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `config` entry of `DEVICE` in `/api/devices`, once `ok` holds.
async fn device_config(stack: &Stack, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let found = aeris_tests::wait_for(what, Duration::from_secs(30), || async {
        let (_, list) = call(stack, "GET", "/api/devices", "").await;
        let c = list.as_array()?.iter().find(|d| d["device"] == DEVICE)?["config"].clone();
        ok(&c).then_some(c)
    })
    .await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_group_config_set_over_the_api_reach_the_agent_and_drift_is_shown() {
    let (stack, _dir) = start().await;
    let path = format!("/api/devices/{DEVICE}/config");
    let moved = r#"{"sensors": {"s1": {"lat": 48.5, "lon": 7.25}}}"#;
    let (status, _) = aeris_tests::http_request(stack.api_port, "PUT", &path, moved)
        .await
        .unwrap();
    assert_eq!(status, 401, "operator route without a token");
    let (status, _) = call(&stack, "PUT", &path, "[1, 2]").await;
    assert_eq!(status, 400, "not an object");

    let (status, set) = call(&stack, "PUT", &path, moved).await;
    assert_eq!(status, 200, "{set}");
    let v1 = set["desired"]["version"].as_u64().unwrap();
    assert_eq!(set["sent"][DEVICE], v1, "{set}");
    let c = device_config(&stack, "device converged", |c| c["applied"] == v1).await;
    assert_eq!(
        (c["state"].as_str(), c["drift"].as_bool()),
        (Some("converged"), Some(false))
    );

    // A group's fragment merges under the device's; the version is the newest.
    let (status, set) = call(
        &stack,
        "PUT",
        "/api/groups/north/config",
        r#"{"preprocess": {"spike_ratio": 3.0}, "sensors": {"s1": {"lat": 1.0, "lon": 1.0}}}"#,
    )
    .await;
    assert_eq!(status, 200, "{set}");
    let v2 = set["desired"]["version"].as_u64().unwrap();
    assert!(v2 > v1 && set["sent"][DEVICE] == v2, "{set}");
    device_config(&stack, "group version applied", |c| c["applied"] == v2).await;
    let (_, view) = call(&stack, "GET", &path, "").await;
    assert_eq!(
        view["effective"]["fragment"],
        serde_json::json!({"preprocess": {"spike_ratio": 3.0}, "sensors": {"s1": {"lat": 48.5, "lon": 7.25}}}),
        "the device's own keys win: {view}"
    );
    assert_eq!(view["reported"]["groups"], serde_json::json!(["north"]));

    // A fragment the agent may not take: stored, sent, refused, shown as drift.
    let (_, set) = call(&stack, "PUT", &path, r#"{"device_id": "someone-else"}"#).await;
    let v3 = set["desired"]["version"].as_u64().unwrap();
    let c = device_config(&stack, "refusal shown", |c| c["state"] == "refused").await;
    assert_eq!(
        (c["desired"].as_u64(), c["applied"].as_u64()),
        (Some(v3), Some(v2))
    );
    assert!(
        c["refused"][1].as_str().unwrap_or("").contains("device_id"),
        "{c}"
    );
    assert_eq!(c["drift"], true);

    let (_, audit) = call(&stack, "GET", "/api/audit?limit=20", "").await;
    let sets: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "config_set")
        .collect();
    assert_eq!(
        sets.len(),
        4,
        "three stored, one refused as not an object: {audit}"
    );
    assert!(
        sets.iter().all(|r| r["actor"] == "fleet-operator"),
        "{audit}"
    );
    assert!(sets.iter().any(|r| r["target"] == "group:north"), "{audit}");
}

/// Runs `aeris-gateway config ARGS` against the stack's database and broker.
fn cli(stack: &Stack, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(aeris_tests::process::binary("aeris-gateway"))
        .arg("config")
        .args(args)
        .env("AERIS_DATABASE_URL", &stack.db.url)
        .env("AERIS_BROKER__PORT", stack.cloud.port.to_string())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_converges_when_it_reconnects() {
    let (mut stack, dir) = start().await;
    device_config(&stack, "device known", |_| true).await;
    stack.edge.kill();
    let file = dir.path().join("fragment.toml");
    std::fs::write(&file, "[sensors.s1]\nlat = 40.0\nlon = 3.5\n").unwrap();
    let (ok, out) = cli(
        &stack,
        &[
            "set",
            "--device",
            DEVICE,
            "--file",
            &file.display().to_string(),
        ],
    );
    assert!(ok, "{out}");
    let set: Value = serde_json::from_str(out.lines().next().unwrap_or("")).unwrap();
    let v = set["desired"]["version"].as_u64().unwrap();
    let c = device_config(&stack, "drift while offline", |c| c["state"] == "pending").await;
    assert_eq!(c["desired"].as_u64(), Some(v));
    let (ok, diff) = cli(&stack, &["diff", "--device", DEVICE]);
    assert!(
        !ok && diff.contains("sensors.s1.lat: null -> 40.0"),
        "{diff}"
    );
    // The gauge the alert rule reads, from the database every 15 s.
    aeris_tests::wait_for("drift gauge", Duration::from_secs(40), || async {
        let (_, text) = aeris_tests::http_get(stack.api_port, "/metrics")
            .await
            .ok()?;
        let sample = format!("aeris_gateway_device_config_drift{{device=\"{DEVICE}\"}}");
        (aeris_tests::metric(&text, &sample) == Some(1.0)).then_some(())
    })
    .await;

    stack.edge.restart();
    let c = device_config(&stack, "converged after reconnect", |c| c["applied"] == v).await;
    assert_eq!(c["state"], "converged");
    let (ok, diff) = cli(&stack, &["diff", "--device", DEVICE]);
    assert!(ok, "{diff}");
    let (ok, history) = cli(&stack, &["history", "--device", DEVICE]);
    assert!(
        ok && history.contains(&format!("{v:>6}")) && history.contains("cli:"),
        "{history}"
    );
    assert!(
        stack.gateway.log().contains("desired one sent"),
        "the gateway sent it on the device's report"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_group_change_halts_when_the_canary_refuses_it() {
    let (stack, dir) = start().await;
    // A second device of group north, played by the test; named so that
    // the real agent comes first and is the canary.
    let other = aeris_tests::device::FakeDevice::connect(stack.cloud.port, "zz-other").await;
    let report = aeris_wire::ConfigReport {
        device: "zz-other".into(),
        ts_ms: aeris_tests::now_ms(),
        groups: vec!["north".into()],
        applied: 0,
        refused: None,
    };
    other
        .publish(
            aeris_wire::Topics::default().config("zz-other"),
            aeris_wire::encode(&report),
        )
        .await;
    aeris_tests::wait_for("both reports stored", Duration::from_secs(20), || async {
        let client = stack.db.client().await;
        let row = client
            .query_one("SELECT count(*) FROM config_reported", &[])
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 2).then_some(())
    })
    .await;
    // Out of WGS84: the agent's own checks refuse it.
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[sensors.s1]\nlat = 95.0\nlon = 1.0\n").unwrap();
    let file = file.display().to_string();
    let args = [
        "set",
        "--group",
        "north",
        "--file",
        &file,
        "--canary",
        "1",
        "--device-timeout",
        "30s",
    ];
    let (ok, out) = cli(&stack, &args);
    assert!(!ok, "a refused canary fails the change\n{out}");
    let last: Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .next_back()
        .unwrap_or_else(|| panic!("no summary\n{out}"));
    assert!(last["halted"].is_string(), "{last}");
    assert_eq!(last["devices"][DEVICE]["state"], "failed", "{last}");
    assert!(
        last["devices"][DEVICE]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("sensors.s1"),
        "the canary's reason: {last}"
    );
    assert_eq!(last["devices"]["zz-other"]["state"], "pending", "{last}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        other.commands().is_empty(),
        "the rest of the group got nothing: {:?}",
        other.commands()
    );
    // The fragment stays with the canary: the other device's desired
    // configuration is unchanged, so no report of it brings it there.
    let (_, view) = call(&stack, "GET", "/api/devices/zz-other/config", "").await;
    assert_eq!(view["effective"]["version"], 0, "{view}");
    let (_, view) = call(&stack, "GET", &format!("/api/devices/{DEVICE}/config"), "").await;
    assert_eq!(view["status"]["state"], "refused", "{view}");
}
